"""Model drift: a live server notices a required step that matches nothing while orders keep coming."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from streamlit.testing.v1 import AppTest

from collector.service import ServeConfig, Service
from processors.clock import ManualClock
from tests.conftest import query_live
from tests.helpers import ORDERS_MODEL, ROOT
from tests.otel_clients import grpc_exporter
from tests.scenarios import SCENARIOS, SECOND, Emitter

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

T0 = 1_760_000_000 * SECOND


def test_a_step_that_never_matches_is_reported_as_drift(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "renamed.yaml"  # the shipping span was renamed; the model was not
    model.write_text(ORDERS_MODEL.read_text().replace("span: ShipOrder", "span: ShipOrderV2"))
    clock = ManualClock(T0)
    config = ServeConfig(model=str(model), db=str(tmp_path / "drift.duckdb"), otlp_grpc="127.0.0.1:0", otlp_http=None,
                         api="127.0.0.1:0", tick_interval_s=3600, drift_after=5)  # fmt: skip
    with Service(config, clock=clock) as service:
        emitter = Emitter(lambda: grpc_exporter(service.grpc_endpoint))
        for i in range(8):
            emitter.emit(SCENARIOS["happy"](f"o-{i}"), T0 + i * SECOND)
        clock.set(T0 + 20 * SECOND)  # within every order's 30 s deadline: nothing to say yet
        service.store.tick_now()
        assert query_live(service.store, "SELECT count(*) FROM model_health WHERE drifting") == [(0,)]
        clock.set(T0 + 36 * SECOND)  # orders 0-6 passed their deadline without a shipment
        service.store.tick_now()
        rows = query_live(service.store, "SELECT workflow, step, matched, instances_without_match, drifting, hint "
                                         "FROM model_health ORDER BY step")  # fmt: skip
        by_step = {r[1]: r for r in rows}
        assert by_step["shipment"][2:5] == (0, 7, True)
        assert (
            "step shipment of order has never matched while 7 instances passed its expected time"
            in by_step["shipment"][5]
        )
        assert "shipping / span 'ShipOrderV2'" in by_step["shipment"][5]
        assert "coordstate fit" in by_step["shipment"][5]
        assert {s: r[4] for s, r in by_step.items() if s != "shipment"} == dict.fromkeys(
            set(by_step) - {"shipment"}, False
        )
        assert by_step["payment"][2] == 16  # started and completed, 8 orders
        metrics = httpx.get(f"{service.api_url}/metrics").text
        assert 'coordstate_model_drift{workflow="order",step="shipment"} 1' in metrics
        assert 'coordstate_model_drift{workflow="order",step="payment"} 0' in metrics
        assert 'coordstate_step_transitions_total{workflow="order",step="shipment"} 0' in metrics
        monkeypatch.delenv("COORDSTATE_DB", raising=False)
        monkeypatch.setenv("COORDSTATE_API", service.api_url)
        at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=60).run()
        assert not at.exception
        [banner] = [w.value for w in at.warning]
        assert banner.startswith("**Model drift** in `order`: step shipment of order has never matched")
        emitter.shutdown()
