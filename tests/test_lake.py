"""Lake mode on a real PostgreSQL catalog (a throwaway cluster) and a data path: the same SQL
contract and the same coordination state as the embedded DuckDB file, for the same traffic."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from streamlit.testing.v1 import AppTest

from analytics.common import lake
from analytics.common.lake import Lake
from analytics.write import store as store_module
from analytics.write.store import Store
from collector.service import ServeConfig, Service, StartError
from processors.clock import ManualClock
from processors.model import parse_duration
from processors.types import SpanRecord
from tests import helpers
from tests.conftest import query_live
from tests.helpers import ORDERS_MODEL
from tests.otel_clients import grpc_exporter
from tests.pg import MISSING, Postgres
from tests.procs import COORDSTATE
from tests.scenarios import SCENARIOS, SECOND, Emitter, SeededIds

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(180),
    pytest.mark.skipif(MISSING is not None, reason=str(MISSING)),
    pytest.mark.skipif(duckdb.__version__ != "1.5.5", reason="the lake extensions' wheels are built for DuckDB 1.5.5"),
]

T0 = 1_760_000_000 * SECOND
DAY = 86_400 * SECOND
#: the coordination state, as sets of rows (observed_at and detected_at are wall-clock)
CONTRACT = {
    **helpers.STATE_QUERIES,
    "anomalies": "SELECT anomaly_id, workflow, instance_key, kind, step, severity, opened_at, resolved_at, message, "
    "suggested_action FROM anomalies",
    "state_at": "SELECT * FROM state_at(TIMESTAMP '2025-10-09 08:53:50')",
}


def drive(config: ServeConfig) -> dict[str, set[tuple[object, ...]]]:
    """Every demo scenario (late spans included) through a live server; the contract's rows."""
    clock = ManualClock(T0)
    with Service(config, clock=clock) as service:
        emitter = Emitter(lambda: grpc_exporter(service.grpc_endpoint), SeededIds(7))
        late = []
        for i, name in enumerate(SCENARIOS):
            order = SCENARIOS[name](f"o-{name}")
            late.append((order, T0 + i * SECOND, emitter.emit(order, T0 + i * SECOND)))
        clock.set(T0 + 15 * SECOND)
        service.store.tick_now()
        for order, start, root in late:
            emitter.emit_late(order, start, root)
        emitter.shutdown()
        clock.set(T0 + 90 * SECOND)
        service.store.tick_now()
        return {
            name: {tuple(map(str, row)) for row in query_live(service.store, sql)} for name, sql in CONTRACT.items()
        }


def config(**kw: object) -> ServeConfig:
    return ServeConfig(model=str(ORDERS_MODEL), otlp_grpc="127.0.0.1:0", otlp_http=None, api=None,
                       tick_interval_s=3600, **kw)  # type: ignore[arg-type]  # fmt: skip


def test_the_lake_holds_what_the_embedded_file_holds(tmp_path: Path, postgres: Postgres) -> None:
    postgres.create("equivalence")
    embedded = drive(config(db=str(tmp_path / "embedded.duckdb")))
    lake = drive(config(lake=postgres.catalog("equivalence"), lake_data=str(tmp_path / "lake")))
    assert {k: len(v) for k, v in lake.items()} == {k: len(v) for k, v in embedded.items()}
    assert len(embedded["transitions"]) > 50
    assert {row[2] for row in embedded["instances"]} >= {"converged", "diverged", "compensated", "stalled"}
    for name in CONTRACT:
        assert lake[name] == embedded[name], name
    assert any((tmp_path / "lake").rglob("*.parquet")), "the lake's data are Parquet files under --lake-data"


