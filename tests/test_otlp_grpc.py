"""The OTLP/gRPC receiver behaves as the OTLP specification asks of a server."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import SpanExportResult

from collector.service import ServeConfig, Service, StartError
from tests.conftest import query
from tests.helpers import ORDERS_MODEL
from tests.otel_clients import encode, grpc_export, grpc_exporter, recorded_order

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

TABLES = {
    "transitions": "SELECT * EXCLUDE (observed_at) FROM transitions ORDER BY ALL",
    "instances": "SELECT * FROM instances ORDER BY ALL",
    "instance_history": "SELECT * FROM instance_history ORDER BY ALL",
    "spans": "SELECT * EXCLUDE (observed_at) FROM spans ORDER BY ALL",
}


def snapshot(db: Path) -> dict[str, list[tuple[object, ...]]]:
    return {name: query(db, sql) for name, sql in TABLES.items()}


def test_empty_request_succeeds_without_partial_success(service: Service) -> None:
    response = grpc_export(service.grpc_endpoint, ExportTraceServiceRequest())
    assert not response.HasField("partial_success")


def test_redelivering_a_request_three_times_changes_nothing(service: Service, db_path: Path, tmp_path: Path) -> None:
    spans, _ = recorded_order("order-1")
    exporter = grpc_exporter(service.grpc_endpoint)
    assert exporter.export(spans) == SpanExportResult.SUCCESS
    service.stop()
    once = snapshot(db_path)

    again = Service(ServeConfig(model=str(ORDERS_MODEL), db=str(db_path), otlp_grpc="127.0.0.1:0", otlp_http=None))
    with again:
        exporter = grpc_exporter(again.grpc_endpoint)
        for _ in range(3):
            assert exporter.export(spans) == SpanExportResult.SUCCESS
        assert again.telemetry.snapshot().dropped["duplicate"] == 3 * 7
    assert snapshot(db_path) == once
    assert len(once["transitions"]) == 7


def test_children_before_parents_give_the_same_state(tmp_path: Path) -> None:
    spans, _ = recorded_order("order-2")
    root = [s for s in spans if s.name == "PlaceOrder"]
    children = [s for s in spans if s.name != "PlaceOrder"]
    results = {}
    for label, batches in {
        "together": [spans],
        "children-first": [children, root],
        "root-first": [root, children],
    }.items():
        db = tmp_path / f"{label}.duckdb"
        with Service(ServeConfig(model=str(ORDERS_MODEL), db=str(db), otlp_grpc="127.0.0.1:0", otlp_http=None)) as svc:
            exporter = grpc_exporter(svc.grpc_endpoint)
            for batch in batches:
                assert exporter.export(batch) == SpanExportResult.SUCCESS
        results[label] = {
            "instances": query(db, TABLES["instances"]),
            "history": query(db, TABLES["instance_history"]),
            "transitions": query(db, "SELECT * EXCLUDE (observed_at) FROM transitions ORDER BY ALL"),
        }
    assert results["together"] == results["children-first"] == results["root-first"]
    assert results["together"]["instances"][0][2] == "converged"


def test_a_six_megabyte_request_is_accepted(service: Service, db_path: Path) -> None:
    spans, _ = recorded_order("order-big")
    request = encode(spans)
    filler = request.resource_spans[0].scope_spans[0].spans[0]
    for i in range(6):
        kv = filler.attributes.add()
        kv.key = f"payload.{i}"
        kv.value.string_value = "x" * 1_048_576
    assert request.ByteSize() > 6_000_000
    response = grpc_export(service.grpc_endpoint, request, compression=grpc.Compression.Gzip)
    assert not response.HasField("partial_success")
    service.stop()
    assert query(db_path, "SELECT count(*) FROM transitions") == [(7,)]
    # only attributes the model reads are stored
    assert query(db_path, "SELECT DISTINCT map_keys(attributes) FROM spans WHERE name = 'PlaceOrder'") == [
        (["app.order.id"],)
    ]


def test_malformed_spans_are_rejected_individually(service: Service, db_path: Path) -> None:
    spans, _ = recorded_order("order-3")
    request = encode(spans)
    scope = request.resource_spans[0].scope_spans[0]
    bad = scope.spans.add()
    bad.CopyFrom(scope.spans[0])
    bad.trace_id = b"\x01" * 8
    worse = scope.spans.add()
    worse.CopyFrom(scope.spans[0])
    worse.span_id = b"\x02" * 8
    worse.end_time_unix_nano = worse.start_time_unix_nano - 1
    response = grpc_export(service.grpc_endpoint, request)
    assert response.partial_success.rejected_spans == 2
    assert "trace_id must be 16 non-zero bytes (got 8)" in response.partial_success.error_message
    assert "end_time_unix_nano is before start_time_unix_nano" in response.partial_success.error_message
    service.stop()
    assert query(db_path, "SELECT status FROM instances") == [("converged",)]
    assert service.telemetry.snapshot().rejected == {"invalid_trace_id": 1, "end_before_start": 1}


def test_overload_answers_unavailable_with_retry_info(service: Service, db_path: Path) -> None:
    admission = service.intake.admission
    admission.max_bytes = 1024
    assert admission.try_acquire(1000)  # another sender's request, still in flight
    spans, _ = recorded_order("order-4")
    with pytest.raises(grpc.RpcError) as exc:
        grpc_export(service.grpc_endpoint, encode(spans))
    error = exc.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "in-flight limit" in error.details()
    details = dict(error.trailing_metadata())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(details)
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert info.retry_delay.seconds == 1
    admission.release(1000)
    # the SDK exporter retries on UNAVAILABLE and, once capacity is back, nothing is lost
    assert grpc_exporter(service.grpc_endpoint).export(spans) == SpanExportResult.SUCCESS
    service.stop()
    assert query(db_path, "SELECT count(*) FROM transitions") == [(7,)]


def test_a_second_server_on_the_same_port_fails_with_a_clear_message(service: Service, tmp_path: Path) -> None:
    second = Service(
        ServeConfig(
            model=str(ORDERS_MODEL),
            db=str(tmp_path / "other.duckdb"),
            otlp_grpc=service.grpc_endpoint,
            otlp_http=None,
        )
    )
    with pytest.raises(StartError, match=r"OTLP/gRPC cannot listen on 127\.0\.0\.1:\d+: the address is in use"):
        second.start()


def test_the_database_cannot_be_served_twice(service: Service, db_path: Path) -> None:
    second = Service(ServeConfig(model=str(ORDERS_MODEL), db=str(db_path), otlp_grpc="127.0.0.1:0", otlp_http=None))
    with pytest.raises(StartError, match="Is another coordstate serving it"):
        second.start()


def test_bearer_token_is_enforced(db_path: Path) -> None:
    config = ServeConfig(
        model=str(ORDERS_MODEL),
        db=str(db_path),
        otlp_grpc="127.0.0.1:0",
        otlp_http=None,
        token="s3cret",
    )
    with Service(config) as svc:
        with pytest.raises(grpc.RpcError) as exc:
            grpc_export(svc.grpc_endpoint, ExportTraceServiceRequest())
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
        response = grpc_export(
            svc.grpc_endpoint,
            ExportTraceServiceRequest(),
            metadata=(("authorization", "Bearer s3cret"),),
        )
        assert not response.HasField("partial_success")


def test_stop_without_start_and_restart(db_path: Path) -> None:
    config = ServeConfig(model=str(ORDERS_MODEL), db=str(db_path), otlp_grpc="127.0.0.1:0", otlp_http=None)
    Service(config).stop()  # never started: nothing to stop, no error
    for order in ("order-a", "order-b"):
        with Service(config) as svc:
            spans, _ = recorded_order(order)
            assert grpc_exporter(svc.grpc_endpoint).export(spans) == SpanExportResult.SUCCESS
    assert query(db_path, "SELECT instance_key, status FROM instances ORDER BY 1") == [
        ("order-a", "converged"),
        ("order-b", "converged"),
    ]
