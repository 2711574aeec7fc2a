"""Query results on the wire and on a terminal: Arrow IPC and JSON, shared by the query API that
writes them, the client that reads them and the CLI that prints them (none pulls in the others)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pyarrow as pa

ARROW_STREAM = "application/vnd.apache.arrow.stream"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list):
        if value and all(isinstance(v, tuple) and len(v) == 2 for v in value):
            return {str(k): _jsonable(v) for k, v in value}  # a MAP
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def table_to_json(table: pa.Table, truncated: bool) -> dict[str, Any]:
    columns = table.column_names
    rows = [[_jsonable(row[c]) for c in columns] for row in table.to_pylist()]
    return {
        "columns": columns,
        "types": [str(t) for t in table.schema.types],
        "rows": rows,
        "truncated": truncated,
    }


def table_to_arrow(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())
