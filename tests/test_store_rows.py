"""The Arrow tables the writer appends match their tables column for column, in order.

``analytics.persist.insert`` appends by position (an Arrow C stream through a relation, the
cheapest path DuckDB offers), so a column out of order would land in the wrong column.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest

from analytics import rows
from analytics.persist import insert
from analytics.schema import migrate

TABLES = {
    "transitions": rows.transitions_table([], 0),
    "spans": rows.spans_table([], 0),
    "_trace_keys": rows.trace_keys_table([], 0),
    "_pending": rows.pending_table([]),
    "instances": rows.instances_table([], {}),
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
