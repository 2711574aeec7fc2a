"""A restart on the same model folds nothing: every instance stays in the database until a span
for it arrives or its next due time falls, and the results are exactly those of a run that never
stopped. A changed model (or fold) is folded anew once, then trusted again."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from analytics.write import persist
from analytics.write.store import Store, fold_fingerprint
from processors import state as state_module
from processors.clock import ManualClock
from processors.matching import CompiledModel
from processors.state import StoredIds
from tests.conftest import query
from tests.helpers import SECOND, STATE_QUERIES, T0, compiled_orders, order_spans, orders_model, span

ANOMALIES = "SELECT anomaly_id, instance_key, kind, step, opened_at, resolved_at, message FROM anomalies"


def traffic() -> list[tuple[float, list]]:
    """(seconds after T0 when it arrives, spans): every path a restart can cut through."""
    waiting = order_spans(30, "o-3", t=3.0)  # children first: they wait for the root's key
    return [
        (2.0, order_spans(10, "o-0") + order_spans(11, "o-1")),
        (2.5, [span(12, "checkout", "PlaceOrder", 0.5, 1.5, attrs={"app.order.id": "o-2"})]),
        (4.0, waiting[1:]),
        (
            5.0,
            [
                span(40, "checkout", "PlaceOrder", 4, 4.5, attrs={"app.order.id": "o-4"}),
                span(40, "payment", "Charge", 4.1, 4.2, error=True),
            ],
        ),
        (11.0, []),  # o-2's payment deadline falls: an anomaly opens
        (13.0, [span(12, "payment", "Charge", 12, 12.5), waiting[0]]),  # o-2 paid late: it resolves
        (20.0, [span(10, "payment", "Refund", 19, 19.5), *order_spans(11, "o-1")]),  # late refund; re-delivery
        (45.0, []),  # o-2's and o-4's deadlines fall with no span
    ]


TRAFFIC = traffic()  # once: span ids are drawn from a counter


def run(db: Path, model: CompiledModel, restart_after: int | None) -> dict[str, list[str]]:
    clock = ManualClock(T0)
    store = Store(db, model, clock, tick_interval_s=None)
    store.open()
    try:
        for i, (at, spans) in enumerate(TRAFFIC):
            clock.set(T0 + int(at * SECOND))
            if spans:
                store.submit(spans).result(timeout=30)
            store.tick_now()
            assert open_gauges(store) == open_rows(store)
            if i == restart_after:
                store.close()
                store = Store(db, model, clock, tick_interval_s=None)
                store.open()
                assert store.telemetry.snapshot().gauges["restored_without_fold"] == 1
                assert store._processor.table.loaded == 0  # nothing read back yet
    finally:
        store.close()
    counts = "SELECT workflow, status, count(*) FROM instances GROUP BY ALL ORDER BY ALL"
    assert query(db, "SELECT * FROM instance_counts ORDER BY ALL") == query(db, counts)
    queries = {**STATE_QUERIES, "anomalies": ANOMALIES}
    return {name: sorted(repr(row) for row in query(db, sql)) for name, sql in queries.items()}


def open_gauges(store: Store) -> dict[str, int]:
    """The observer's open counts per kind, as /metrics publishes them (kept as anomalies move)."""
    gauges = store.telemetry.snapshot().gauges
    return {k.split(":")[1]: int(v) for k, v in gauges.items() if k.startswith("open_anomalies:") and v}


def open_rows(store: Store) -> dict[str, int]:
    cur = store.cursor()
    try:
        return dict(
            cur.execute("SELECT kind, count(*) FROM anomalies WHERE resolved_at IS NULL GROUP BY kind").fetchall()
        )
    finally:
        cur.close()


@pytest.mark.parametrize("restart_after", range(len(TRAFFIC) - 1))
def test_a_restart_anywhere_gives_the_results_of_a_run_without_one(tmp_path: Path, restart_after: int) -> None:
    model = compiled_orders()
    expected = run(tmp_path / "straight.duckdb", model, None)
    assert run(tmp_path / "restarted.duckdb", model, restart_after) == expected
    statuses = dict(query(tmp_path / "straight.duckdb", "SELECT instance_key, status FROM instances"))
    assert statuses == {"o-0": "diverged", "o-1": "converged", "o-2": "stalled", "o-3": "converged", "o-4": "failed"}


