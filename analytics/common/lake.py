"""Lake mode: the coordination tables in DuckLake — a catalog in PostgreSQL, data as Parquet files
on a shared path — instead of one DuckDB file (docs/architecture.md, "Scale").

The DuckLake and PostgreSQL extensions come from their PyPI wheels (``duckdb-extension-ducklake``,
``duckdb-extension-postgres-scanner``), loaded from the package directory with no network; they
load only into the exact DuckDB release they were built for, which is why pyproject pins DuckDB.
Where a wheel is missing, the extension is installed from DuckDB's extension repository instead.

The SQL contract is the same in both modes: the same migrations create the same tables, views and
macros in the lake.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

#: the catalog's name inside DuckDB (``lake.instances`` also works, as ``instances`` does)
ALIAS = "lake"
#: DuckLake retries a commit that raced another this many times (its default, 10, lets "Exceeded
#: the maximum retry count" reach clients when several processes append)
MAX_RETRY_COUNT = 100
#: (extension, PyPI package that ships it)
EXTENSIONS = (("postgres_scanner", "duckdb_extension_postgres_scanner"), ("ducklake", "duckdb_extension_ducklake"))


class LakeError(RuntimeError):
    """The lake cannot be used; the message says what and how to fix it."""


@dataclass(frozen=True, slots=True)
class Lake:
    """Where the lake is: DuckLake's catalog (``postgres:dbname=… host=…``) and its data path."""

    catalog: str
    data_path: str

    def __post_init__(self) -> None:
        if not self.catalog.startswith("postgres:"):
            raise LakeError(
                f"--lake {self.catalog!r}: give a PostgreSQL catalog, e.g. --lake 'postgres:dbname=coordstate "
                "host=127.0.0.1' (several nodes share one lake only through PostgreSQL)"
            )
        if not self.data_path:
            raise LakeError("--lake needs --lake-data PATH: where the lake's Parquet files live (a shared path)")

    @property
    def data_dir(self) -> str:
        """The data path as DuckLake and ``allowed_directories`` want it: absolute, ending in /."""
        if "://" in self.data_path:
            return self.data_path.rstrip("/") + "/"
        return str(Path(self.data_path).resolve()) + "/"

    def describe(self) -> str:
        return f"lake {self.catalog} (data {self.data_dir})"


def extension_file(name: str, package: str) -> str | None:
    """The extension's file in its wheel, for this DuckDB release (None: not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    found = Path(next(iter(spec.submodule_search_locations))) / "extensions" / f"v{duckdb.__version__}"
    path = found / f"{name}.duckdb_extension"
    return str(path) if path.exists() else None


def load_extensions(con: Any) -> None:
    for name, package in EXTENSIONS:
        path = extension_file(name, package)
        try:
            if path is not None:
                con.execute(f"LOAD '{_sql_string(path)}'")
            else:
                con.execute(f"INSTALL {name}")
                con.execute(f"LOAD {name}")
        except duckdb.Error as exc:
            raise LakeError(
                f"cannot load DuckDB's {name} extension for DuckDB {duckdb.__version__}: {exc}. "
                f"Install the wheel {package.replace('_', '-')}=={duckdb.__version__} (pyproject pins the pair)"
            ) from exc


def attach(con: Any, lake: Lake, *, read_only: bool = False) -> None:
    """Attach the lake to ``con`` as ``lake`` and make it the default catalog; file access is
    then limited to the lake's data path (user SQL reads no other file)."""
    load_extensions(con)
    options = [f"DATA_PATH '{_sql_string(lake.data_dir)}'"]
    if read_only:
        options.append("READ_ONLY")
    try:
        if not read_only and "://" not in lake.data_path:
            Path(lake.data_dir).mkdir(parents=True, exist_ok=True)
        con.execute(f"ATTACH 'ducklake:{_sql_string(lake.catalog)}' AS {ALIAS} ({', '.join(options)})")
    except (duckdb.Error, OSError) as exc:
        raise LakeError(
            f"cannot attach the {lake.describe()}: {exc}. Is PostgreSQL running and the database created "
            "(createdb), and is the data path writable?"
        ) from exc
    con.execute(f"USE {ALIAS}")
    con.execute(f"SET ducklake_max_retry_count = {MAX_RETRY_COUNT}")
    con.execute(f"SET allowed_directories = ['{_sql_string(lake.data_dir)}']")


def connect(lake: Lake, *, read_only: bool = False) -> Any:
    con = duckdb.connect()
    try:
        attach(con, lake, read_only=read_only)
    except BaseException:
        con.close()
        raise
    return con


@dataclass(frozen=True, slots=True)
class Maintenance:
    files_before: int
    files_after: int
    snapshots_before: int
    snapshots_after: int


def maintain(con: Any, keep_s: int, floor: str | None = None) -> Maintenance:
    """Compaction, in one process beside the serving nodes (no coordination row is deleted here:
    retention is the writers'): small files merged, inlined rows written out, snapshots older than
    ``keep_s`` seconds — and older than ``floor`` (a UTC timestamp: where the slowest reader of the
    change feed stands) — expired, and the files only they referenced removed."""

    def counts() -> tuple[int, int]:
        tables = con.execute(
            "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = ?", [ALIAS]).fetchall()  # fmt: skip
        files = sum(
            int(con.execute("SELECT count(*) FROM ducklake_list_files(?, ?, schema => ?)", [ALIAS, t, s]).fetchone()[0])
            for s, t in tables
        )
        return files, int(con.execute(f"SELECT count(*) FROM ducklake_snapshots('{ALIAS}')").fetchone()[0])

    files_before, snapshots_before = counts()
    older = f"now() - INTERVAL {int(keep_s)} SECOND"
    if floor is not None:
        older = f"least({older}, TIMESTAMPTZ '{_sql_string(floor)}+00')"
    for call in (
        f"CALL ducklake_flush_inlined_data('{ALIAS}')",
        f"CALL ducklake_merge_adjacent_files('{ALIAS}')",
        f"CALL ducklake_expire_snapshots('{ALIAS}', older_than => {older})",
        f"CALL ducklake_cleanup_old_files('{ALIAS}', older_than => {older})",
    ):
        con.execute(call)
    files_after, snapshots_after = counts()
    return Maintenance(files_before, files_after, snapshots_before, snapshots_after)


def _sql_string(text: str) -> str:
    return text.replace("'", "''")
