"""Read-only SQL for users: one SELECT, no side effects, no files, a time limit and a row cap.

Layers, each enough on its own for most attacks:
1. the database itself runs with ``enable_external_access = false`` (no files, no network, no
   extensions) and a locked configuration (set by the store after migrating);
2. exactly one statement, of type SELECT, that DuckDB can serialize as a pure query
   (``json_serialize_sql`` refuses PRAGMA, SET, COPY, ATTACH, INSTALL, CALL, …);
3. an interrupt after ``timeout_s`` and at most ``max_rows`` rows returned.

Errors (mapped to HTTP by the API; the CLI prints them):

    QueryError
    ├── QueryRefused    403: not a read-only query
    ├── QueryInvalid    400: DuckDB could not parse, bind or run it (its own message)
    ├── QueryTimeout    408: cut by the time limit
    └── QueryTooLarge   422: needs more memory than the database's limit
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_ROWS = 100_000


class QueryError(Exception):
    status = 400


class QueryRefused(QueryError):
    status = 403


class QueryInvalid(QueryError):
    status = 400


class QueryTimeout(QueryError):
    status = 408


class QueryTooLarge(QueryError):
    status = 422


@dataclass(frozen=True, slots=True)
class QueryResult:
    table: pa.Table
    truncated: bool
    elapsed_s: float


def check_read_only(con: Any, sql: str) -> None:
    """Raise :class:`QueryRefused` unless ``sql`` is exactly one read-only SELECT."""
    if not sql.strip():
        raise QueryInvalid("empty query: send one SELECT statement")
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryInvalid(str(exc)) from exc
    if len(statements) != 1:
        raise QueryRefused(
            f"send exactly one statement (got {len(statements)}); separate queries are separate requests"
        )
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        name = str(kind).rsplit(".", 1)[-1]
        raise QueryRefused(f"{name} statements are refused: the query API is read-only (SELECT and WITH … SELECT only)")
    rows = con.execute(
        "SELECT json_serialize_sql(?::VARCHAR)", [sql]
    ).fetchall()  # fetchall: 2.x wants results finished
    parsed = json.loads(rows[0][0]) if rows else {"error": True}
    if parsed.get("error"):
        raise QueryRefused(
            "only plain SELECT queries are allowed (PRAGMA, SET, CALL and the like are refused): "
            + str(parsed.get("error_message", ""))
        )


def run_query(
    cursor_factory: Callable[[], Any],
    sql: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> QueryResult:
    cur = cursor_factory()
    timer = threading.Timer(timeout_s, cur.interrupt)
    started = time.perf_counter()
    try:
        check_read_only(cur, sql)
        timer.start()
        try:
            reader = cur.sql(sql).to_arrow_reader(min(max_rows + 1, 10_000))
            batches: list[pa.RecordBatch] = []
            rows = 0
            for batch in reader:
                batches.append(batch)
                rows += batch.num_rows
                if rows > max_rows:
                    break
            table = pa.Table.from_batches(batches, schema=reader.schema)
        except duckdb.InterruptException as exc:
            raise QueryTimeout(
                f"the query ran longer than {timeout_s:g}s and was stopped; narrow it (WHERE, LIMIT, a time window)"
            ) from exc
        except duckdb.OutOfMemoryException as exc:
            raise QueryTooLarge(
                f"the query needs more memory than coordstate allows ({exc}); narrow it (WHERE, LIMIT, fewer columns)"
            ) from exc
        except duckdb.PermissionException as exc:
            raise QueryRefused(f"refused: {exc}") from exc
        except duckdb.Error as exc:
            raise QueryInvalid(str(exc)) from exc
    finally:
        timer.cancel()
        cur.close()
    truncated = table.num_rows > max_rows
    if truncated:
        table = table.slice(0, max_rows)
    return QueryResult(table, truncated, time.perf_counter() - started)
