"""Named SQL over the public schema: what the app shows and the benchmark measures.

Every query is a plain read-only SELECT (it runs through the query API's sandbox unchanged).
Parameters are inlined with :func:`literal` — the API takes one statement and no bind
parameters, so values are quoted here, once, correctly.
"""

from __future__ import annotations

from datetime import datetime

from processors.rules import Severity
from processors.types import COHERENT_STATUSES, AnomalyKind, InstanceStatus, StepState

#: every status and anomaly kind, in the core's order (the app's filters and colour scales use these)
STATUSES: tuple[str, ...] = tuple(s.value for s in InstanceStatus)
KINDS: tuple[str, ...] = tuple(k.value for k in AnomalyKind)
#: not at an end yet: what the convergence page calls the backlog
BACKLOG: tuple[str, ...] = (InstanceStatus.RUNNING.value, InstanceStatus.STALLED.value)
SEVERITIES: tuple[str, ...] = tuple(s.value for s in Severity)
#: the board's colour of each step state ("pending": not seen yet)
STATE_COLORS: dict[str, str] = {
    StepState.COMPLETED: "#2e7d32",
    StepState.STARTED: "#64b5f6",
    StepState.FAILED: "#e53935",
    StepState.COMPENSATED: "#8e24aa",
    "pending": "#e0e0e0",
}
#: time axes: 24-hour clock, in UTC (the stored timestamps are UTC), said on the axis
TIME_FORMAT = "%H:%M:%S"
TIME_TITLE = "time (UTC)"
#: the coherent ends, which the convergence rate counts
COHERENT: tuple[str, ...] = tuple(s.value for s in InstanceStatus if s in COHERENT_STATUSES)
#: the charts' colour of each status: greens for the coherent ends, amber to red for trouble
STATUS_COLORS: dict[str, str] = {
    InstanceStatus.CONVERGED: "#2e7d32",
    InstanceStatus.FAILED: "#9e9e9e",
    InstanceStatus.COMPENSATED: "#81c784",
    InstanceStatus.RUNNING: "#64b5f6",
    InstanceStatus.DEGRADED: "#fb8c00",
    InstanceStatus.STALLED: "#ffb300",
    InstanceStatus.DIVERGED: "#e53935",
}


