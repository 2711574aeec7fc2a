"""`coordstate fit`: a model that fits says so; a step that matches nothing names the real span."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.capture import demo_shop_capture
from tests.helpers import ORDERS_MODEL
from tests.procs import COORDSTATE


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_shop_capture(tmp_path_factory.mktemp("fit") / "demo.binpb")


def fit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([COORDSTATE, "fit", *args], capture_output=True, text=True, timeout=120)


def test_orders_model_fits_the_demo_shop(capture: Path) -> None:
    done = fit("--model", str(ORDERS_MODEL), str(capture), "--format", "json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    [wf] = report["workflows"]
    assert wf["hints"] == []
    assert {s["name"]: s["matched_spans"] + s["matched_events"] > 0 for s in wf["steps"]} == {
        "checkout": True, "payment": True, "inventory": True, "shipment": True, "fulfilment": True, "refund": True,
    }  # fmt: skip
    assert wf["instances"] == wf["keyed_by_business_key"] + wf["keyed_by_trace_id"] > 50
    assert wf["keyed_by_trace_id"] > 0  # declined checkouts carry no order id
    assert set(wf["statuses"]) >= {"converged", "failed"}
    assert "duplicate_action" in wf["anomalies"]
    # the frontend's cart page is in its own trace: never counted as a gap of the model
    assert all(c["service"] != "frontend" for c in wf["unmatched_in_keyed_traces"])


def test_a_renamed_step_is_reported_with_the_real_span_first(capture: Path, tmp_path: Path) -> None:
    model = tmp_path / "renamed.yaml"
    model.write_text(ORDERS_MODEL.read_text().replace("span: ShipOrder", "span: ShipOrders"))
    done = fit("--model", str(model), str(capture))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    at = lines.index("  step shipment matched nothing (shipping / span 'ShipOrders')")
    assert lines[at + 1].startswith("      nearest: service shipping sent span `ShipOrder` ")
    assert "stalled" in done.stdout  # what this model would do to the traffic


def test_fit_of_a_database_without_candidates(capture: Path, tmp_path: Path) -> None:
    db = tmp_path / "stored.duckdb"
    replayed = subprocess.run([COORDSTATE, "replay", "--quiet", "--model", str(ORDERS_MODEL), "--db", str(db), str(capture)],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
    assert replayed.returncode == 0, replayed.stderr
    done = fit("--model", str(ORDERS_MODEL), "--db", str(db), "--format", "json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert "keeps only the spans a model matched" in report["note"]
    assert report["workflows"][0]["hints"] == []
    both = fit("--model", str(ORDERS_MODEL), "--db", str(db), str(capture))
    assert both.returncode == 2
    assert "give OTLP files, or --db / --api, not both" in both.stderr
