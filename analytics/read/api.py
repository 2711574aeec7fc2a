"""The read-only query API (default ``127.0.0.1:4329``): how the app and ``coordstate query``
read a database that the server process owns (DuckDB allows one writer process).

- ``POST /api/v1/query`` — body ``{"sql": "..."}`` (or the SQL as text/plain); answers Arrow IPC
  (``Accept: application/vnd.apache.arrow.stream``) or JSON (default). 400 bad SQL (DuckDB's
  message), 403 not read-only, 408 too slow, 401 without the token when one is set.
- ``GET /healthz`` — ``{"status": "ok"}`` while the store is open.
- ``GET /metrics`` — Prometheus text: pipeline counters, open anomalies by kind, instances by status.

All errors share one shape: ``{"error": {"status": N, "message": "..."}}``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from analytics.common.http import token_ok
from analytics.common.telemetry import Telemetry, TelemetrySnapshot
from analytics.read.formats import ARROW_STREAM, table_to_arrow, table_to_json
from analytics.read.queries import STATUSES
from analytics.read.sandbox import DEFAULT_MAX_ROWS, DEFAULT_TIMEOUT_S, QueryError, run_query
from processors.rules import SEVERITY
from processors.types import AnomalyKind, DropReason, RejectReason

REJECT_REASONS: tuple[str, ...] = tuple(r.value for r in RejectReason)
MAX_SQL_BYTES = 1024 * 1024
#: outcomes of a webhook request (analytics/notify/actions.py)
ACTION_OUTCOMES = ("sent", "failed", "rejected", "gave_up")


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "message": message}}, status_code=status)


def prometheus(snap: TelemetrySnapshot, instances_by_status: dict[str, int]) -> str:
    lines: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP coordstate_{name} {help_}")
        lines.append(f"# TYPE coordstate_{name} {kind}")
        for labels, value in samples:
            lines.append(f"coordstate_{name}{labels} {value:g}")

    c, g = snap.counters, snap.gauges
    metric(
        "spans_received_total",
        "counter",
        "Spans received over OTLP.",
        [("", c.get("spans_received", 0))],
    )
    metric(
        "spans_rejected_total",
        "counter",
        "Spans rejected as malformed, by reason.",
        [(f'{{reason="{r}"}}', snap.rejected.get(r, 0)) for r in sorted(set(REJECT_REASONS) | set(snap.rejected))],
    )
    metric(
        "spans_dropped_total",
        "counter",
        "Spans or transitions not kept, by reason.",
        [(f'{{reason="{r}"}}', snap.dropped.get(r, 0)) for r in DropReason],
    )
    metric(
        "transitions_written_total",
        "counter",
        "Transitions committed.",
        [("", c.get("transitions_written", 0))],
    )
    metric("commits_total", "counter", "Group commits.", [("", c.get("commits", 0))])
    metric(
        "commit_failures_total",
        "counter",
        "Commits rolled back.",
        [("", c.get("commit_failures", 0))],
    )
    metric(
        "requests_refused_total",
        "counter",
        "Export requests refused by admission control.",
        [("", c.get("requests_refused_overload", 0))],
    )
    metric("queue_depth", "gauge", "Requests waiting for the writer.", [("", g.get("queue_depth", 0))])
    metric(
        "spans_per_second",
        "gauge",
        "Spans received per second, over the last 10 s.",
        [("", g.get("spans_per_second", 0))],
    )
    metric(
        "commit_latency_seconds",
        "gauge",
        "Duration of the last commit.",
        [("", g.get("commit_latency_seconds", 0))],
    )
    metric(
        "pending_spans",
        "gauge",
        "Spans waiting for their key or instance start.",
        [("", g.get("pending_spans", 0))],
    )
    metric(
        "open_anomalies",
        "gauge",
        "Open anomalies by kind (and the kind's severity).",
        [
            (f'{{kind="{kind}",severity="{SEVERITY[AnomalyKind(kind)]}"}}', g.get(f"open_anomalies:{kind}", 0))
            for kind in AnomalyKind
        ],
    )
    metric("status_changes_total", "counter", "Instances entering each status (an instance may enter several).",
           [(f'{{status="{s}"}}', c.get(f"status_entered:{s}", 0)) for s in STATUSES])  # fmt: skip
    metric("alerts_delivered_total", "counter", "Anomaly openings and resolutions delivered to alert targets.",
           [("", c.get("alerts_delivered", 0))])  # fmt: skip
    metric("alert_delivery_failures_total", "counter", "Requests to alert targets that failed (retried with backoff).",
           [("", c.get("alert_delivery_failures", 0))])  # fmt: skip
    metric("alert_backlog", "gauge", "Anomaly openings and resolutions not yet delivered, summed over targets.",
           [("", g.get("alert_backlog", 0))])  # fmt: skip
    metric("action_requests_total", "counter", "Reconciliation webhook requests, by outcome.",
           [(f'{{outcome="{o}"}}', c.get(f"action_requests:{o}", 0)) for o in ACTION_OUTCOMES])  # fmt: skip
    health = sorted(k.split(":", 1)[1] for k in g if k.startswith("model_drift:"))
    metric("model_drift", "gauge", "1 while a required step matches nothing as its workflow's instances keep starting (see the model_health table).",
           [(f'{{workflow="{k.split("|")[0]}",step="{k.split("|")[1]}"}}', g[f"model_drift:{k}"]) for k in health])  # fmt: skip
    metric("step_transitions_total", "counter", "Transitions each step of the model produced.",
           [(f'{{workflow="{k.split("|")[0]}",step="{k.split("|")[1]}"}}', g[f"step_matches:{k}"]) for k in health])  # fmt: skip
    metric("spans_handed_off_total", "counter", "Keyed spans an ingest node handed to the fold nodes (lake mode with roles).",
           [("", c.get("spans_handed_off", 0))])  # fmt: skip
    lag = sorted(int(k.split(":", 1)[1]) for k in g if k.startswith("handoff_lag_snapshots:"))
    metric("handoff_lag_snapshots", "gauge", "Lake snapshots a fold node's partition is behind the lake's head.",
           [(f'{{partition="{i}"}}', g[f"handoff_lag_snapshots:{i}"]) for i in lag])  # fmt: skip
    metric("instances", "gauge", "Workflow instances by status.",
           [(f'{{status="{s}"}}', instances_by_status.get(s, 0)) for s in STATUSES])  # fmt: skip
    return "\n".join(lines) + "\n"


def build_api(
    cursor_factory: Callable[[], Any],
    telemetry: Telemetry,
    *,
    token: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> Starlette:
    def authorized(request: Request) -> bool:
        return token_ok(token, request.headers.get("authorization", ""))

    async def query(request: Request) -> Response:
        if not authorized(request):
            return error(401, "missing or wrong bearer token in the Authorization header")
        body = await request.body()
        if len(body) > MAX_SQL_BYTES:
            return error(413, f"the query is larger than {MAX_SQL_BYTES} bytes")
        sql = body.decode("utf-8", errors="replace")
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                sql = json.loads(body)["sql"]
            except (ValueError, KeyError, TypeError):
                return error(400, 'send {"sql": "SELECT ..."} as JSON, or the SQL as text/plain')
            if not isinstance(sql, str):
                return error(400, '"sql" must be a string')
        try:
            result = await run_in_threadpool(run_query, cursor_factory, sql, timeout_s=timeout_s, max_rows=max_rows)
        except QueryError as exc:
            return error(exc.status, str(exc))
        headers = {
            "X-Coordstate-Truncated": str(result.truncated).lower(),
            "X-Coordstate-Rows": str(result.table.num_rows),
        }
        if ARROW_STREAM in request.headers.get("accept", ""):
            return Response(table_to_arrow(result.table), media_type=ARROW_STREAM, headers=headers)
        return JSONResponse(table_to_json(result.table, result.truncated), headers=headers)

    async def healthz(request: Request) -> Response:
        try:
            await run_in_threadpool(_ping, cursor_factory)
        except Exception as exc:  # the store is closed or broken: say so, never a traceback
            return error(503, f"the database is not available: {exc}")
        return JSONResponse({"status": "ok"})

    async def metrics(request: Request) -> Response:
        if not authorized(request):
            return error(401, "missing or wrong bearer token in the Authorization header")
        by_status = await run_in_threadpool(_instances_by_status, cursor_factory)
        return Response(prometheus(telemetry.snapshot(), by_status), media_type="text/plain; version=0.0.4")

    return Starlette(
        routes=[
            Route("/api/v1/query", query, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ]
    )


def _ping(cursor_factory: Callable[[], Any]) -> None:
    cur = cursor_factory()
    try:
        cur.execute("SELECT 1").fetchall()
    finally:
        cur.close()


def _instances_by_status(cursor_factory: Callable[[], Any]) -> dict[str, int]:
    cur = cursor_factory()
    try:
        return {
            str(s): int(n) for s, n in cur.execute("SELECT status, count(*) FROM instances GROUP BY ALL").fetchall()
        }
    finally:
        cur.close()
