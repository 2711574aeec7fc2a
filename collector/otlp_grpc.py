"""OTLP/gRPC receiver: ``opentelemetry.proto.collector.trace.v1.TraceService/Export``.

As the OTLP specification asks of a server: 64 MiB receive limit, gzip, partial success for
individually malformed spans, ``UNAVAILABLE`` with ``google.rpc.RetryInfo`` when overloaded (our
own admission control, never grpc's ``maximum_concurrent_rpcs``), an answer only after the commit,
and ``so_reuseport`` off so a taken port fails loudly at start-up.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from analytics.common.http import token_ok
from collector.decode import parse_protobuf
from collector.intake import Intake, IntakeError, Overloaded, PayloadError, Unavailable

MAX_RECEIVE_BYTES = 64 * 1024 * 1024


class ListenError(RuntimeError):
    """A receiver cannot listen on its address (fail fast at start-up)."""


def _abort_retryable(context: Any, exc: IntakeError) -> None:
    delay = duration_pb2.Duration(seconds=exc.retry_after_s or 1)
    info = error_details_pb2.RetryInfo(retry_delay=delay)
    status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message=str(exc))
    status.details.add().Pack(info)
    context.set_trailing_metadata((("grpc-status-details-bin", status.SerializeToString()),))
    context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))


class _Handler:
    def __init__(self, intake: Intake, token: str | None) -> None:
        self.intake = intake
        self.token = token

    def export(self, payload: bytes, context: Any) -> ExportTraceServiceResponse:
        if not token_ok(self.token, dict(context.invocation_metadata()).get("authorization", "")):
            self.intake.telemetry.add("requests_unauthenticated")
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token in 'authorization'")
        try:
            outcome = self.intake.accept(payload, parse_protobuf)
        except (Overloaded, Unavailable) as exc:
            _abort_retryable(context, exc)
            raise  # not reached: abort raises
        except PayloadError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise
        response = outcome.response()
        return response


class GrpcReceiver:
    def __init__(
        self,
        intake: Intake,
        address: str,
        *,
        token: str | None = None,
        max_workers: int = 32,
        tls: tuple[bytes, bytes] | None = None,
    ) -> None:
        self.address = address
        self._handler = _Handler(intake, token)
        self._tls = tls
        self._max_workers = max_workers
        self._server: Any = None
        self.port = 0

    def start(self) -> None:
        server = grpc.server(
            ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix="otlp-grpc"),
            options=[
                ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        rpc = grpc.unary_unary_rpc_method_handler(
            self._handler.export,
            request_deserializer=None,  # raw bytes: we parse (and size) the request ourselves
            response_serializer=ExportTraceServiceResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "opentelemetry.proto.collector.trace.v1.TraceService", {"Export": rpc}
                ),
            )
        )
        try:
            if self._tls is not None:
                creds = grpc.ssl_server_credentials([(self._tls[1], self._tls[0])])
                port = server.add_secure_port(self.address, creds)
            else:
                port = server.add_insecure_port(self.address)
        except RuntimeError as exc:
            port = 0
            reason = str(exc)
        else:
            reason = ""
        if port == 0:
            server.stop(None)
            raise ListenError(
                f"OTLP/gRPC cannot listen on {self.address}: the address is in use or not available"
                f"{' (' + reason + ')' if reason else ''}. Stop the other process or choose another "
                "address with --otlp-grpc HOST:PORT"
            )
        server.start()
        self._server = server
        self.port = port

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting; let in-flight exports finish (their commits complete) within grace."""
        if self._server is not None:
            self._server.stop(grace_s).wait()
            self._server = None
