"""Retention: the history of terminal instances older than `retention` is deleted in bounded
chunks; recent and unfinished instances stay; ingest goes on meanwhile (latency measured)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from analytics.write import store as store_module
from analytics.write.observer import Changes
from analytics.write.store import Store
from processors.clock import ManualClock
from processors.model import parse_duration
from tests.conftest import query, query_live
from tests.helpers import SECOND, T0, compiled_orders, order_spans, span
from tests.reliability.report import SOAK, record

DAY = 86_400 * SECOND
OLD_ORDERS = 3_000 if SOAK else 1_200


def test_retention_deletes_old_terminal_history_in_chunks(tmp_path: Path, monkeypatch: object) -> None:
    monkeypatch.setattr(store_module, "RETENTION_CHUNK", 500)  # type: ignore[attr-defined]
    db = tmp_path / "r.duckdb"
    clock = ManualClock(T0)
    store = Store(db, compiled_orders(), clock, tick_interval_s=None, retention_ns=parse_duration("7d"))
    store.open()
    try:
        old = []
        for i in range(OLD_ORDERS):
            old += order_spans(10_000 + i, f"old-{i}", t=i * 0.01)
        old += [span(9_999, "checkout", "PlaceOrder", 0, 1, attrs={"app.order.id": "old-unfinished"})]
        store.submit(old).result(timeout=120)
        assert query_live(store, "SELECT count(*) FROM instances") == [(OLD_ORDERS + 1,)]
        clock.set(T0 + 8 * DAY)  # eight days later, with a 7-day retention
        latencies = []
        for n in range(40):  # ingest goes on while chunks are deleted
            started = time.perf_counter()
            store.submit(order_spans(50_000 + n, f"new-{n}", t=8 * 86_400 + n)).result(timeout=60)
            latencies.append(time.perf_counter() - started)
            store.tick_now()
        left = query_live(store, "SELECT count(*) FROM instances WHERE instance_key LIKE 'old-%'")
    finally:
        store.close()
    assert left == [(1,)]  # only the unfinished (running → stalled) instance stays
    assert query(
        db, "SELECT count(*) FROM transitions WHERE instance_key LIKE 'old-%' AND instance_key <> 'old-unfinished'"
    ) == [(0,)]
    assert query(db, "SELECT count(*) FROM instances WHERE instance_key LIKE 'new-%'") == [(40,)]
    assert query(db, "SELECT status FROM instances WHERE instance_key = 'old-unfinished'") == [("stalled",)]
    p50 = statistics.median(latencies) * 1000
    record(
        "retention",
        expired=OLD_ORDERS,
        chunk=500,
        ingest_p50_ms=round(p50, 1),
        ingest_max_ms=round(max(latencies) * 1000, 1),
    )


def test_retention_ends_the_open_anomalies_of_what_it_deletes(tmp_path: Path) -> None:
    """A converged order charged twice keeps its duplicate_action open; once retention deletes the
    order, the anomaly's listeners (the alert targets) hear it resolved."""
    clock = ManualClock(T0)
    store = Store(tmp_path / "r.duckdb", compiled_orders(), clock, tick_interval_s=None,
                  retention_ns=parse_duration("7d"))  # fmt: skip
    heard: list[Changes] = []
    store.listeners.append(heard.append)
    store.open()
    try:
        twice = [*order_spans(1, "o-twice"), span(1, "payment", "Charge", 0.2, 0.45)]
        store.submit(twice).result(timeout=60)
        clock.set(T0 + 60 * SECOND)
        store.tick_now()
        [(aid,)] = query_live(store, "SELECT anomaly_id FROM anomalies WHERE kind = 'duplicate_action'")
        assert query_live(store, "SELECT status FROM instances") == [("converged",)]
        clock.set(T0 + 8 * DAY)
        store.tick_now()
        assert query_live(store, "SELECT count(*) FROM anomalies") == [(0,)]
    finally:
        store.close()
    assert [r for c in heard for r in c.resolved] == [(aid, T0 + 8 * DAY)]
