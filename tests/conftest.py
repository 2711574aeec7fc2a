"""Shared fixtures: a real coordstate service on free ports with a DuckDB file in tmp_path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from analytics.write.store import Store
from collector.service import ServeConfig, Service
from tests.helpers import ORDERS_MODEL
from tests.pg import Postgres


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One throwaway PostgreSQL cluster for the lake tests (each test creates its own database)."""
    pg = Postgres()
    yield pg
    pg.close()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "coordstate.duckdb"


@pytest.fixture
def service(db_path: Path) -> Iterator[Service]:
    svc = Service(
        ServeConfig(
            model=str(ORDERS_MODEL),
            db=str(db_path),
            otlp_grpc="127.0.0.1:0",
            otlp_http="127.0.0.1:0",
        )
    )
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()


def query(db: Path, sql: str) -> list[tuple[object, ...]]:
    """Read the database file after the service stopped (read-only, as a user would)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def query_live(store: Store, sql: str) -> list[tuple[object, ...]]:
    """Read through a running store's reader cursor (the server owns the file meanwhile)."""
    cur = store.cursor()
    try:
        rows: list[tuple[object, ...]] = cur.execute(sql).fetchall()
        return rows
    finally:
        cur.close()
