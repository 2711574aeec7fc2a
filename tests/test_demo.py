"""The demo shop against a real server in-process: every status and every anomaly kind shows up,
with evidence that points at real spans. Time is compressed 10× (model and demo alike)."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from collector.service import ServeConfig, Service
from demo.shop import SCENARIOS, DemoError, parse_scenarios, run_demo
from processors.types import AnomalyKind, InstanceStatus
from tests.helpers import ORDERS_MODEL
from tests.procs import COORDSTATE

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

KINDS = {k.value for k in AnomalyKind}
STATUSES = {s.value for s in InstanceStatus}


def scaled_model(tmp_path: Path, factor: float) -> Path:
    """orders.yaml with every duration scaled (30s deadline → 3s, …)."""
    data = yaml.safe_load(ORDERS_MODEL.read_text())
    wf = data["workflows"][0]

    def scale(text: str) -> str:
        return f"{int(float(text.rstrip('s')) * factor * 1000)}ms"

    wf["deadline"], wf["grace"] = scale(wf["deadline"]), scale(wf["grace"])
    wf["key"]["wait"] = scale(wf["key"]["wait"])
    data["watermark"] = {"lateness": scale("15s"), "idle": scale("40s")}
    for step in wf["steps"]:
        if "deadline" in step:
            step["deadline"] = scale(step["deadline"])
    path = tmp_path / "orders-fast.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def poll(service: Service, sql: str, until: object, timeout: float = 60) -> list[tuple[object, ...]]:
    deadline = time.monotonic() + timeout
    while True:
        cur = service.store.cursor()
        try:
            rows = cur.execute(sql).fetchall()
        finally:
            cur.close()
        if until(rows) or time.monotonic() > deadline:  # type: ignore[operator]
            return rows
        time.sleep(0.2)  # polling interval


def test_every_status_and_anomaly_kind_with_evidence(tmp_path: Path) -> None:
    model = scaled_model(tmp_path, 0.1)
    config = ServeConfig(
        api=None,
        model=str(model),
        db=str(tmp_path / "demo.duckdb"),
        otlp_grpc="127.0.0.1:0",
        otlp_http=None,
        tick_interval_s=0.1,
    )
    with Service(config) as service:
        stop = threading.Event()
        demo = threading.Thread(
            target=run_demo,
            kwargs={"endpoint": service.grpc_endpoint, "rate": 20, "duration_s": 3.0, "scenarios": dict.fromkeys(SCENARIOS, 0.1), "stop": stop, "time_scale": 0.1, "seed": 7},
        )  # fmt: skip
        demo.start()
        try:
            kinds = poll(service, "SELECT DISTINCT kind FROM anomalies", lambda r: {k for (k,) in r} >= KINDS)
            statuses = poll(
                service, "SELECT DISTINCT status FROM instances", lambda r: {s for (s,) in r} >= STATUSES - {"running"}
            )
        finally:
            stop.set()
            demo.join(timeout=60)
        assert {k for (k,) in kinds} == KINDS
        assert {s for (s,) in statuses} >= STATUSES - {"running"}
        healed = poll(
            service,
            "SELECT DISTINCT kind FROM anomalies WHERE resolved_at IS NOT NULL",
            lambda r: {"missing_step", "uncompensated_failure"} <= {k for (k,) in r},
        )
        assert {"missing_step", "uncompensated_failure"} <= {
            k for (k,) in healed
        }  # slow payments and late refunds heal
        # evidence points at real matched spans: the duplicate names both Charge spans
        dup = poll(
            service, "SELECT instance_key, evidence FROM anomalies WHERE kind = 'duplicate_action' LIMIT 1", bool
        )
        key, evidence = dup[0]
        charges = poll(service, f"SELECT span_id FROM spans WHERE instance_key = '{key}' AND name = 'Charge'", bool)
        assert {e["span_id"] for e in evidence} == {s for (s,) in charges}
        # a declined checkout never carries an order id: its trace id became the key
        declined = poll(
            service,
            "SELECT count(*) FROM instances WHERE status = 'failed' AND length(instance_key) = 32",
            lambda r: r[0][0] > 0,
        )
        assert declined[0][0] > 0
        # the queue consumer joined its order through the span link
        linked = poll(
            service,
            "SELECT count(*) FROM transitions WHERE step = 'fulfilment' AND instance_key LIKE 'order-%'",
            lambda r: r[0][0] > 0,
        )
        assert linked[0][0] > 0


def test_scenario_options_are_checked() -> None:
    assert parse_scenarios(["declined=0.5", "slow=0"])["declined"] == 0.5
    with pytest.raises(DemoError, match="unknown scenario 'refund'; known: declined"):
        parse_scenarios(["refund=0.1"])
    with pytest.raises(DemoError, match="write NAME=RATE with a rate from 0 to 1"):
        parse_scenarios(["declined=2"])
    with pytest.raises(DemoError, match=r"rates add up to 1\.45; they must add up to at most 1"):
        parse_scenarios(["declined=0.9", "slow=0.3"])


def test_demo_against_nothing_says_so_instead_of_placing_orders() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run(
        [COORDSTATE, "demo", "--endpoint", f"127.0.0.1:{port}", "--duration", "1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert f"nothing answers OTLP/gRPC at 127.0.0.1:{port} (waited 5 s)" in done.stderr
    assert "pass --endpoint HOST:PORT" in done.stderr
    assert "orders placed" not in done.stdout
