"""Anomalies leave the app: a real Alertmanager holds exactly the open anomalies, resolutions
reach it, and an anomaly opened before a crash is delivered after the restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from collector.service import ServeConfig, Service
from processors.clock import ManualClock
from tests.alerting import MISSING, AlertmanagerProcess, wait_until
from tests.conftest import query_live
from tests.helpers import ORDERS_MODEL
from tests.otel_clients import grpc_exporter
from tests.procs import ServerProcess
from tests.scenarios import SCENARIOS, SECOND, Emitter, Order, S

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(180),
    pytest.mark.skipif(MISSING is not None, reason=str(MISSING)),
]

T0 = 1_760_000_000 * SECOND
RESEND = "10s"


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[AlertmanagerProcess]:
    with AlertmanagerProcess(tmp_path / "am") as am:
        yield am


def open_anomalies(service: Service) -> set[tuple[str, str, str, str]]:
    rows = query_live(
        service.store, "SELECT kind, instance_key, step, severity FROM anomalies WHERE resolved_at IS NULL"
    )
    return {(str(k), str(i), str(s), str(v)) for k, i, s, v in rows}


def held(am: AlertmanagerProcess) -> set[tuple[str, str, str, str]]:
    return {
        (a["labels"]["alertname"], a["labels"]["instance_key"], a["labels"]["step"], a["labels"]["severity"])
        for a in am.alerts()
    }


def test_alertmanager_holds_exactly_the_open_anomalies_and_hears_when_one_heals(
    tmp_path: Path, alertmanager: AlertmanagerProcess
) -> None:
    clock = ManualClock(T0)
    config = ServeConfig(model=str(ORDERS_MODEL), db=str(tmp_path / "alerts.duckdb"), otlp_grpc="127.0.0.1:0",
                         otlp_http=None, api=None, tick_interval_s=3600, alertmanager=(alertmanager.url,),
                         alert_resend=RESEND, trace_url="http://jaeger:16686/trace/{trace_id}",
                         app_url="http://coordstate-ui:8501")  # fmt: skip
    with Service(config, clock=clock) as service:
        emitter = Emitter(lambda: grpc_exporter(service.grpc_endpoint))
        roots = {}
        for i, name in enumerate(SCENARIOS):
            roots[name] = emitter.emit(SCENARIOS[name](f"o-{name}"), T0 + i * SECOND)
        clock.set(T0 + 60 * SECOND)  # every deadline passed
        service.store.tick_now()
        expected = open_anomalies(service)
        assert {k for k, *_ in expected} >= {"duplicate_action", "uncompensated_failure", "missing_step", "stalled"}
        assert wait_until(lambda: held(alertmanager) == expected, what="Alertmanager holding the open anomalies")

        [alert] = [a for a in alertmanager.alerts() if a["labels"]["alertname"] == "duplicate_action"]
        assert alert["labels"] == {"alertname": "duplicate_action", "workflow": "order", "step": "payment",
                                   "severity": "critical", "instance_key": "o-double-charge", "source": "coordstate"}  # fmt: skip
        notes = alert["annotations"]
        assert notes["summary"].startswith("order o-double-charge: payment completed twice"), notes
        assert notes["suggested_action"]
        assert notes["trace_url"] == f"http://jaeger:16686/trace/{notes['trace_id']}"
        assert notes["instance_url"] == "http://coordstate-ui:8501/instance?key=o-double-charge"
        assert alert["generatorURL"] == notes["instance_url"]
        assert alert["startsAt"].startswith("2025-10-09T")  # the event time the anomaly began

        # the lost shipment arrives after all: its anomalies resolve, and Alertmanager hears it
        lost = {e for e in expected if e[1] == "o-lost-shipment"}
        assert lost
        late = Order("o-lost-shipment", (), late=(S("shipping", "ShipOrder", 40.0, 40.5),))
        emitter.emit_late(late, T0 + list(SCENARIOS).index("lost-shipment") * SECOND, roots["lost-shipment"])
        clock.set(T0 + 70 * SECOND)
        service.store.tick_now()
        assert open_anomalies(service) == expected - lost
        wait_until(lambda: held(alertmanager) == expected - lost, timeout_s=10.0,
                   what="the healed anomaly resolved in Alertmanager within one resend interval")  # fmt: skip
        emitter.shutdown()
        service.alerts.wait_passes()
        rows = query_live(service.store, "SELECT event, count(*) FROM alert_deliveries GROUP BY event ORDER BY event")
        assert rows == [("opened", len(expected)), ("resolved", len(lost))]


def test_an_anomaly_opened_before_a_crash_is_delivered_once_after_the_restart(tmp_path: Path) -> None:
    model = tmp_path / "orders.yaml"  # judge at once: the watermark is the latest event time
    model.write_text(ORDERS_MODEL.read_text() + "watermark: {lateness: 0s}\n")
    with AlertmanagerProcess(tmp_path / "am") as first:
        port = first.port
    url = f"http://127.0.0.1:{port}"  # Alertmanager is down: nothing listens there now
    db = tmp_path / "crash.duckdb"
    server = ServerProcess(db, "--alertmanager", url, "--alert-resend", "1s", model=model)
    with server:
        emitter = Emitter(lambda: grpc_exporter(server.grpc))
        emitter.emit(SCENARIOS["double-charge"]("o-crash"), T0)
        emitter.shutdown()

        def opened() -> list[tuple[object, ...]]:
            return server.query("SELECT anomaly_id FROM anomalies WHERE kind = 'duplicate_action'")

        [(aid,)] = wait_until(opened, what="the duplicate charge opening an anomaly")
        assert server.query("SELECT count(*) FROM alert_deliveries") == [(0,)]
        server.kill()  # kill -9: the anomaly is open and was never delivered
    with (
        AlertmanagerProcess(tmp_path / "am2", port=port) as am,
        ServerProcess(db, "--alertmanager", url, "--alert-resend", "1s", model=model) as again,
    ):
        alerts = wait_until(am.alerts, what="the alert delivered after the restart")
        assert [
            (a["labels"]["alertname"], a["labels"]["instance_key"], a["annotations"]["anomaly_id"]) for a in alerts
        ] == [("duplicate_action", "o-crash", aid)]
        recorded = wait_until(lambda: again.query("SELECT target, event, attempts FROM alert_deliveries"),
                              what="the delivery recorded")  # fmt: skip
        assert recorded == [(f"alertmanager {url}", "opened", 1)]
        # re-sent every second while open (Alertmanager still holds one alert), recorded once
        resent = wait_until(lambda: [a for a in am.alerts() if a["updatedAt"] != alerts[0]["updatedAt"]],
                            what="the open alert re-sent")  # fmt: skip
        assert len(resent) == 1
        assert again.query("SELECT count(*) FROM alert_deliveries") == [(1,)]
        assert again.terminate() == 0


def test_alerts_wait_for_a_down_alertmanager_and_arrive_when_it_returns(tmp_path: Path) -> None:
    with AlertmanagerProcess(tmp_path / "probe") as probe:
        port = probe.port  # nothing listens there now
    clock = ManualClock(T0)
    config = ServeConfig(model=str(ORDERS_MODEL), db=str(tmp_path / "down.duckdb"), otlp_grpc="127.0.0.1:0",
                         otlp_http=None, api="127.0.0.1:0", tick_interval_s=3600, delivery_backoff_s=0.05,
                         alertmanager=(f"http://127.0.0.1:{port}",))  # fmt: skip
    with Service(config, clock=clock) as service:
        emitter = Emitter(lambda: grpc_exporter(service.grpc_endpoint))
        emitter.emit(SCENARIOS["double-charge"]("o-waiting"), T0)
        emitter.shutdown()
        clock.set(T0 + 20 * SECOND)
        service.store.tick_now()
        assert service.alerts is not None
        wait_until(lambda: service.telemetry.snapshot().counters.get("alert_delivery_failures", 0) >= 2,
                   what="deliveries failing while Alertmanager is down")  # fmt: skip
        assert query_live(service.store, "SELECT count(*) FROM alert_deliveries") == [(0,)]
        metrics = httpx.get(f"{service.api_url}/metrics").text
        assert "coordstate_alert_backlog 1" in metrics
        with AlertmanagerProcess(tmp_path / "am", port=port) as am:
            alerts = wait_until(am.alerts, what="the alert delivered once Alertmanager is back")
            assert [a["labels"]["instance_key"] for a in alerts] == ["o-waiting"]
            recorded = wait_until(lambda: query_live(service.store, "SELECT event, attempts FROM alert_deliveries"),
                                  what="the delivery recorded")  # fmt: skip
            [(event, attempts)] = recorded
            assert event == "opened"
            assert int(str(attempts)) >= 3  # two failed, then the one that arrived
