"""The app's data layer: every read goes through the query API (live) or a read-only DuckDB file.

The source comes from the environment, set by ``coordstate ui``:
``COORDSTATE_API`` (URL of a running server's query API), ``COORDSTATE_DB`` (a file no server
holds) or ``COORDSTATE_LAKE`` + ``COORDSTATE_LAKE_DATA`` (a lake, read directly), ``COORDSTATE_TOKEN``, and ``COORDSTATE_TRACE_URL`` (e.g. a Jaeger or Grafana link
template with ``{trace_id}``). Results are cached for a moment so that a page with several
widgets asks once. Every failure becomes a :class:`DataError` with a message for a person.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pandas as pd
import streamlit as st

from analytics.read.client import DEFAULT_API_URL, ClientError, fetch_metrics, query_api, query_file, query_lake

REFRESH_S = 5


class DataError(Exception):
    """Something a person can act on (the API is down, the file is missing, the SQL is wrong)."""


@dataclass(frozen=True, slots=True)
class Source:
    api: str | None
    db: str | None
    token: str | None
    trace_url: str | None
    lake: str | None = None
    lake_data: str | None = None

    @property
    def live(self) -> bool:
        return self.api is not None

    def describe(self) -> str:
        if self.api:
            return f"live: query API at {self.api}"
        return f"offline: lake {self.lake} (read-only)" if self.lake else f"offline: {self.db} (read-only)"


def source() -> Source:
    db = os.environ.get("COORDSTATE_DB") or None
    lake = os.environ.get("COORDSTATE_LAKE") or None
    api = os.environ.get("COORDSTATE_API") or (None if db or lake else DEFAULT_API_URL)
    return Source(api, db, os.environ.get("COORDSTATE_TOKEN") or None, os.environ.get("COORDSTATE_TRACE_URL") or None,
                  lake, os.environ.get("COORDSTATE_LAKE_DATA") or None)  # fmt: skip


@st.cache_data(ttl=2, show_spinner=False)
def _run(sql: str, src: Source) -> pd.DataFrame:
    try:
        if src.api:
            table = query_api(src.api, sql, token=src.token)
        elif src.lake:
            table = query_lake(src.lake, src.lake_data or "", sql)
        else:
            table = query_file(str(src.db), sql)
    except ClientError as exc:
        raise DataError(str(exc)) from exc
    frame: pd.DataFrame = table.to_pandas()
    return frame


def query(sql: str) -> pd.DataFrame:
    return _run(sql, source())


def guarded(sql: str) -> pd.DataFrame:
    """Run ``sql``; on failure show the reason and stop the page (never a traceback)."""
    try:
        return query(sql)
    except DataError as exc:
        st.error(str(exc), icon=":material/power_off:")
        st.stop()
        raise  # not reached: st.stop() ends the run


@st.cache_data(ttl=2, show_spinner=False)
def _metrics(src: Source) -> dict[str, float]:
    if not src.api:
        return {}
    try:
        return fetch_metrics(src.api, token=src.token)
    except ClientError as exc:
        raise DataError(str(exc)) from exc


def metrics() -> dict[str, float]:
    """The live server's self-telemetry (empty offline)."""
    return _metrics(source())


def open_selected(table: pd.DataFrame, picked: Any) -> None:
    """A row selected in a table of instances opens that instance's page (its key in the URL,
    so the link can be shared)."""
    rows = picked.selection.rows if picked is not None else []
    if rows:
        from app.nav import PAGES

        st.switch_page(PAGES["instance"], query_params={"key": str(table.iloc[rows[0]]["instance_key"])})


def trace_link(trace_id: str) -> str | None:
    template = source().trace_url
    return template.replace("{trace_id}", trace_id) if template else None


EMPTY_STATE = (
    "No workflow instances yet — is anything sending spans to :4327? Point an OpenTelemetry SDK or "
    "collector at OTLP/gRPC `127.0.0.1:4327` or OTLP/HTTP `http://127.0.0.1:4328/v1/traces` "
    "(or run `coordstate demo`), and make sure your model matches their service and span names "
    "(`coordstate check MODEL`)."
)