def test_a_restarted_lake_node_carries_on_where_it_stopped(tmp_path: Path, postgres: Postgres) -> None:
    postgres.create("restart")
    cfg = config(lake=postgres.catalog("restart"), lake_data=str(tmp_path / "lake"))
    order = SCENARIOS["slow-payment"]("o-slow")  # the payment and shipment come after the restart
    clock = ManualClock(T0)
    with Service(cfg, clock=clock) as service:
        emitter = Emitter(lambda: grpc_exporter(service.grpc_endpoint))
        root = emitter.emit(order, T0)
        emitter.shutdown()
        service.store.tick_now()
        assert query_live(service.store, "SELECT status FROM instances WHERE instance_key = 'o-slow'") == [("running",)]
    clock = ManualClock(T0 + 13 * SECOND)
    with Service(cfg, clock=clock) as service:
        assert service.telemetry.snapshot().gauges["instances_restored"] == 1
        emitter = Emitter(lambda: grpc_exporter(service.grpc_endpoint))
        emitter.emit_late(order, T0, root)
        emitter.shutdown()
        service.store.tick_now()
        rows = query_live(service.store, "SELECT status, steps['payment'], steps['shipment'] FROM instances")
        assert rows == [("converged", "completed", "completed")]
    out = subprocess.run(
        [COORDSTATE, "query", "--lake", postgres.catalog("restart"), "--lake-data", str(tmp_path / "lake"),
         "--format", "csv", "SELECT instance_key, status FROM instances"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["instance_key,status", "o-slow,converged"]


def open_lake_store(where: Lake, tmp_path: Path) -> Store:
    store = Store(tmp_path / "unused.duckdb", helpers.compiled_orders(), ManualClock(helpers.T0),
                  tick_interval_s=None, lake_at=where)  # fmt: skip
    store.open()
    return store


SIDE = "SELECT (SELECT count(*) FROM _trace_keys), (SELECT count(*) FROM _status_counts)"
#: order o-1 once its inventory and shipment spans found their key through the trace
ORDER_1_FINISHED = {
    "steps": [("o-1", s) for s in ("checkout", "inventory", "payment", "shipment")],
    "_trace_keys": [("order", helpers.trace_id(1), "o-1")],
    "instance_counts": [("order", "converged", 1)],
}


def finish_order_1(store: Store, *rest: SpanRecord) -> dict[str, list[tuple[object, ...]]]:
    """The rest of order o-1 (no key of its own: the trace's), then what ORDER_1_FINISHED says."""
    store.submit(list(rest)).result(timeout=60)
    store.tick_now()  # writes the side rows
    return {
        "steps": query_live(store, "SELECT DISTINCT instance_key, step FROM transitions ORDER BY ALL"),
        "_trace_keys": query_live(store, "SELECT workflow, trace_id, instance_key FROM _trace_keys"),
        "instance_counts": query_live(store, "SELECT workflow, status, instances FROM instance_counts"),
    }


def test_status_counts_and_trace_keys_a_lake_commit_leaves_for_later_survive_a_failed_commit(
    tmp_path: Path, postgres: Postgres
) -> None:
    """A lake store writes status deltas, and the trace keys its spans rows keep, at most every
    SIDE_ROWS_EVERY_S; a failed commit in between rebuilds the state and keeps them."""
    postgres.create("side")
    store = open_lake_store(Lake(postgres.catalog("side"), str(tmp_path / "lake")), tmp_path)
    try:
        root, charge, reserve, ship = helpers.order_spans(1, "o-1")  # the key only on the root
        store.submit([root, charge]).result(timeout=60)
        assert query_live(store, SIDE) == [(0, 0)]  # not written with the commit

        def disk_full() -> None:
            raise OSError("No space left on device")

        store.fault = disk_full
        with pytest.raises(store_module.StoreUnavailable):
            store.submit(helpers.order_spans(2, "o-2")).result(timeout=60)
        store.fault = None  # the failed commit rebuilt the state from the lake
        finished = finish_order_1(store, reserve, ship)
    finally:
        store.close()
    assert finished == ORDER_1_FINISHED


def test_a_lake_store_whose_database_was_invalidated_connects_anew_and_loses_nothing(
    tmp_path: Path, postgres: Postgres
) -> None:
    """A fatal DuckDB error leaves the database instance unusable (a DuckLake scan failed that
    way while PostgreSQL restarted); a reader that meets one says so, and the store reconnects
    to the lake, rebuilds, and goes on from what it committed."""
    postgres.create("fatal")
    store = open_lake_store(Lake(postgres.catalog("fatal"), str(tmp_path / "lake")), tmp_path)
    try:
        root, charge, reserve, ship = helpers.order_spans(1, "o-1")
        store.submit([root, charge]).result(timeout=60)
        old = store._con
        store.invalidated()
        finished = finish_order_1(store, reserve, ship)  # queued behind the reconnect
        assert store._con is not old
        assert store.telemetry.snapshot().counters["reconnects"] == 1
    finally:
        store.close()
    assert finished == ORDER_1_FINISHED


def test_a_shutdown_with_the_catalog_down_says_what_recovers_the_side_rows(
    tmp_path: Path, postgres: Postgres, caplog: pytest.LogCaptureFixture
) -> None:
    """The shutdown's write of the waiting side rows is the last one: when it fails, the log
    says what recovers them (the next start-up), not a tick that never comes."""
    postgres.create("down")
    store = open_lake_store(Lake(postgres.catalog("down"), str(tmp_path / "lake")), tmp_path)
    root, charge, _, _ = helpers.order_spans(1, "o-1")
    store.submit([root, charge]).result(timeout=60)
    postgres.stop()
    try:
        with caplog.at_level(logging.ERROR, logger="analytics.write.persist"):
            store.close()
    finally:
        postgres.start()
    failed = [r.getMessage() for r in caplog.records if "writing status counts and trace keys failed" in r.getMessage()]
    assert len(failed) == 1
    assert "the next start-up counts the statuses and reads the keys back" in failed[0]
    assert "next tick" not in failed[0]


#: a lake store that commits the first half of order o-1, says so, and waits to be killed
CRASHING_NODE = """
import sys
from analytics.common.lake import Lake
from tests.test_lake import open_lake_store
from tests import helpers
from pathlib import Path
store = open_lake_store(Lake(sys.argv[1], sys.argv[2]), Path(sys.argv[3]))
root, charge, _, _ = helpers.order_spans(1, "o-1")
store.submit([root, charge]).result(timeout=60)
print("acknowledged", flush=True)
sys.stdin.read()
"""


def test_a_lake_node_killed_before_its_side_rows_are_written_loses_nothing(tmp_path: Path, postgres: Postgres) -> None:
    """SIGKILL after an acknowledged commit whose status deltas and trace key were still waiting:
    the start-up counts the statuses anew and reads the key back from the spans rows."""
    postgres.create("crash")
    where = Lake(postgres.catalog("crash"), str(tmp_path / "lake"))
    node = subprocess.Popen(
        [sys.executable, "-c", CRASHING_NODE, where.catalog, where.data_path, str(tmp_path)],
        cwd=helpers.ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert node.stdout is not None
        assert node.stdout.readline().strip() == "acknowledged"
    finally:
        node.kill()
        node.communicate(timeout=60)
    con = lake.connect(where)
    try:
        assert con.execute(SIDE).fetchall() == [(0, 0)]  # lost with the process
    finally:
        con.close()
    store = open_lake_store(where, tmp_path)
    try:
        assert query_live(store, "SELECT * FROM instance_counts") == [("order", "running", 1)]
        _, _, reserve, ship = helpers.order_spans(1, "o-1")
        finished = finish_order_1(store, reserve, ship)
    finally:
        store.close()
    assert finished == ORDER_1_FINISHED


def test_a_lake_that_cannot_be_reached_is_a_clear_start_error(tmp_path: Path, postgres: Postgres) -> None:
    cfg = config(lake=postgres.catalog("no_such_database"), lake_data=str(tmp_path / "lake"))
    with pytest.raises(StartError) as err:
        Service(cfg).start()
    assert "cannot attach the lake postgres:dbname=no_such_database" in str(err.value)
    assert "Is PostgreSQL running and the database created" in str(err.value)
    with pytest.raises(StartError) as err:
        Service(config(lake="/tmp/catalog.ducklake", lake_data=str(tmp_path / "lake")))
    assert "give a PostgreSQL catalog" in str(err.value)
    with pytest.raises(StartError) as err:
        Service(config(lake=postgres.catalog(), lake_data=None))
    assert "--lake needs --lake-data PATH" in str(err.value)


def test_retention_in_the_lake_deletes_expired_instances_while_ingest_goes_on(
    tmp_path: Path, postgres: Postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "RETENTION_CHUNK", 50)
    postgres.create("retention")
    where = Lake(postgres.catalog("retention"), str(tmp_path / "lake"))
    clock = ManualClock(helpers.T0)
    store = Store(tmp_path / "unused.duckdb", helpers.compiled_orders(), clock, tick_interval_s=None,
                  retention_ns=parse_duration("7d"), lake_at=where)  # fmt: skip
    store.open()
    try:
        old = [s for i in range(200) for s in helpers.order_spans(10_000 + i, f"old-{i}", t=i * 0.01)]
        old.append(helpers.span(9_999, "checkout", "PlaceOrder", 0, 1, attrs={"app.order.id": "old-unfinished"}))
        store.submit(old).result(timeout=120)
        clock.set(helpers.T0 + 8 * DAY)  # eight days later, with a 7-day retention
        for n in range(10):  # ingest goes on while chunks are deleted
            store.submit(helpers.order_spans(50_000 + n, f"new-{n}", t=8 * 86_400 + n)).result(timeout=60)
            store.tick_now()
        counts = query_live(
            store,
            "SELECT (SELECT count(*) FROM instances WHERE instance_key LIKE 'old-%'), "
            "(SELECT count(*) FROM transitions WHERE instance_key LIKE 'old-%' AND instance_key <> 'old-unfinished'), "
            "(SELECT count(*) FROM instances WHERE instance_key LIKE 'new-%'), "
            "(SELECT status FROM instances WHERE instance_key = 'old-unfinished')",
        )
    finally:
        store.close()
    assert counts == [(1, 0, 10, "stalled")]  # expired gone; the unfinished one and the new ones stay


def test_lake_maintain_compacts_beside_a_serving_node_and_keeps_every_row(tmp_path: Path, postgres: Postgres) -> None:
    postgres.create("maintain")
    data = str(tmp_path / "lake")
    clock = ManualClock(T0)
    with Service(config(lake=postgres.catalog("maintain"), lake_data=data), clock=clock) as service:
        emitter = Emitter(lambda: grpc_exporter(service.grpc_endpoint))
        for i, name in enumerate(SCENARIOS):  # one export per span: many small commits, many files
            emitter.emit(SCENARIOS[name](f"o-{name}"), T0 + i * SECOND)
        clock.set(T0 + 60 * SECOND)
        service.store.tick_now()
        before = query_live(
            service.store, "SELECT (SELECT count(*) FROM transitions), (SELECT count(*) FROM instances)"
        )
        done = subprocess.run(
            [COORDSTATE, "lake", "maintain", "--lake", postgres.catalog("maintain"), "--lake-data", data, "--keep", "0s"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        found = re.search(r"data files (\d+) -> (\d+), snapshots (\d+) -> (\d+)", done.stdout)
        assert found, done.stdout
        _, files_after, snaps_before, snaps_after = map(int, found.groups())
        assert files_after >= 1  # rows inlined in the catalog by small commits are written out to Parquet
        assert snaps_after < snaps_before
        assert (
            query_live(service.store, "SELECT (SELECT count(*) FROM transitions), (SELECT count(*) FROM instances)")
            == before
        )
        emitter.emit(SCENARIOS["happy"]("o-after"), T0 + 61 * SECOND)  # the node commits on as before
        emitter.shutdown()
        clock.set(T0 + 70 * SECOND)
        service.store.tick_now()
        assert query_live(service.store, "SELECT status FROM instances WHERE instance_key = 'o-after'") == [
            ("converged",)
        ]


def test_the_app_reads_the_lake_without_a_server(
    tmp_path: Path, postgres: Postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    postgres.create("app")
    data = str(tmp_path / "lake")
    rows = drive(config(lake=postgres.catalog("app"), lake_data=data))
    for name in ("COORDSTATE_API", "COORDSTATE_DB"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COORDSTATE_LAKE", postgres.catalog("app"))
    monkeypatch.setenv("COORDSTATE_LAKE_DATA", data)
    at = AppTest.from_file(str(helpers.ROOT / "app" / "main.py"), default_timeout=60).run()
    assert not at.exception, at.exception
    shown = {m.label: m.value for m in at.metric}
    assert shown["Instances"] == str(len(rows["instances"]))
    assert any("offline: lake postgres:dbname=app" in c.value for c in at.caption)