def test_next_due_at_is_when_the_instance_is_judged_again(tmp_path: Path) -> None:
    db = tmp_path / "due.duckdb"
    clock = ManualClock(T0 + 2 * SECOND)
    store = Store(db, compiled_orders(), clock, tick_interval_s=None)
    store.open()
    try:
        store.submit([span(1, "checkout", "PlaceOrder", 0, 1, attrs={"app.order.id": "o-1"})]).result(timeout=30)
        store.submit(order_spans(2, "o-2")).result(timeout=30)
    finally:
        store.close()
    # o-1: its payment is due 10 s after checkout, the order 30 s after; o-2 converged: nothing left
    rows = query(db, f"SELECT instance_key, epoch_ns(next_due_at) - {T0} FROM instances ORDER BY 1")
    assert rows == [("o-1", 10 * SECOND), ("o-2", None)]

    clock.set(T0 + 11 * SECOND)  # restarted after the payment deadline: the timer comes from the row
    store = Store(db, compiled_orders(), clock, tick_interval_s=None)
    store.open()
    try:
        assert store._processor.table.loaded == 0
        store.tick_now()
        assert store._processor.table.loaded == 1  # o-1 read back when due, o-2 not at all
        assert store.telemetry.snapshot().counters["instances_read_back"] == 1
    finally:
        store.close()
    assert query(db, "SELECT kind, step FROM anomalies WHERE resolved_at IS NULL") == [("missing_step", "payment")]
    assert query(db, f"SELECT epoch_ns(next_due_at) - {T0} FROM instances WHERE instance_key = 'o-1'") == [
        (30 * SECOND,)
    ]


def test_a_changed_model_is_folded_again_once(tmp_path: Path) -> None:
    db = tmp_path / "model.duckdb"
    clock = ManualClock(T0 + 2 * SECOND)
    first = compiled_orders()
    store = Store(db, first, clock, tick_interval_s=None)
    store.open()
    try:
        store.submit([span(1, "checkout", "PlaceOrder", 0, 1, attrs={"app.order.id": "o-1"})]).result(timeout=30)
    finally:
        store.close()
    assert query(db, "SELECT fingerprint FROM _folded") == [(fold_fingerprint(first),)]

    spec = orders_model()
    wf = spec.workflows[0]
    strict = CompiledModel(spec.model_copy(update={"workflows": (wf.model_copy(update={"deadline": 1 * SECOND}),)}))
    assert fold_fingerprint(strict) != fold_fingerprint(first)
    store = Store(db, strict, clock, tick_interval_s=None)  # an order must now end within 1 s
    store.open()
    try:
        assert store.telemetry.snapshot().gauges["restored_without_fold"] == 0
        assert store._processor.table.loaded == 1  # folded anew at start-up
        store.tick_now()
    finally:
        store.close()
    assert query(db, "SELECT status FROM instances") == [("stalled",)]
    assert query(db, "SELECT fingerprint FROM _folded") == [(fold_fingerprint(strict),)]

    store = Store(db, strict, clock, tick_interval_s=None)
    store.open()
    try:
        assert store.telemetry.snapshot().gauges["restored_without_fold"] == 1
    finally:
        store.close()


def test_a_fold_that_finds_every_row_as_stored_rewrites_none(tmp_path: Path) -> None:
    """An upgrade (no fingerprint) folds live instances; rows equal to the fold, next due time
    included, are not rewritten and the fingerprint is written at once."""
    db = tmp_path / "upgrade.duckdb"
    clock = ManualClock(T0 + 2 * SECOND)
    model = compiled_orders()
    store = Store(db, model, clock, tick_interval_s=None)
    store.open()
    try:  # o-1 waits for its payment (a due time); o-2 converged (none)
        store.submit([span(1, "checkout", "PlaceOrder", 0, 1, attrs={"app.order.id": "o-1"})]).result(timeout=30)
        store.submit(order_spans(2, "o-2")).result(timeout=30)
    finally:
        store.close()
    with duckdb.connect(str(db)) as con:
        con.execute("DELETE FROM _folded")
    store = Store(db, model, clock, tick_interval_s=None)
    store.open()
    try:
        assert store.telemetry.snapshot().gauges["restored_without_fold"] == 0
        assert store._processor.table.loaded == 2
        assert store._unsettled == set()
    finally:
        store.close()
    assert query(db, "SELECT fingerprint FROM _folded") == [(fold_fingerprint(model),)]


def test_stored_ids_answer_through_evictions_read_backs_and_merges(monkeypatch: pytest.MonkeyPatch) -> None:
    ids = [("order", f"o-{i}") for i in range(50)] + [("order", "ünïcode ключ"), ("w", "")]
    con = duckdb.connect()
    try:
        hasher = lambda instances: persist.hash_ids(con, instances)  # noqa: E731 - the store's own
        con.execute("CREATE TABLE instances (workflow VARCHAR, instance_key VARCHAR)")
        con.executemany("INSERT INTO instances VALUES (?, ?)", ids[:20])
        stored_hashes = persist.stored_hashes(con, "", [])  # hashed in the table, asked about from Arrow
        monkeypatch.setattr(state_module, "MERGE_AFTER", 4)
        stored = StoredIds(stored_hashes, hasher)
        assert stored.holds(ids[:21]) == [True] * 20 + [False]
        stored.remove(ids[:10] + ids[40:45])  # read back (merged into the array every 4 changes)
        for i in ids[20:30] + ids[:2] + ids[-2:]:
            stored.add(i)  # evicted
        held = {i for i, h in zip(ids, stored.holds(ids), strict=True) if h}
        assert held == set(ids[:2] + ids[10:30] + ids[-2:])
        assert len(stored) == 24
    finally:
        con.close()
