"""Alert targets: Alertmanager's v2 API and OTLP logs. Each sends one batch of anomalies and
raises :class:`DeliveryError` when the batch was not accepted; the dispatcher
(``analytics/notify/dispatch.py``) decides what is due, retries and records."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from analytics.notify.anomaly import Anomaly, Links
from processors.rules import Severity

#: alerts per request to Alertmanager
ALERTS_PER_REQUEST = 500
USER_AGENT = "coordstate"


class DeliveryError(Exception):
    """The target did not accept the batch: retried later (with backoff), unless ``permanent``
    (the target refused it as malformed: sending it again cannot help)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


#: OTLP's retryable gRPC codes (the OTLP specification, "Failures"); any other is permanent
RETRYABLE = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


class AlertTarget(Protocol):
    #: stable identity, recorded in ``alert_deliveries.target``
    name: str
    #: whether open anomalies are re-sent while open (Alertmanager), or told once (logs)
    resends: bool

    def send(self, firing: Sequence[Anomaly], resolved: Sequence[Anomaly], now_ns: int) -> None:
        """Deliver firing (new or re-sent) and resolved anomalies, or raise DeliveryError."""
        ...

    def close(self) -> None: ...


def rfc3339(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def post_json(url: str, body: object, timeout_s: float, headers: dict[str, str] | None = None) -> int:
    """POST ``body`` as JSON; the status code of any HTTP answer (2xx or not). Raises OSError
    (URLError, timeouts) when no answer came."""
    data = json.dumps(body, separators=(",", ":")).encode()
    request = urllib.request.Request(url, data=data, method="POST")
    request.add_header("Content-Type", "application/json")
    request.add_header("User-Agent", USER_AGENT)
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        exc.close()
        return int(exc.code)


class Alertmanager:
    """``POST /api/v2/alerts``. While open, an alert is re-sent every ``resend_ns`` with
    ``endsAt`` four resends ahead (as Prometheus does): should coordstate stop, Alertmanager
    resolves it by itself; once resolved, it is sent with ``endsAt`` = when it resolved."""

    resends = True

    def __init__(self, url: str, links: Links, resend_ns: int, timeout_s: float = 10.0) -> None:
        self.base = url.rstrip("/")
        self.name = f"alertmanager {self.base}"
        self.links = links
        self.resend_ns = resend_ns
        self.timeout_s = timeout_s

    def alert(self, a: Anomaly, now_ns: int) -> dict[str, object]:
        ends = a.resolved_ns if a.resolved_ns is not None else now_ns + 4 * self.resend_ns
        annotations = {
            "summary": a.message,
            "suggested_action": a.action,
            "anomaly_id": a.anomaly_id,
            "trace_id": a.trace_id,
            "trace_url": self.links.trace(a),
            "instance_url": self.links.instance(a),
        }
        return {
            "labels": {
                "alertname": a.kind,
                "workflow": a.workflow,
                "step": a.step,
                "severity": a.severity,
                "instance_key": a.instance_key,
                "source": "coordstate",
            },
            "annotations": {k: v for k, v in annotations.items() if v},
            "startsAt": rfc3339(a.opened_ns),
            "endsAt": rfc3339(max(ends, a.opened_ns)),
            "generatorURL": self.links.instance(a) or self.links.trace(a),
        }

    def send(self, firing: Sequence[Anomaly], resolved: Sequence[Anomaly], now_ns: int) -> None:
        # resolutions first: a new occurrence with the same labels must end up firing
        alerts = [self.alert(a, now_ns) for a in resolved] + [self.alert(a, now_ns) for a in firing]
        for i in range(0, len(alerts), ALERTS_PER_REQUEST):
            try:
                code = post_json(f"{self.base}/api/v2/alerts", alerts[i : i + ALERTS_PER_REQUEST], self.timeout_s)
            except OSError as exc:
                raise DeliveryError(f"{self.name}: {exc}") from exc
            if not 200 <= code < 300:
                # 400: Alertmanager found an alert invalid; 429 and 5xx: try again later
                raise DeliveryError(f"{self.name} answered HTTP {code}", permanent=code == 400)

    def close(self) -> None:
        pass


SEVERITY_NUMBER: dict[str, Any] = {
    Severity.WARNING: logs_pb2.SEVERITY_NUMBER_WARN,
    Severity.CRITICAL: logs_pb2.SEVERITY_NUMBER_ERROR,
}


def _attr(key: str, value: str) -> common_pb2.KeyValue:
    return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(string_value=value))


class OtlpLogs:
    """Anomaly opened/resolved events as OTLP log records over gRPC, to any collector: body = the
    message, attributes = what the anomaly is about, trace and span ids of the evidence so that
    backends link the record to the trace."""

    resends = False

    def __init__(self, endpoint: str, timeout_s: float = 10.0) -> None:
        self.endpoint = endpoint
        self.name = f"otlp-logs {endpoint}"
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(endpoint)
        self._stub = logs_service_pb2_grpc.LogsServiceStub(self._channel)  # type: ignore[no-untyped-call]

    @staticmethod
    def record(a: Anomaly, now_ns: int) -> logs_pb2.LogRecord:
        opened = a.resolved_ns is None
        attributes = [
            _attr("event.name", "coordstate.anomaly.opened" if opened else "coordstate.anomaly.resolved"),
            _attr("coordstate.anomaly.id", a.anomaly_id),
            _attr("coordstate.anomaly.kind", a.kind),
            _attr("coordstate.workflow", a.workflow),
            _attr("coordstate.instance.key", a.instance_key),
            _attr("coordstate.step", a.step),
            _attr("coordstate.anomaly.severity", a.severity),
            _attr("coordstate.suggested_action", a.action),
        ]
        return logs_pb2.LogRecord(
            time_unix_nano=a.opened_ns if opened else (a.resolved_ns or now_ns),
            observed_time_unix_nano=now_ns,
            severity_number=SEVERITY_NUMBER.get(a.severity, logs_pb2.SEVERITY_NUMBER_WARN)
            if opened
            else logs_pb2.SEVERITY_NUMBER_INFO,
            severity_text=(a.severity if opened else "info").upper(),
            body=common_pb2.AnyValue(string_value=a.message if opened else f"resolved: {a.message}"),
            attributes=attributes,
            trace_id=bytes.fromhex(a.trace_id) if len(a.trace_id) == 32 else b"",
            span_id=bytes.fromhex(a.span_id) if len(a.span_id) == 16 else b"",
        )

    def send(self, firing: Sequence[Anomaly], resolved: Sequence[Anomaly], now_ns: int) -> None:
        request = logs_service_pb2.ExportLogsServiceRequest(
            resource_logs=[
                logs_pb2.ResourceLogs(
                    resource=resource_pb2.Resource(attributes=[_attr("service.name", "coordstate")]),
                    scope_logs=[
                        logs_pb2.ScopeLogs(
                            scope=common_pb2.InstrumentationScope(name="coordstate.anomalies"),
                            log_records=[self.record(a, now_ns) for a in [*firing, *resolved]],
                        )
                    ],
                )
            ]
        )
        try:
            self._stub.Export(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            code = exc.code()
            raise DeliveryError(f"{self.name}: {code.name} {exc.details()}", permanent=code not in RETRYABLE) from exc

    def close(self) -> None:
        self._channel.close()
