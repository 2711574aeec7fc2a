"""Memory follows the active instances: finished, quiet instances leave memory (their ids stay) and
come back from the database when a late span arrives, with exactly the same results."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import duckdb

from analytics.write.store import EVICT_AFTER_NS, Store
from collector.service import GcFreezer
from processors.clock import ManualClock
from tests.conftest import query, query_live
from tests.helpers import SECOND, T0, compiled_orders, order_spans, span, trace_id


def open_store(db: Path, clock: ManualClock) -> Store:
    store = Store(db, compiled_orders(), clock, tick_interval_s=None)
    store.open()
    return store


def test_quiet_finished_instances_leave_memory_and_come_back(tmp_path: Path) -> None:
    db = tmp_path / "e.duckdb"
    clock = ManualClock(T0 + 2 * SECOND)
    store = open_store(db, clock)
    try:
        orders = [order_spans(10 + i, f"o-{i}") for i in range(3)]
        for spans in orders:
            store.submit(spans).result(timeout=30)
        store.submit([span(99, "checkout", "PlaceOrder", 0, 1, attrs={"app.order.id": "o-running"})]).result(timeout=30)
        table = store._processor.table
        assert (table.loaded, len(table)) == (4, 4)
        clock.set(T0 + 2 * SECOND + EVICT_AFTER_NS + SECOND)
        store.tick_now()
        assert (table.loaded, len(table)) == (1, 4)  # only the unfinished one stays in memory
        # a late refund for a shipped order: the instance comes back, and now conflicts
        refund = span(10, "payment", "Refund", 700, 701)
        store.submit([refund]).result(timeout=30)
        assert table.loaded == 2
    finally:
        store.close()
    assert query(db, "SELECT instance_key, status FROM instances ORDER BY 1") == [
        ("o-0", "diverged"),
        ("o-1", "converged"),
        ("o-2", "converged"),
        ("o-running", "stalled"),
    ]
    assert query(db, "SELECT count(*) FROM transitions WHERE instance_key = 'o-0'") == [(9,)]

    store = open_store(db, clock)  # a restart keeps quiet instances out of memory too
    try:
        table = store._processor.table
        assert len(table) == 4
        assert table.loaded <= 2
        store.submit(orders[0]).result(timeout=30)  # re-delivery of evicted evidence after the restart
        assert query_live(store, "SELECT count(*) FROM transitions WHERE instance_key = 'o-0'") == [(9,)]
        assert trace_id(10) in query_live(store, "SELECT trace_ids FROM instances WHERE instance_key = 'o-0'")[0][0]
    finally:
        store.close()


def test_over_the_memory_cap_finished_instances_leave_sooner(tmp_path: Path) -> None:
    db = tmp_path / "cap.duckdb"
    clock = ManualClock(T0 + 2 * SECOND)
    store = Store(db, compiled_orders(), clock, tick_interval_s=None, max_loaded_instances=2)
    store.open()
    try:
        for i in range(4):
            store.submit(order_spans(10 + i, f"o-{i}")).result(timeout=30)
        store.submit([span(99, "checkout", "PlaceOrder", 0, 1, attrs={"app.order.id": "o-running"})]).result(timeout=30)
        store.tick_now()  # no time passed: only the cap makes them leave
        table = store._processor.table
        assert (table.loaded, len(table)) == (2, 5)
        store.submit([span(10, "payment", "Refund", 700, 701)]).result(timeout=30)  # o-0 comes back
        assert query_live(store, "SELECT status FROM instances WHERE instance_key = 'o-0'") == [("diverged",)]
    finally:
        store.close()
    assert query(db, "SELECT count(*), count(DISTINCT instance_key) FROM instances") == [(5, 5)]
    store = Store(db, compiled_orders(), clock, tick_interval_s=None, max_loaded_instances=1)
    store.open()  # after a restart (same model) nothing is read back until it is needed
    try:
        store.tick_now()
        assert (store._processor.table.loaded, len(store._processor.table)) == (0, 5)
    finally:
        store.close()


def test_a_step_no_longer_in_the_model_is_skipped_when_an_instance_comes_back(tmp_path: Path) -> None:
    """Stored history may name a step the model has since dropped: start-up skips it, and so must
    the reload of an evicted instance (before, its fold failed and the late span's batch with it)."""
    db = tmp_path / "old-step.duckdb"
    clock = ManualClock(T0 + 2 * SECOND)
    store = open_store(db, clock)
    try:
        store.submit(order_spans(10, "o-0")).result(timeout=30)
    finally:
        store.close()
    con = duckdb.connect(str(db))
    try:  # written by an older model that had a gift-wrap step
        con.execute(
            "INSERT INTO transitions SELECT workflow, instance_key, 'gift_wrap', state, event_time, observed_at, "
            "trace_id, 'wrap-span', service, source FROM transitions WHERE instance_key = 'o-0' LIMIT 1"
        )
    finally:
        con.close()
    clock.set(T0 + 2 * SECOND + EVICT_AFTER_NS + SECOND)
    store = open_store(db, clock)  # o-0 finished long ago: restored as an id only
    try:
        assert store._processor.table.loaded == 0
        store.submit([span(10, "payment", "Refund", 700, 701)]).result(timeout=30)  # o-0 comes back
        assert query_live(store, "SELECT status FROM instances WHERE instance_key = 'o-0'") == [("diverged",)]
    finally:
        store.close()


def test_after_a_restart_due_instances_are_refolded_in_chunks(tmp_path: Path) -> None:
    """Instances whose deadline passed while the server was down are all due at start-up; a
    periodic tick re-folds DUE_CHUNK of them (commits go on between), an explicit tick all."""
    db = tmp_path / "d.duckdb"
    clock = ManualClock(T0 + 2 * SECOND)
    store = open_store(db, clock)
    try:
        for i in range(5):
            store.submit([span(200 + i, "checkout", "PlaceOrder", 0, 1, attrs={"app.order.id": f"o-{i}"})]).result(
                timeout=30
            )
    finally:
        store.close()
    clock.set(T0 + 2 * SECOND + EVICT_AFTER_NS)  # down for ten minutes: every deadline passed
    store = open_store(db, clock)
    stalled = "SELECT count(*) FROM instances WHERE status = 'stalled'"
    try:
        assert query_live(store, stalled) == [(0,)]
        store.tick_now(limit=2)
        assert query_live(store, stalled) == [(2,)]
        store.tick_now(limit=2)
        assert query_live(store, stalled) == [(4,)]
        store.tick_now()
        assert query_live(store, stalled) == [(5,)]
    finally:
        store.close()


class _Node:
    other: _Node | None = None


def test_what_a_commit_leaves_is_frozen_and_cyclic_garbage_is_collected_at_the_thaw(tmp_path: Path) -> None:
    """The server's writer freezes what survives each commit (no full collection walks the
    in-memory state); garbage caught in a reference cycle waits for the next thaw."""
    clock = ManualClock(T0)
    store = open_store(tmp_path / "e.duckdb", clock)
    store.after_commit = GcFreezer(thaw_every_ns=60 * SECOND)
    automatic = gc.isenabled()
    gc.disable()  # only the freezer and the explicit collections below run
    try:
        a, b = _Node(), _Node()
        a.other, b.other = b, a
        cycle = weakref.ref(a)
        del a, b
        store.submit(order_spans(1, "o-1")).result(timeout=30)  # first commit: frozen
        gc.collect()
        assert cycle() is not None  # out of the collector's reach
        assert gc.get_freeze_count() > 0
        clock.set(T0 + 30 * SECOND)
        store.submit(order_spans(2, "o-2", t=30)).result(timeout=30)
        assert cycle() is not None  # not yet: the thaw comes every 60 s of the clock
        clock.set(T0 + 61 * SECOND)
        store.submit(order_spans(3, "o-3", t=61)).result(timeout=30)
        assert cycle() is None  # unfrozen, collected, frozen again
    finally:
        store.close()
        gc.unfreeze()
        if automatic:
            gc.enable()
    assert query(tmp_path / "e.duckdb", "SELECT count(*) FROM instances") == [(3,)]
