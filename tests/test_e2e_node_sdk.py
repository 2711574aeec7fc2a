"""End to end with a second, independent client: the OpenTelemetry Node.js SDK over gRPC."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from collector.service import Service
from tests.conftest import query
from tests.helpers import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.node, pytest.mark.timeout(120)]

NODE_DIR = ROOT / "tests" / "node"


def test_node_sdk_order_with_event_and_link(service: Service, db_path: Path) -> None:
    node = shutil.which("node")
    assert node, "Node.js is required (make test installs the client into tests/node)"
    assert (NODE_DIR / "node_modules" / "@opentelemetry" / "exporter-trace-otlp-grpc").is_dir(), "run `make test`"
    result = subprocess.run(
        [node, "send_order.js", service.grpc_endpoint, "order-node-1"],
        cwd=NODE_DIR, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    ids = json.loads(result.stdout.strip().splitlines()[-1])
    service.stop()

    rows = query(db_path, "SELECT step, state, trace_id, source FROM transitions ORDER BY step, state")
    assert [(r[0], r[1]) for r in rows] == [
        ("checkout", "completed"),
        ("checkout", "started"),
        ("fulfilment", "completed"),
        ("fulfilment", "started"),
        ("inventory", "completed"),
        ("payment", "completed"),
        ("payment", "started"),
        ("shipment", "completed"),
        ("shipment", "started"),
    ]
    assert {r[2] for r in rows if r[0] == "fulfilment"} == {ids["consumerTrace"]}  # joined by the link
    assert ("inventory", "completed", ids["trace"], "event:inventory.reserved") in rows
    assert query(db_path, "SELECT instance_key, status, list_sort(trace_ids) FROM instances") == [
        ("order-node-1", "converged", sorted([ids["trace"], ids["consumerTrace"]]))
    ]
