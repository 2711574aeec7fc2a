"""Arrow tables for the store's batch inserts, built from the core's frozen types.

One function per table; columns in the order of ``analytics/write/schema.py``. Arrow (not
``executemany``) keeps a commit of tens of thousands of rows to a few milliseconds.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

import pyarrow as pa

from processors.correlate import LearnedKey, MatchedSpan, PendingSpan
from processors.fold import InstanceState
from processors.health import StepHealth
from processors.types import SpanEvent, SpanLink, SpanRecord, Transition

_EPOCH = datetime(1970, 1, 1)
TS_NS = pa.timestamp("ns")
TS_US = pa.timestamp("us")
STR_MAP = pa.map_(pa.string(), pa.string())


def timestamp_literal(ns: int) -> str:
    """``YYYY-MM-DD HH:MM:SS.ffffff`` (UTC) for a nanosecond timestamp, for SQL parameters."""
    return (_EPOCH + timedelta(microseconds=ns // 1000)).strftime("%Y-%m-%d %H:%M:%S.%f")  # exact: no float


def _us(ns: int | None) -> int | None:
    return None if ns is None else ns // 1000


def us_up(ns: int | None) -> int | None:
    """Nanoseconds as the microseconds a TIMESTAMP column stores, rounded up (a due time is
    never stored earlier than it falls)."""
    return None if ns is None else -(-ns // 1000)


def transitions_table(rows: Sequence[Transition], observed_ns: int) -> pa.Table:
    return pa.table(
        {
            "workflow": pa.array([t.workflow for t in rows], pa.string()),
            "instance_key": pa.array([t.instance_key for t in rows], pa.string()),
            "step": pa.array([t.step for t in rows], pa.string()),
            "state": pa.array([t.state.value for t in rows], pa.string()),
            "event_time": pa.array([t.event_time_ns for t in rows], TS_NS),
            "observed_at": pa.array([observed_ns // 1000] * len(rows), TS_US),
            "trace_id": pa.array([t.trace_id for t in rows], pa.string()),
            "span_id": pa.array([t.span_id for t in rows], pa.string()),
            "service": pa.array([t.service for t in rows], pa.string()),
            "source": pa.array([t.source for t in rows], pa.string()),
        }
    )


def instances_table(
    states: Sequence[InstanceState],
    open_anomalies: dict[tuple[str, str], int],
    next_due: dict[tuple[str, str], int | None],
) -> pa.Table:
    return pa.table(
        {
            "workflow": pa.array([s.workflow for s in states], pa.string()),
            "instance_key": pa.array([s.key for s in states], pa.string()),
            "status": pa.array([s.status.value for s in states], pa.string()),
            "steps": pa.array(
                [[(name, v.state.value) for name, v in s.steps.items() if v.state is not None] for s in states],
                STR_MAP,
            ),
            "started_at": pa.array([_us(s.started_at_ns) for s in states], TS_US),
            "updated_at": pa.array([_us(s.updated_at_ns) for s in states], TS_US),
            "converged_at": pa.array([_us(s.converged_at_ns) for s in states], TS_US),
            "open_anomalies": pa.array([open_anomalies.get((s.workflow, s.key), 0) for s in states], pa.int32()),
            "trace_ids": pa.array([list(s.trace_ids) for s in states], pa.list_(pa.string())),
            # rounded up to the column's microseconds: never due before the time itself
            "next_due_at": pa.array([us_up(next_due.get((s.workflow, s.key))) for s in states], TS_US),
        }
    )


def status_counts_table(delta: dict[tuple[str, str], int]) -> pa.Table:
    kept = sorted((k, n) for k, n in delta.items() if n)
    return pa.table(
        {
            "workflow": pa.array([w for (w, _), _ in kept], pa.string()),
            "status": pa.array([s for (_, s), _ in kept], pa.string()),
            "instances": pa.array([n for _, n in kept], pa.int64()),
        }
    )


def history_table(states: Sequence[InstanceState]) -> pa.Table:
    wf: list[str] = []
    key: list[str] = []
    status: list[str] = []
    start: list[int] = []
    end: list[int | None] = []
    for s in states:
        for i, (st, since) in enumerate(s.history):
            wf.append(s.workflow)
            key.append(s.key)
            status.append(st.value)
            start.append(since // 1000)
            end.append(s.history[i + 1][1] // 1000 if i + 1 < len(s.history) else None)
    return pa.table(
        {
            "workflow": pa.array(wf, pa.string()),
            "instance_key": pa.array(key, pa.string()),
            "status": pa.array(status, pa.string()),
            "valid_from": pa.array(start, TS_US),
            "valid_to": pa.array(end, TS_US),
        }
    )


def instance_keys_table(instances: Iterable[tuple[str, str]], *, keep_order: bool = False) -> pa.Table:
    pairs = list(instances) if keep_order else sorted(instances)
    return pa.table(
        {
            "workflow": pa.array([w for w, _ in pairs], pa.string()),
            "instance_key": pa.array([k for _, k in pairs], pa.string()),
        }
    )


def spans_table(rows: Sequence[MatchedSpan], observed_ns: int) -> pa.Table:
    return pa.table(
        {
            "workflow": pa.array([m.workflow for m in rows], pa.string()),
            "instance_key": pa.array([m.instance_key for m in rows], pa.string()),
            "disposition": pa.array([m.disposition for m in rows], pa.string()),
            "steps": pa.array([list(m.steps) for m in rows], pa.list_(pa.string())),
            "trace_id": pa.array([m.span.trace_id for m in rows], pa.string()),
            "span_id": pa.array([m.span.span_id for m in rows], pa.string()),
            "parent_span_id": pa.array([m.span.parent_span_id for m in rows], pa.string()),
            "service": pa.array([m.span.service for m in rows], pa.string()),
            "name": pa.array([m.span.name for m in rows], pa.string()),
            "start_time": pa.array([m.span.start_ns for m in rows], TS_NS),
            "end_time": pa.array([m.span.end_ns for m in rows], TS_NS),
            "status": pa.array([m.span.status for m in rows], pa.string()),
            "attributes": pa.array([list(stored_attributes(m.span).items()) for m in rows], STR_MAP),
            "observed_at": pa.array([observed_ns // 1000] * len(rows), TS_US),
        }
    )


def stored_attributes(span: SpanRecord) -> dict[str, str]:
    """A span's ``attributes`` column in ``spans``: resource attributes overlaid by the span's."""
    return {k: str(v) for k, v in {**span.resource_attributes, **span.attributes}.items()}


def pending_table(rows: Sequence[PendingSpan]) -> pa.Table:
    return pa.table(
        {
            "workflow": pa.array([p.workflow for p in rows], pa.string()),
            "trace_id": pa.array([p.span.trace_id for p in rows], pa.string()),
            "span_id": pa.array([p.span.span_id for p in rows], pa.string()),
            "instance_key": pa.array([p.key for p in rows], pa.string()),
            "arrived_ns": pa.array([p.arrived_ns for p in rows], pa.int64()),
            "payload": pa.array([span_payload(p.span) for p in rows], pa.string()),
        }
    )


def span_payload(span: SpanRecord) -> str:
    """A buffered span as JSON (``span_from_payload`` reads it back; the shape is stored data)."""
    data = span._asdict()
    data["events"] = [e._asdict() for e in span.events]
    data["links"] = [link._asdict() for link in span.links]
    return json.dumps(data, separators=(",", ":"))


def span_from_payload(payload: str) -> SpanRecord:
    data = json.loads(payload)
    if "error" in data:  # written before the status was kept (0.1): UNSET was stored as OK then
        data["status"] = "error" if data.pop("error") else "ok"
    data["events"] = tuple(SpanEvent(**e) for e in data["events"])
    data["links"] = tuple(SpanLink(**link) for link in data["links"])
    return SpanRecord(**data)


def health_table(findings: Sequence[StepHealth], now_ns: int) -> pa.Table:
    return pa.table(
        {
            "workflow": pa.array([f.workflow for f in findings], pa.string()),
            "step": pa.array([f.step for f in findings], pa.string()),
            "matched": pa.array([f.matched for f in findings], pa.int64()),
            "last_matched_at": pa.array(
                [None if f.last_matched_ns is None else f.last_matched_ns // 1000 for f in findings], TS_US
            ),
            "instances_without_match": pa.array([f.unmatched_instances for f in findings], pa.int32()),
            "drifting": pa.array([f.drifting for f in findings], pa.bool_()),
            "hint": pa.array([f.hint for f in findings], pa.string()),
            "updated_at": pa.array([now_ns // 1000] * len(findings), TS_US),
        }
    )


def pending_idents_table(idents: Iterable[tuple[str, str, str]]) -> pa.Table:
    rows = sorted(idents)
    return pa.table(
        {
            "workflow": pa.array([r[0] for r in rows], pa.string()),
            "trace_id": pa.array([r[1] for r in rows], pa.string()),
            "span_id": pa.array([r[2] for r in rows], pa.string()),
        }
    )


def trace_keys_table(rows: Sequence[LearnedKey], observed_ns: int) -> pa.Table:
    return pa.table(
        {
            "workflow": pa.array([k.workflow for k in rows], pa.string()),
            "trace_id": pa.array([k.trace_id for k in rows], pa.string()),
            "instance_key": pa.array([k.instance_key for k in rows], pa.string()),
            "learned_at": pa.array([observed_ns // 1000] * len(rows), TS_US),
        }
    )
