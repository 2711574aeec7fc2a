"""OCEL 2.0 export: pm4py reads what `coordstate export --ocel` writes, and mines it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import duckdb
import pm4py
import pytest

from tests.procs import COORDSTATE
from tests.seed import seed


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("ocel") / "seeded.duckdb"
    seed(db)
    return db


def export(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([COORDSTATE, "export", *args], capture_output=True, text=True, timeout=120)


def test_pm4py_reads_the_export_and_discovers_every_step(seeded: Path, tmp_path: Path) -> None:
    out = tmp_path / "history.json"
    done = export("--ocel", str(out), "--db", str(seeded))
    assert done.returncode == 0, done.stderr
    con = duckdb.connect(str(seeded), read_only=True)
    transitions, instances, traces, services, steps = con.execute(
        "SELECT (SELECT count(*) FROM transitions), (SELECT count(*) FROM instances), "
        "(SELECT count(DISTINCT t) FROM (SELECT unnest(trace_ids) AS t FROM instances "
        " UNION SELECT trace_id FROM transitions)), (SELECT count(DISTINCT service) FROM transitions), "
        "(SELECT list(DISTINCT step || ' ' || state) FROM transitions)"
    ).fetchone()
    con.close()
    assert f"with {transitions:,} events and {instances + traces + services:,} objects" in done.stdout

    ocel = pm4py.read_ocel2_json(str(out))
    assert len(ocel.events) == transitions
    assert len(ocel.objects) == instances + traces + services
    assert set(ocel.objects["ocel:type"]) == {"order", "trace", "service"}
    assert set(ocel.events["ocel:activity"]) == set(steps)
    assert ocel.relations["ocel:oid"].str.startswith("order:").sum() == transitions  # each event: its instance
    dfg = pm4py.discover_ocdfg(ocel)
    assert set(dfg["activities"]) == set(steps)
    assert {"payment completed", "shipment completed", "refund completed"} <= set(dfg["activities"])
    order_edges = dfg["edges"]["event_couples"]["order"]
    assert ("checkout started", "payment started") in order_edges


def test_export_since_keeps_the_later_history_only(seeded: Path, tmp_path: Path) -> None:
    out = tmp_path / "later.json"
    done = export("--ocel", str(out), "--db", str(seeded), "--since", "2025-10-09T09:00:00Z")
    assert done.returncode == 0, done.stderr
    document = json.loads(out.read_text())
    assert {e["time"][:13] for e in document["events"]} == {"2025-10-09T09"}  # order-2001, the next hour
    assert {o["id"] for o in document["objects"] if o["type"] == "order"} == {"order:order-2001"}
    bad = export("--ocel", str(out), "--db", str(seeded), "--since", "yesterday")
    assert bad.returncode == 2
    assert "--since 'yesterday': write an ISO time, e.g. 2026-12-04T08:00:00Z" in bad.stderr
