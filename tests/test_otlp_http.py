"""The OTLP/HTTP receiver: content types, encodings, status codes, hex ids in JSON."""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from google.rpc import code_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace.export import SpanExportResult

from collector.decode import parse_json, to_json
from collector.service import Service
from tests.conftest import query
from tests.otel_clients import encode, http_exporter, recorded_order

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

PB = {"Content-Type": "application/x-protobuf"}


def url(service: Service) -> str:
    return service.http_endpoint + "/v1/traces"


def test_gzip_protobuf_from_the_sdk(service: Service, db_path: Path) -> None:
    spans, trace_id = recorded_order("order-gz")
    exporter = http_exporter(service.http_endpoint, compression=Compression.Gzip)
    assert exporter.export(spans) == SpanExportResult.SUCCESS
    service.stop()
    assert query(db_path, "SELECT DISTINCT trace_id FROM transitions") == [(trace_id,)]


def test_json_ids_are_hex_not_base64(service: Service, db_path: Path) -> None:
    """The stock protobuf JSON parser would read '5b8efff798038103d269b633813fc60c' as base64."""
    spans, trace_id = recorded_order("order-json")
    body = json.dumps(to_json(encode(spans)))
    assert trace_id in body
    response = httpx.post(url(service), content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {}
    service.stop()
    assert query(db_path, "SELECT DISTINCT trace_id FROM transitions") == [(trace_id,)]
    span_ids = {s.context.span_id.to_bytes(8, "big").hex() for s in spans}
    assert {r[0] for r in query(db_path, "SELECT span_id FROM spans")} == span_ids


def test_json_parser_reads_hex_ids() -> None:
    request = parse_json(
        b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c",'
        b'"spanId":"eee19b7ec3c1b174","name":"x","startTimeUnixNano":"1","endTimeUnixNano":"2"}]}]}]}'
    )
    _, scopes = request.resources[0]
    span = scopes[0][1].spans[0]
    assert span.trace_id.hex() == "5b8efff798038103d269b633813fc60c"
    assert span.span_id.hex() == "eee19b7ec3c1b174"


def test_chunked_body_without_content_length(service: Service, db_path: Path) -> None:
    spans, _ = recorded_order("order-chunked")
    payload = encode(spans).SerializeToString()

    response = httpx.post(url(service), content=_chunked(payload), headers=PB)
    assert response.status_code == 200
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in response.request.headers
    assert ExportTraceServiceResponse.FromString(response.content) == ExportTraceServiceResponse()
    service.stop()
    assert query(db_path, "SELECT status FROM instances") == [("converged",)]


def test_partial_success_in_json(service: Service) -> None:
    spans, _ = recorded_order("order-partial")
    data = to_json(encode(spans))
    data["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["spanId"] = "not-hex!"
    response = httpx.post(url(service), content=json.dumps(data), headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    body = response.json()
    assert body["partialSuccess"]["rejectedSpans"] == "1"
    assert body["partialSuccess"]["errorMessage"] == (
        "rejected 1 of 4 spans: span 'Charge': span_id is not hex; OTLP/JSON writes ids as hex strings "
        "(32 characters for a trace id, 16 for a span id), not base64"
    )


@pytest.mark.parametrize(
    ("headers", "content", "status", "message"),
    [
        ({"Content-Type": "text/plain"}, b"hello", 415, "unsupported Content-Type 'text/plain'"),
        (PB, b"\xff\xff\xff", 400, "not a valid OTLP protobuf ExportTraceServiceRequest"),
        ({**PB, "Content-Encoding": "gzip"}, b"not gzip at all", 400, "the body is not valid gzip"),
        ({**PB, "Content-Encoding": "br"}, b"x", 415, "unsupported Content-Encoding 'br'"),
    ],
)
def test_bad_requests_get_a_clear_status(
    service: Service, headers: dict[str, str], content: bytes, status: int, message: str
) -> None:
    """The body is a ``google.rpc.Status``: its code is a gRPC code (3), not the HTTP status."""
    response = httpx.post(url(service), content=content, headers=headers)
    assert response.status_code == status
    body = status_pb2.Status.FromString(response.content)
    assert message in body.message
    assert body.code == code_pb2.INVALID_ARGUMENT


def test_bad_json_answers_400_in_json(service: Service) -> None:
    response = httpx.post(url(service), content=b"{nope", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["message"].startswith("not valid JSON")
    assert response.json()["code"] == code_pb2.INVALID_ARGUMENT


def test_too_large_is_413_also_when_gzipped(service: Service) -> None:
    bomb = gzip.compress(b"\x00" * (65 * 1024 * 1024))
    response = httpx.post(url(service), content=bomb, headers={**PB, "Content-Encoding": "gzip"}, timeout=30)
    assert response.status_code == 413
    body = status_pb2.Status.FromString(response.content)
    assert "larger than 67108864 bytes" in body.message
    assert body.code == code_pb2.INVALID_ARGUMENT


def test_overload_is_429_with_retry_after(service: Service) -> None:
    """Admission control says "slow down" (429); a commit that cannot happen says 503 (see
    tests/reliability/test_storage_faults.py). The OTLP exporters retry both after Retry-After."""
    admission = service.intake.admission
    admission.max_bytes = 10
    assert admission.try_acquire(10)
    spans, _ = recorded_order("order-busy")
    response = httpx.post(url(service), content=encode(spans).SerializeToString(), headers=PB)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    body = status_pb2.Status.FromString(response.content)
    assert "in-flight limit" in body.message
    assert body.code == code_pb2.RESOURCE_EXHAUSTED
    admission.release(10)


def _chunked(payload: bytes, size: int = 100) -> Iterator[bytes]:
    for i in range(0, len(payload), size):
        yield payload[i : i + size]


def test_bodies_count_against_admission_while_they_arrive(service: Service, db_path: Path) -> None:
    """A body is held against the in-flight budget as it is read, not only once complete (many
    large uploads at once cannot all sit in memory first). With the budget taken, a chunked
    upload is read to its end but kept nowhere, and answered 429, giving back what it held."""
    admission = service.intake.admission
    payload = encode(recorded_order("order-chunked-busy")[0]).SerializeToString()
    admission.max_bytes = len(payload) + 50
    assert admission.try_acquire(len(payload))  # another request holds most of the budget
    refused_before = service.telemetry.snapshot().counters.get("requests_refused_overload", 0)
    response = httpx.post(url(service), content=_chunked(payload), headers=PB)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert "in-flight limit" in status_pb2.Status.FromString(response.content).message
    assert service.telemetry.snapshot().counters["requests_refused_overload"] == refused_before + 1
    assert admission.in_flight == len(payload)  # the refused body left nothing held
    admission.release(len(payload))
    # alone, a body passes even when larger than the whole budget; it is held while it arrives
    admission.max_bytes = 10
    half = len(payload) // 2
    go_on = threading.Event()

    def paused() -> Iterator[bytes]:
        yield payload[:half]
        go_on.wait(timeout=30)
        yield payload[half:]

    answers: list[httpx.Response] = []
    upload = threading.Thread(target=lambda: answers.append(httpx.post(url(service), content=paused(), headers=PB)))
    upload.start()
    deadline = time.monotonic() + 30
    while admission.in_flight < half and time.monotonic() < deadline:
        time.sleep(0.01)  # polling: the first half is on its way
    held_midway = admission.in_flight
    go_on.set()
    upload.join(timeout=30)
    assert held_midway == half
    assert answers[0].status_code == 200
    assert admission.in_flight == 0
    service.stop()
    assert query(db_path, "SELECT instance_key, status FROM instances") == [("order-chunked-busy", "converged")]


def test_get_is_405(service: Service) -> None:
    response = httpx.get(url(service))
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


@pytest.mark.parametrize("signal", ["metrics", "logs"])
def test_other_signals_are_404_with_a_reason(service: Service, signal: str) -> None:
    base = url(service).removesuffix("/v1/traces")
    response = httpx.post(f"{base}/v1/{signal}", content=b"{}", headers={"content-type": "application/json"})
    assert response.status_code == 404
    assert response.json() == {
        "code": code_pb2.NOT_FOUND,
        "message": f"coordstate receives traces only (POST /v1/traces), not {signal}: "
        f"take this exporter out of your {signal} pipeline",
    }
