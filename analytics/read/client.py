"""Reading coordination history: through a running server's query API, or from a DuckDB file.

Used by ``coordstate query`` and by the app. Both paths apply the same read-only sandbox; both
return a :class:`pyarrow.Table`.

    ClientError                    one message a person can act on, never a traceback
    ├── ApiUnavailable             the API does not answer (is ``coordstate serve`` running?)
    ├── DatabaseLocked             the file is held by a running server: use its API
    └── QueryFailed                the server or sandbox refused or could not run the query
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import duckdb
import pyarrow as pa

from analytics.common import lake
from analytics.read.formats import ARROW_STREAM
from analytics.read.sandbox import QueryError, run_query

DEFAULT_API_URL = "http://127.0.0.1:4329"


class ClientError(Exception):
    pass


class ApiUnavailable(ClientError):
    pass


class DatabaseLocked(ClientError):
    pass


class QueryFailed(ClientError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def query_api(url: str, sql: str, *, token: str | None = None, timeout_s: float = 30.0) -> pa.Table:
    request = urllib.request.Request(
        url.rstrip("/") + "/api/v1/query",
        data=json.dumps({"sql": sql}).encode(),
        headers={"Content-Type": "application/json", "Accept": ARROW_STREAM},
        method="POST",
    )
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            payload = response.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            message = json.loads(body)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = body.decode(errors="replace") or exc.reason
        raise QueryFailed(exc.code, f"{message} (HTTP {exc.code})") from exc
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ApiUnavailable(
            f"query API at {url} is not answering ({reason}) — is `coordstate serve` running?"
        ) from exc
    return pa.ipc.open_stream(payload).read_all()


def fetch_metrics(url: str, *, token: str | None = None, timeout_s: float = 5.0) -> dict[str, float]:
    """A running server's ``/metrics`` (Prometheus text) as ``{name{labels}: value}``, without the
    ``coordstate_`` prefix."""
    request = urllib.request.Request(url.rstrip("/") + "/metrics")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        raise ApiUnavailable(f"query API at {url} is not answering ({exc}) — is `coordstate serve` running?") from exc
    out: dict[str, float] = {}
    for line in text.splitlines():
        found = re.match(r"^coordstate_(\w+)(\{[^}]*\})?\s+(\S+)$", line)
        if found:
            out[found.group(1) + (found.group(2) or "")] = float(found.group(3))
    return out


def open_read_only(path: str | Path) -> duckdb.DuckDBPyConnection:
    if not Path(path).exists():
        raise ClientError(f"no database at {path}: pass --db PATH, or start `coordstate serve` and use --api")
    try:
        return duckdb.connect(
            str(path),
            read_only=True,
            config={
                "enable_external_access": False,
                "autoload_known_extensions": False,
                "lock_configuration": True,
            },
        )
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            raise DatabaseLocked(
                f"the database {path} is held by a running coordstate server; query it through its API: "
                f'coordstate query --api {DEFAULT_API_URL} "..."'
            ) from exc
        raise ClientError(f"cannot open {path}: {exc}") from exc


def open_lake(where: lake.Lake) -> duckdb.DuckDBPyConnection:
    """The lake, read-only, with the same limits as a read-only file (no files outside the lake,
    no extensions loaded by user SQL): no server needed."""
    try:
        con: duckdb.DuckDBPyConnection = lake.connect(where, read_only=True)
    except lake.LakeError as exc:
        raise ClientError(str(exc)) from exc
    for setting in ("enable_external_access = false", "autoload_known_extensions = false", "lock_configuration = true"):
        con.execute(f"SET {setting}")
    return con


def query_lake(catalog: str, data_path: str, sql: str, *, timeout_s: float = 30.0) -> pa.Table:
    """One read-only query on the lake at ``catalog`` (``postgres:…``) and ``data_path``."""
    try:
        where = lake.Lake(catalog, data_path)
    except lake.LakeError as exc:
        raise ClientError(str(exc)) from exc
    con = open_lake(where)

    def cursor() -> duckdb.DuckDBPyConnection:
        cur = con.cursor()
        cur.execute(f"USE {lake.ALIAS}")  # a cursor starts in DuckDB's in-memory catalog
        return cur

    try:
        return run_query(cursor, sql, timeout_s=timeout_s).table
    except QueryError as exc:
        raise QueryFailed(exc.status, str(exc)) from exc
    finally:
        con.close()


def query_file(path: str | Path, sql: str, *, timeout_s: float = 30.0) -> pa.Table:
    con = open_read_only(path)
    try:
        return run_query(con.cursor, sql, timeout_s=timeout_s).table
    except QueryError as exc:
        raise QueryFailed(exc.status, str(exc)) from exc
    finally:
        con.close()
