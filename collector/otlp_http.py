"""OTLP/HTTP receiver: ``POST /v1/traces`` with ``application/x-protobuf`` or ``application/json``.

Per the OTLP/HTTP specification: gzip request bodies, chunked bodies without Content-Length,
responses in the request's encoding, partial success, errors as a ``google.rpc.Status`` body,
``400`` (bad payload), ``401`` (token), ``413`` (too large), ``415`` (content type), ``429``
with ``Retry-After`` when admission control refuses (more in flight than the server admits) and
``503`` with ``Retry-After`` when it cannot commit or is shutting down. Both are retryable for
OTLP exporters (the specification's throttling codes).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable

from google.rpc import code_pb2, status_pb2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from analytics.common.http import token_ok
from collector.decode import WireRequest, parse_json, parse_protobuf
from collector.intake import Admission, Intake, IntakeError, Overloaded, PayloadError, Unavailable

MAX_BODY_BYTES = 64 * 1024 * 1024
PROTOBUF = "application/x-protobuf"
JSON = "application/json"


class _TooLarge(Exception):
    pass


class _Busy(Exception):
    """Admission control cannot hold this body now (answered 429 once it has been read and dropped)."""


class _Held:
    """The bytes of a body being read, held against admission control until it is handed over.

    Bodies count while they arrive, not only once complete: many large uploads at once cannot
    all sit in memory before admission control sees them. A declared Content-Length is
    taken in one piece (so a body larger than the whole budget still passes alone, as in
    :meth:`Admission.try_acquire`); a chunked body grows its share chunk by chunk.
    """

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.nbytes = 0

    def try_grow(self, nbytes: int) -> bool:
        if not self.admission.try_acquire(nbytes, held=self.nbytes):
            return False
        self.nbytes += nbytes
        return True

    def release(self) -> None:
        self.admission.release(self.nbytes)
        self.nbytes = 0


#: the ``google.rpc.Code`` an error body carries for each HTTP status we answer (the Collector's
#: own mapping, after gRPC's HTTP mapping): the body is a ``google.rpc.Status``, whose ``code`` is
#: a gRPC code, never the HTTP status itself
RPC_CODE = {
    400: code_pb2.INVALID_ARGUMENT,
    401: code_pb2.UNAUTHENTICATED,
    404: code_pb2.NOT_FOUND,
    413: code_pb2.INVALID_ARGUMENT,  # the sender must split its batch: permanent, like a 400
    415: code_pb2.INVALID_ARGUMENT,
    429: code_pb2.RESOURCE_EXHAUSTED,
    500: code_pb2.INTERNAL,
    503: code_pb2.UNAVAILABLE,
}


def _error(status: int, message: str, content_type: str, retry_after: int | None = None) -> Response:
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    code = RPC_CODE.get(status, code_pb2.UNKNOWN)
    if content_type == JSON:
        body = json.dumps({"code": code, "message": message}).encode()
    else:
        body = status_pb2.Status(code=code, message=message).SerializeToString()
        content_type = PROTOBUF
    return Response(body, status_code=status, media_type=content_type, headers=headers)


async def _read_body(request: Request, limit: int, held: _Held) -> bytes:
    """The whole body, or ``_TooLarge`` / ``_Busy``.

    A body admission control cannot hold is still read to its end, but dropped as it arrives:
    the sender gets a clean 429 (an answer sent while it is still writing would reach it as a
    broken connection), and memory holds none of it.
    """
    declared = request.headers.get("content-length")
    busy = False
    if declared is not None and declared.isdigit():
        if int(declared) > limit:
            raise _TooLarge
        busy = not held.try_grow(int(declared))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        if busy:
            continue
        if size > held.nbytes and not held.try_grow(size - held.nbytes):
            busy = True
            held.release()
            chunks.clear()
            continue
        chunks.append(chunk)
    if busy:
        raise _Busy
    return b"".join(chunks)


def _gunzip(body: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits=47)  # gzip or zlib header, auto-detected
    out = inflater.decompress(body, limit + 1)
    if len(out) > limit or inflater.unconsumed_tail:
        raise _TooLarge
    return out


def build_app(intake: Intake, *, token: str | None = None, max_body_bytes: int = MAX_BODY_BYTES) -> Starlette:
    async def export(request: Request) -> Response:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in (PROTOBUF, JSON):
            return _error(
                415,
                f"unsupported Content-Type {ctype or '(none)'!r}: send {PROTOBUF} or {JSON}",
                PROTOBUF,
            )
        if not token_ok(token, request.headers.get("authorization", "")):
            intake.telemetry.add("requests_unauthenticated")
            return _error(401, "missing or wrong bearer token in the Authorization header", ctype)
        held = _Held(intake.admission)
        try:
            body = await _read_body(request, max_body_bytes, held)
            encoding = request.headers.get("content-encoding", "identity").strip().lower()
            if encoding == "gzip":
                body = _gunzip(body, max_body_bytes)
            elif encoding not in ("identity", ""):
                return _error(415, f"unsupported Content-Encoding {encoding!r}: send gzip or none", ctype)
        except _TooLarge:
            return _error(413, f"request body larger than {max_body_bytes} bytes; send smaller batches", ctype)
        except _Busy:
            busy = intake.overloaded()
            return _error(429, str(busy), ctype, retry_after=busy.retry_after_s)
        except zlib.error as exc:
            return _error(400, f"the body is not valid gzip: {exc}", ctype)
        finally:
            held.release()  # the decoded payload is admitted on its own in Intake.accept
        parse: Callable[[bytes], WireRequest] = parse_json if ctype == JSON else parse_protobuf
        try:
            outcome = await run_in_threadpool(intake.accept, body, parse)
        except PayloadError as exc:
            return _error(400, str(exc), ctype)
        except Overloaded as exc:
            return _error(429, str(exc), ctype, retry_after=exc.retry_after_s)
        except Unavailable as exc:
            return _error(503, str(exc), ctype, retry_after=exc.retry_after_s)
        except IntakeError as exc:  # pragma: no cover - every subclass is handled above
            return _error(500, str(exc), ctype)
        response = outcome.response()
        if ctype == JSON:
            payload = {}
            if outcome.rejected:
                payload = {
                    "partialSuccess": {
                        "rejectedSpans": str(outcome.rejected),
                        "errorMessage": outcome.error_message,
                    }
                }
            return Response(json.dumps(payload).encode(), media_type=JSON)
        return Response(response.SerializeToString(), media_type=PROTOBUF)

    async def not_allowed(request: Request) -> Response:
        return Response("use POST /v1/traces", status_code=405, headers={"Allow": "POST"})

    async def other_signal(request: Request) -> Response:
        # a Collector's otlphttp exporter placed in a metrics or logs pipeline: say so (404 is
        # not retried, as it should not be) instead of a bare "Not Found"
        signal = request.url.path.rsplit("/", 1)[-1]
        content_type = JSON if request.headers.get("content-type", "").startswith(JSON) else PROTOBUF
        return _error(
            404,
            f"coordstate receives traces only (POST /v1/traces), not {signal}: take this exporter out "
            f"of your {signal} pipeline",
            content_type,
        )

    return Starlette(
        routes=[
            Route("/v1/traces", export, methods=["POST"]),
            Route("/v1/traces", not_allowed, methods=["GET", "PUT", "DELETE"]),
            Route("/v1/metrics", other_signal, methods=["POST"]),
            Route("/v1/logs", other_signal, methods=["POST"]),
        ]
    )
