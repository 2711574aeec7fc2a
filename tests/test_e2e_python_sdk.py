"""End to end: the real OpenTelemetry Python SDK → receiver on port 0 → DuckDB file → exact rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.service import Service
from tests.conftest import query
from tests.otel_clients import grpc_exporter, http_exporter, json_exporter, place_order

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

EXPECTED = [
    ("checkout", "completed"),
    ("checkout", "started"),
    ("inventory", "completed"),
    ("payment", "completed"),
    ("payment", "started"),
    ("shipment", "completed"),
    ("shipment", "started"),
]


@pytest.mark.parametrize("transport", ["grpc", "http-protobuf", "http-json"])
def test_order_lands_in_duckdb(service: Service, db_path: Path, transport: str) -> None:
    if transport == "grpc":
        make = lambda: grpc_exporter(service.grpc_endpoint)  # noqa: E731
    elif transport == "http-protobuf":
        make = lambda: http_exporter(service.http_endpoint)  # noqa: E731
    else:
        make = lambda: json_exporter(service.http_endpoint)  # noqa: E731
    exporters = {name: make() for name in ("checkout", "payment", "inventory", "shipping")}
    trace_id = place_order(exporters, "order-1042")
    service.stop()

    rows = query(
        db_path,
        "SELECT step, state, trace_id, service, source FROM transitions ORDER BY step, state",
    )
    assert [(r[0], r[1]) for r in rows] == EXPECTED
    assert {r[2] for r in rows} == {trace_id}
    assert ("inventory", "completed", trace_id, "inventory", "event:inventory.reserved") in rows
    instances = query(
        db_path,
        "SELECT workflow, instance_key, status, steps['shipment'], trace_ids FROM instances",
    )
    assert instances == [("order", "order-1042", "converged", "completed", [trace_id])]
    spans = query(
        db_path,
        "SELECT count(*), count(DISTINCT span_id) FROM spans WHERE instance_key = 'order-1042'",
    )
    assert spans == [(4, 4)]
