"""The coordination history as an OCEL 2.0 event log (JSON), for process-mining tools.

Object-centric event logs (OCEL 2.0, ocel-standard.org) are what pm4py, Celonis and ocpa read.
The mapping:

- **events** are transitions: activity ``"<step> <state>"`` (``payment completed``), the event time,
  attributes ``span_id`` and ``source``; related to their instance (qualifier ``instance``), the
  trace that was their evidence (``evidence``) and the service that emitted it (``emitted by``);
- **objects**: each instance (type: its workflow; attributes ``status`` and ``started_at``), each
  trace (type ``trace``) and each service (type ``service``); an instance relates to every trace
  it was seen in (``observed in``) — more than one when links or the business key joined them
  (a queue consumer's own trace).

Reads through a ``fetch(sql) -> pyarrow.Table`` (a DuckDB file or the query API), a page at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from analytics.read.queries import literal

Fetch = Callable[[str], pa.Table]
PAGE = 50_000


def _iso(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _pages(fetch: Fetch, sql: str, order: str) -> Iterator[dict[str, Any]]:
    offset = 0
    while True:
        table = fetch(f"{sql} ORDER BY {order} LIMIT {PAGE} OFFSET {offset}")
        yield from table.to_pylist()
        if table.num_rows < PAGE:
            return
        offset += PAGE


def ocel_document(fetch: Fetch, since: datetime | None = None) -> dict[str, Any]:
    """The OCEL 2.0 JSON document of every transition (from ``since`` on, when given)."""
    where = f"WHERE event_time >= {literal(since)}" if since is not None else ""
    events: list[dict[str, Any]] = []
    activities: set[str] = set()
    services: set[str] = set()
    traces: set[str] = set()
    instances: set[tuple[str, str]] = set()
    sql = f"SELECT workflow, instance_key, step, state, event_time, trace_id, span_id, service, source FROM transitions {where}"
    for n, row in enumerate(_pages(fetch, sql, "event_time, workflow, instance_key, step, state, span_id, source")):
        activity = f"{row['step']} {row['state']}"
        activities.add(activity)
        services.add(row["service"])
        traces.add(row["trace_id"])
        instances.add((row["workflow"], row["instance_key"]))
        events.append(
            {
                "id": f"e{n}",
                "type": activity,
                "time": _iso(row["event_time"]),
                "attributes": [
                    {"name": "span_id", "value": row["span_id"]},
                    {"name": "source", "value": row["source"]},
                ],
                "relationships": [
                    {"objectId": _instance_id(row["workflow"], row["instance_key"]), "qualifier": "instance"},
                    {"objectId": f"trace:{row['trace_id']}", "qualifier": "evidence"},
                    {"objectId": f"service:{row['service']}", "qualifier": "emitted by"},
                ],
            }
        )
    objects = _instance_objects(fetch, instances)
    traces.update(r["objectId"].removeprefix("trace:") for o in objects for r in o["relationships"])
    objects += [{"id": f"trace:{t}", "type": "trace", "attributes": [], "relationships": []} for t in sorted(traces)]
    objects += [
        {"id": f"service:{s}", "type": "service", "attributes": [], "relationships": []} for s in sorted(services)
    ]
    workflows = sorted({w for w, _ in instances})
    instance_attributes = [{"name": "status", "type": "string"}, {"name": "started_at", "type": "time"}]
    return {
        "objectTypes": [{"name": w, "attributes": instance_attributes} for w in workflows]
        + [{"name": "trace", "attributes": []}, {"name": "service", "attributes": []}],
        "eventTypes": [
            {"name": a, "attributes": [{"name": "span_id", "type": "string"}, {"name": "source", "type": "string"}]}
            for a in sorted(activities)
        ],
        "objects": objects,
        "events": events,
    }


def _instance_id(workflow: str, key: str) -> str:
    return f"{workflow}:{key}"


def _instance_objects(fetch: Fetch, wanted: set[tuple[str, str]]) -> list[dict[str, Any]]:
    out = []
    sql = "SELECT workflow, instance_key, status, started_at, updated_at, trace_ids FROM instances"
    for row in _pages(fetch, sql, "workflow, instance_key"):
        if (row["workflow"], row["instance_key"]) not in wanted:
            continue
        out.append(
            {
                "id": _instance_id(row["workflow"], row["instance_key"]),
                "type": row["workflow"],
                "attributes": [
                    {"name": "status", "value": row["status"], "time": _iso(row["updated_at"])},
                    {"name": "started_at", "value": _iso(row["started_at"]), "time": _iso(row["started_at"])},
                ],
                "relationships": [{"objectId": f"trace:{t}", "qualifier": "observed in"} for t in row["trace_ids"]],
            }
        )
    return out
