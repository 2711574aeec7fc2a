"""The Arrow tables the writer appends match their tables column for column, in order.

``analytics.write.persist.insert`` appends by position (an Arrow C stream through a relation, the
cheapest path DuckDB offers), so a column out of order would land in the wrong column.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from analytics.write import rows
from analytics.write.connection import ROW_GROUP_SIZE
from analytics.write.persist import insert
from analytics.write.schema import migrate
from analytics.write.store import Store
from processors.clock import ManualClock
from processors.types import SpanEvent, SpanLink, SpanRecord
from tests.conftest import query
from tests.helpers import SECOND, T0, compiled_orders, order_spans

TABLES = {
    "transitions": rows.transitions_table([], 0),
    "spans": rows.spans_table([], 0),
    "_trace_keys": rows.trace_keys_table([], 0),
    "_pending": rows.pending_table([]),
    "instances": rows.instances_table([], {}, {}),
    "instance_history": rows.history_table([]),
}


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    migrate(con)
    yield con
    con.close()


@pytest.mark.parametrize("name", sorted(TABLES))
def test_arrow_columns_are_the_table_columns_in_order(con: duckdb.DuckDBPyConnection, name: str) -> None:
    columns = [
        r[0]
        for r in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE table_name = ? ORDER BY column_index", [name]
        ).fetchall()
    ]
    assert TABLES[name].column_names == columns


def test_insert_appends_rows_and_skips_empty_tables(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("SET enable_external_access = false")  # as in the store: no replacement scans
    keys = pa.table({"workflow": ["order"], "trace_id": ["t1"], "instance_key": ["o-1"], "learned_at": [0]})
    keys = keys.cast(rows.trace_keys_table([], 0).schema)
    insert(con, "_trace_keys", keys)
    insert(con, "_trace_keys", keys.slice(0, 0))
    assert con.execute("SELECT workflow, trace_id, instance_key FROM _trace_keys").fetchall() == [
        ("order", "t1", "o-1")
    ]


def test_each_instance_has_one_row_however_its_spans_arrive(tmp_path: Path) -> None:
    """A new instance's rows are inserted without looking for old ones; a stored one's rows are
    replaced — across batches, a restart and an instance created and updated in one batch."""
    db = tmp_path / "rows.duckdb"
    clock = ManualClock(T0 + 2 * SECOND)
    first, second = order_spans(10, "o-1"), order_spans(11, "o-2")

    def open_store() -> Store:
        store = Store(db, compiled_orders(), clock, tick_interval_s=None)
        store.open()
        return store

    store = open_store()
    try:
        for sp in first[:2]:  # created, then updated, one span per commit
            store.submit([sp]).result(timeout=30)
        store.submit(second[:1] + second[1:]).result(timeout=30)  # created and finished in one commit
    finally:
        store.close()
    store = open_store()  # after a restart the rest of o-1 updates the stored rows
    try:
        store.submit(first[2:]).result(timeout=30)
    finally:
        store.close()
    assert query(db, "SELECT instance_key, count(*), any_value(status) FROM instances GROUP BY 1 ORDER BY 1") == [
        ("o-1", 1, "converged"),
        ("o-2", 1, "converged"),
    ]
    history = query(
        db, "SELECT instance_key, list(status ORDER BY valid_from) FROM instance_history GROUP BY 1 ORDER BY 1"
    )
    assert history == [("o-1", ["running", "converged"]), ("o-2", ["running", "converged"])]


@pytest.mark.parametrize("name", ["orders.duckdb", "memory.duckdb"])
def test_the_database_keeps_small_row_groups_and_its_own_name(tmp_path: Path, name: str) -> None:
    """The store attaches its file with ROW_GROUP_SIZE (short checkpoints under load); readers see
    its tables by plain and qualified names, as with ``duckdb.connect(path)``."""
    db = tmp_path / name
    store = Store(db, compiled_orders(), ManualClock(T0 + 2 * SECOND), tick_interval_s=None)
    store.open()
    try:
        spans = [sp for n in range(2_600) for sp in order_spans(100 + n, f"o-{n}")]
        for i in range(0, len(spans), 2_000):
            store.submit(spans[i : i + 2_000]).result(timeout=60)
        cur = store.cursor()
        try:
            catalog = cur.execute("SELECT current_database()").fetchone()[0]
            assert catalog == ("orders" if name == "orders.duckdb" else "coordstate")
            assert cur.execute(f"SELECT count(*) FROM {catalog}.main.instances").fetchone() == (2_600,)
            assert cur.execute("SELECT count(*) FROM transitions").fetchone()[0] > ROW_GROUP_SIZE
        finally:
            cur.close()
    finally:
        store.close()
    con = duckdb.connect(str(db), read_only=True)
    try:
        groups = con.execute(
            "SELECT row_group_id, max(count) FROM pragma_storage_info('transitions') GROUP BY 1 ORDER BY 1"
        ).fetchall()
        compressions = {
            row[0]
            for row in con.execute("SELECT DISTINCT compression FROM pragma_storage_info('transitions')").fetchall()
        }
    finally:
        con.close()
    assert len(groups) >= 2
    assert all(rows_in_group <= ROW_GROUP_SIZE for _, rows_in_group in groups)
    # checkpoints never spend their time trying FSST on hex ids (DISABLED_COMPRESSION); a
    # dictionary scheme stays (DuckDB 1.5: DICTIONARY; 2.x: DICT_FSST, which that setting does
    # not name, and whose checkpoints were measured cheap enough)
    names = {c.upper() for c in compressions}
    assert "FSST" not in names
    assert names & {"DICTIONARY", "DICT_FSST"}


def test_a_buffered_span_is_stored_as_the_same_json_and_read_back_equal() -> None:
    """``_pending.payload`` is stored data: databases written by earlier versions must still load."""
    span = SpanRecord(
        trace_id="ab" * 16,
        span_id="cd" * 8,
        parent_span_id="",
        service="inventory",
        name="Reserve",
        start_ns=T0,
        end_ns=T0 + SECOND,
        status="error",
        attributes={"app.order.id": "o-1", "retry": 2},
        resource_attributes={"deployment": "eu"},
        events=(SpanEvent("inventory.reserved", T0 + 5, {"sku": "x"}),),
        links=(SpanLink("ef" * 16, "01" * 8),),
    )
    payload = rows.span_payload(span)
    assert json.loads(payload) == {
        "trace_id": "ab" * 16,
        "span_id": "cd" * 8,
        "parent_span_id": "",
        "service": "inventory",
        "name": "Reserve",
        "start_ns": T0,
        "end_ns": T0 + SECOND,
        "status": "error",
        "attributes": {"app.order.id": "o-1", "retry": 2},
        "resource_attributes": {"deployment": "eu"},
        "events": [{"name": "inventory.reserved", "time_ns": T0 + 5, "attributes": {"sku": "x"}}],
        "links": [{"trace_id": "ef" * 16, "span_id": "01" * 8}],
    }
    assert rows.span_from_payload(payload) == span
    # what 0.1 stored (an error flag; UNSET was stored as OK) still loads
    old = {**json.loads(payload), "error": True}
    del old["status"]
    assert rows.span_from_payload(json.dumps(old)) == span
    assert rows.span_from_payload(json.dumps({**old, "error": False})).status == "ok"
