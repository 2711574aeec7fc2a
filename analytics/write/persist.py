"""What the store writes and reads, as functions of a DuckDB connection (no threads, no state).

The store's writer thread calls these inside its transactions; each function is one step of the
SQL contract (``analytics/write/schema.py``), fed through Arrow.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from analytics.write import rows
from processors.correlate import LearnedKey, PendingSpan, StepResult
from processors.fold import InstanceState
from processors.health import StepHealth
from processors.matching import CompiledModel
from processors.state import InstanceId
from processors.types import TERMINAL_STATUSES, StepState, Transition

log = logging.getLogger(__name__)

RESTORE_TRACE_KEYS = 200_000
#: (table, event-time column that lets DuckDB skip recent row groups) for retention deletes
RETAINED_TABLES = (
    ("transitions", "event_time"),
    ("spans", "end_time"),
    ("instance_history", ""),
    ("anomalies", ""),
    ("alert_deliveries", ""),
    ("action_deliveries", ""),
    ("instances", ""),
)


def in_transaction(con: Any, what: str, work: Callable[[], object]) -> bool:
    """Run ``work`` in its own transaction; on an error roll back, log it, and return False (the
    upkeep that calls this — retention, model health — retries on the next tick)."""
    try:
        con.execute("BEGIN")
        work()
        con.execute("COMMIT")
    except Exception as exc:
        log.error("%s failed, will retry on the next tick: %s", what, exc)
        with contextlib.suppress(Exception):
            con.execute("ROLLBACK")
        return False
    return True


def insert(con: Any, name: str, table: Any) -> None:
    """Append an Arrow table to ``name``; its columns are the table's, in order (see ``rows``).

    The table goes in as an Arrow C stream through a relation: no catalog entry, no pyarrow
    dataset — a third of the fixed cost per statement of registering a pyarrow table.
    """
    if table.num_rows:
        con.from_arrow(table.__arrow_c_stream__()).insert_into(name)


def _register(con: Any, name: str, table: Any) -> None:
    con.register(name, table.__arrow_c_stream__())


@dataclass(frozen=True, slots=True)
class Tables:
    """One transaction's writes as Arrow tables, built before the transaction begins."""

    transitions: Any
    spans: Any
    trace_keys: Any
    pending_delete: Any  # idents leaving the key/start buffers (None: nothing to delete)
    pending: Any
    instance_keys: Any  # stored instances whose rows are replaced (None: none)
    since: str  # the oldest start among them (lets DuckDB skip older row groups)
    instances: Any
    history: Any


def tables(
    result: StepResult,
    delete: set[tuple[str, str, str]],
    buffered: list[PendingSpan],
    states: list[InstanceState],
    open_counts: dict[InstanceId, int],
    now: int,
) -> Tables:
    """The history a processing step adds, the buffers it changed and the instances it re-folded."""
    # rows to replace: only instances stored before (new ones have none — skip two table scans)
    stored = [s for s in states if (s.workflow, s.key) not in result.created]
    return Tables(
        transitions=rows.transitions_table(result.transitions, now),
        spans=rows.spans_table(result.spans, now),
        trace_keys=rows.trace_keys_table(result.learned_keys, now),
        pending_delete=rows.pending_idents_table(delete) if delete else None,
        pending=rows.pending_table(buffered),
        instance_keys=rows.instance_keys_table((s.workflow, s.key) for s in stored) if stored else None,
        since=rows.timestamp_literal(min(s.started_at_ns for s in stored)) if stored else "",
        instances=rows.instances_table(states, open_counts),
        history=rows.history_table(states),
    )


def write(con: Any, t: Tables) -> None:
    """Write one step's tables (inside the caller's transaction)."""
    insert(con, "transitions", t.transitions)
    insert(con, "spans", t.spans)
    insert(con, "_trace_keys", t.trace_keys)
    if t.pending_delete is not None:
        _register(con, "_batch", t.pending_delete)
        con.execute(
            "DELETE FROM _pending USING _batch d WHERE _pending.workflow = d.workflow "
            "AND _pending.trace_id = d.trace_id AND _pending.span_id = d.span_id"
        )
        con.unregister("_batch")
    insert(con, "_pending", t.pending)
    if t.instance_keys is not None:
        # every row of an instance starts at or after its start: row groups that ended before the
        # oldest start in this batch are skipped (zone maps) instead of scanned
        for name, column in (("instances", "started_at"), ("instance_history", "valid_from")):
            _register(con, "_batch", t.instance_keys)
            con.execute(
                f"DELETE FROM {name} USING _batch k WHERE {name}.{column} >= ?::TIMESTAMP "
                f"AND {name}.workflow = k.workflow AND {name}.instance_key = k.instance_key",
                [t.since],
            )
            con.unregister("_batch")
    insert(con, "instances", t.instances)
    insert(con, "instance_history", t.history)


#: a finished instance last updated before the parameter (retention, eviction at start-up)
_QUIET = f"status IN ({', '.join(repr(s.value) for s in sorted(TERMINAL_STATUSES))}) AND updated_at < ?::TIMESTAMP"