def literal(value: str | int | float | datetime | None) -> str:
    """A SQL literal for ``value`` (strings quoted with '' escaping)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, datetime):
        return f"TIMESTAMP '{value.strftime('%Y-%m-%d %H:%M:%S.%f')}'"
    return "'" + str(value).replace("'", "''") + "'"


#: from ``instance_counts`` (the writers' status deltas, summed): as ``status_counts()`` over
#: ``instances``, without reading every instance row
OVERVIEW_STATUS = (
    "SELECT workflow, sum(instances)::BIGINT AS instances, "
    + ", ".join(f"coalesce(sum(instances) FILTER (WHERE status = '{s}'), 0)::BIGINT AS {s}" for s in STATUSES)
    + ", round(coalesce(sum(instances) FILTER (WHERE status IN ("
    + ", ".join(f"'{s}'" for s in COHERENT)
    + ")), 0) / sum(instances), 4) AS convergence_rate "
    "FROM instance_counts GROUP BY workflow ORDER BY workflow"
)

OVERVIEW_ANOMALIES = """
SELECT workflow, kind, severity, count(*) AS open_anomalies, min(opened_at) AS oldest
FROM anomalies
WHERE resolved_at IS NULL
GROUP BY ALL
ORDER BY severity, open_anomalies DESC
"""

#: steps of the model that matched nothing while their workflow's instances kept starting
MODEL_DRIFT = """
SELECT workflow, step, instances_without_match, last_matched_at, hint
FROM model_health
WHERE drifting
ORDER BY workflow, step
"""

RECENT_INSTANCES = """
SELECT workflow, instance_key, status, steps, started_at, updated_at, converged_at, open_anomalies
FROM instances
ORDER BY updated_at DESC
LIMIT {limit}
"""

CONVERGENCE_PER_MINUTE = "SELECT * FROM convergence(INTERVAL 1 MINUTE)"


def convergence(bucket: str) -> str:
    """``bucket`` is a DuckDB interval such as ``'1 minute'`` or ``'1 hour'``."""
    return f"SELECT * FROM convergence(INTERVAL {literal(bucket)})"


def state_at(ts: datetime) -> str:
    return (
        "SELECT workflow, status, count(*) AS instances FROM state_at("
        f"{literal(ts)}) GROUP BY ALL ORDER BY workflow, status"
    )


def instance_row(key: str) -> str:
    return (
        "SELECT workflow, instance_key, status, steps, started_at, updated_at, converged_at, "
        f"open_anomalies, trace_ids FROM instances WHERE instance_key = {literal(key)}"
    )


def instance_transitions(workflow: str, key: str, start: datetime, end: datetime) -> str:
    """One instance's transitions. The time window (from its ``instances`` row, widened) lets
    DuckDB skip every row group outside it: a drill-down stays fast on a large history."""
    return (
        "SELECT event_time, step, state, service, trace_id, span_id, source FROM transitions "
        f"WHERE workflow = {literal(workflow)} AND instance_key = {literal(key)} "
        f"AND event_time BETWEEN {literal(start)} - INTERVAL 1 HOUR AND {literal(end)} + INTERVAL 1 DAY "
        "ORDER BY event_time, step"
    )


def instance_anomalies(workflow: str, key: str) -> str:
    return (
        "SELECT kind, step, severity, opened_at, resolved_at, message, suggested_action, evidence "
        f"FROM anomalies WHERE workflow = {literal(workflow)} AND instance_key = {literal(key)} ORDER BY opened_at"
    )


def instance_history(workflow: str, key: str) -> str:
    return (
        "SELECT status, valid_from, valid_to FROM instance_history "
        f"WHERE workflow = {literal(workflow)} AND instance_key = {literal(key)} ORDER BY valid_from"
    )


def board(statuses: list[str], key: str, only_anomalies: bool, limit: int) -> str:
    """The Board page: instances with their steps, newest first, filtered."""
    where = ["TRUE"]
    if statuses:
        where.append("status IN (" + ", ".join(literal(s) for s in statuses) + ")")
    if key:
        where.append(f"instance_key ILIKE {literal('%' + key + '%')}")
    if only_anomalies:
        where.append("open_anomalies > 0")
    return (
        "SELECT workflow, instance_key, status, open_anomalies, updated_at, "
        "map_keys(steps) AS step_names, map_values(steps) AS step_states FROM instances "
        f"WHERE {' AND '.join(where)} ORDER BY updated_at DESC LIMIT {int(limit)}"
    )


def alerts(show: str, kinds: list[str], severities: list[str]) -> str:
    """The Alerts page: ``show`` is Open, Resolved or All."""
    where = ["TRUE"]
    if show == "Open":
        where.append("resolved_at IS NULL")
    elif show == "Resolved":
        where.append("resolved_at IS NOT NULL")
    if kinds:
        where.append("kind IN (" + ", ".join(literal(k) for k in kinds) + ")")
    if severities:
        where.append("severity IN (" + ", ".join(literal(s) for s in severities) + ")")
    return (
        "SELECT severity, kind, workflow, instance_key, step, message, suggested_action, opened_at, resolved_at, "
        "epoch(coalesce(resolved_at, now()::TIMESTAMP) - opened_at) AS age_seconds, "
        "epoch(resolved_at - opened_at) AS healed_after_seconds, "
        "d.alerted_at, d.alert_resolved_at, "
        "CASE WHEN x.outcome IS NULL THEN NULL WHEN x.attempts > 1 "
        "THEN x.outcome || ' (' || x.attempts || ' attempts)' ELSE x.outcome END AS action_delivery, "
        "evidence[1].trace_id AS trace_id "
        f"FROM anomalies a {DELIVERY_JOINS} WHERE {' AND '.join(where)} "
        "ORDER BY resolved_at IS NOT NULL, severity, opened_at DESC LIMIT 1000"
    )


#: an anomaly's delivery state: first told to an alert target, told resolved; the webhook's
#: latest outcome and how many requests it took (analytics/notify)
DELIVERY_JOINS = (
    "LEFT JOIN (SELECT anomaly_id, min(delivered_at) FILTER (WHERE event = 'opened') AS alerted_at, "
    "min(delivered_at) FILTER (WHERE event = 'resolved') AS alert_resolved_at "
    "FROM alert_deliveries GROUP BY anomaly_id) d USING (anomaly_id) "
    "LEFT JOIN (SELECT anomaly_id, arg_max(outcome, attempted_at) AS outcome, max(attempt) AS attempts "
    "FROM action_deliveries GROUP BY anomaly_id) x USING (anomaly_id)"
)


def instance_spans(workflow: str, key: str) -> str:
    return (
        "SELECT service, name, steps, start_time, end_time, status, trace_id, span_id, disposition FROM spans "
        f"WHERE workflow = {literal(workflow)} AND instance_key = {literal(key)} ORDER BY start_time"
    )