def expired_instances(con: Any, cutoff: str, limit: int) -> list[InstanceId]:
    found = con.execute(
        f"SELECT workflow, instance_key FROM instances WHERE {_QUIET} LIMIT ?",
        [cutoff, limit],
    ).fetchall()
    return [(str(w), str(k)) for w, k in found]


def delete_history(con: Any, instances: list[InstanceId], cutoff: str) -> None:
    """Every row of these instances, in every public table (retention)."""
    con.register("_expired", rows.instance_keys_table(instances))
    for table, time_column in RETAINED_TABLES:
        window = f" AND {table}.{time_column} < ?::TIMESTAMP" if time_column else ""
        con.execute(
            f"DELETE FROM {table} USING _expired x WHERE {table}.workflow = x.workflow "
            f"AND {table}.instance_key = x.instance_key{window}",
            [cutoff] if time_column else [],
        )
    con.execute("DELETE FROM _trace_keys WHERE learned_at < ?::TIMESTAMP", [cutoff])
    con.unregister("_expired")


def load_instance(con: Any, model: CompiledModel, instance: InstanceId) -> list[Transition]:
    """One instance's transitions (an evicted instance coming back)."""
    return _transitions(con, model, "WHERE t.workflow = ? AND t.instance_key = ?", list(instance))


def _transitions(con: Any, model: CompiledModel, tail: str, params: list[str]) -> list[Transition]:
    """Stored transitions of the steps the model has: history of a step since removed from the
    model stays in the table, but the fold has no place for it. ``tail`` follows
    ``FROM transitions t`` (a WHERE or a join)."""
    known = {name: {s.name for s in wf.steps} for name, wf in model.workflows.items()}
    return [
        Transition(r[0], r[1], r[2], StepState(r[3]), r[4], r[5], r[6], r[7], r[8])
        for r in con.execute(
            "SELECT t.workflow, t.instance_key, step, state, epoch_ns(event_time), trace_id, span_id, service, source "
            f"FROM transitions t {tail}",
            params,
        ).fetchall()
        if r[2] in known.get(r[0], ())
    ]


@dataclass(frozen=True, slots=True)
class Restored:
    transitions: list[Transition]
    #: finished instances quiet since before the cutoff: kept as ids only (reloaded on demand)
    evicted: list[InstanceId]
    keys: list[LearnedKey]
    pending: list[PendingSpan]
    #: (status, number of history rows) as stored, per instance
    stored: dict[InstanceId, tuple[str, int]]


def load(con: Any, model: CompiledModel, quiet_before: str) -> Restored:
    """Everything the in-memory state is rebuilt from at start-up (and after a failed commit)."""
    evicted = [
        (str(w), str(k))
        for w, k in con.execute(
            f"SELECT workflow, instance_key FROM instances WHERE {_QUIET}", [quiet_before]
        ).fetchall()
    ]
    # an anti join against the quiet instances, not NOT EXISTS: DuckDB decorrelates that into a
    # join that first materialises every selected column of the whole table (10M transitions:
    # 2.8 GB at the peak instead of 0.96 GB, 3.5 s instead of 2.3 s; same rows)
    transitions = _transitions(
        con,
        model,
        f"ANTI JOIN (SELECT workflow, instance_key FROM instances WHERE {_QUIET}) q "
        "ON q.workflow = t.workflow AND q.instance_key = t.instance_key",
        [quiet_before],
    )
    keys = [
        LearnedKey(*r)
        for r in con.execute(
            "SELECT workflow, trace_id, instance_key FROM _trace_keys ORDER BY learned_at DESC LIMIT ?",
            [RESTORE_TRACE_KEYS],
        ).fetchall()
    ]
    pending = [
        PendingSpan(r[0], rows.span_from_payload(r[3]), r[2], r[1])
        for r in con.execute(
            "SELECT workflow, instance_key, arrived_ns, payload FROM _pending ORDER BY arrived_ns"
        ).fetchall()
    ]
    stored = {  # only of the instances loaded into memory: the quiet ones are ids, nothing more
        (r[0], r[1]): (str(r[2]), int(r[3]))
        for r in con.execute(
            "SELECT i.workflow, i.instance_key, i.status, count(h.status) "
            f"FROM (SELECT * FROM instances WHERE ({_QUIET}) IS NOT TRUE) i "
            "LEFT JOIN instance_history h USING (workflow, instance_key) GROUP BY ALL",
            [quiet_before],
        ).fetchall()
    }
    return Restored(transitions, evicted, keys, pending, stored)


def write_health(con: Any, findings: list[StepHealth], now_ns: int) -> None:
    """Replace ``model_health`` (a handful of rows; inside the caller's transaction)."""
    con.execute("DELETE FROM model_health")
    insert(con, "model_health", rows.health_table(findings, now_ns))


def load_health(con: Any) -> list[tuple[str, str, int, int | None]]:
    found = con.execute("SELECT workflow, step, matched, epoch_ns(last_matched_at) FROM model_health").fetchall()
    return [(str(w), str(s), int(m), None if t is None else int(t)) for w, s, m, t in found]
