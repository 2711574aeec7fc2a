"""What the store writes and reads, as functions of a DuckDB connection (no threads, no state).

The store's writer thread calls these inside its transactions; each function is one step of the
SQL contract (``analytics/write/schema.py``), fed through Arrow.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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


#: what follows a failed upkeep transaction (in_transaction), unless the caller says otherwise
NEXT_TICK = "will retry on the next tick"


def in_transaction(con: Any, what: str, work: Callable[[], object], then: str = NEXT_TICK) -> bool:
    """Run ``work`` in its own transaction; on an error roll back, log it with what happens
    ``then``, and return False (the upkeep that calls this — retention, model health — retries on
    the next tick)."""
    try:
        con.execute("BEGIN")
        work()
        con.execute("COMMIT")
    except Exception as exc:
        log.error("%s failed, %s: %s", what, then, exc)
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
    status_counts: Any


def tables(
    result: StepResult,
    delete: set[tuple[str, str, str]],
    buffered: list[PendingSpan],
    states: list[InstanceState],
    open_counts: dict[InstanceId, int],
    next_due: dict[InstanceId, int | None],
    status_delta: dict[tuple[str, str], int],
    now: int,
    learned: Sequence[LearnedKey] | None = None,
) -> Tables:
    """The history a processing step adds, the buffers it changed and the instances it re-folded.
    ``learned``: the trace keys to write (default: the step's own)."""
    # rows to replace: only instances stored before (new ones have none — skip two table scans)
    stored = [s for s in states if (s.workflow, s.key) not in result.created]
    return Tables(
        transitions=rows.transitions_table(result.transitions, now),
        spans=rows.spans_table(result.spans, now),
        trace_keys=rows.trace_keys_table(result.learned_keys if learned is None else learned, now),
        pending_delete=rows.pending_idents_table(delete) if delete else None,
        pending=rows.pending_table(buffered),
        instance_keys=rows.instance_keys_table((s.workflow, s.key) for s in stored) if stored else None,
        since=rows.timestamp_literal(min(s.started_at_ns for s in stored)) if stored else "",
        instances=rows.instances_table(states, open_counts, next_due),
        history=rows.history_table(states),
        status_counts=rows.status_counts_table(status_delta),
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
    insert(con, "_status_counts", t.status_counts)


def recount_statuses(con: Any) -> None:
    """``_status_counts`` anew from the instance rows (inside the caller's transaction): a lake
    store writes its deltas at most every SIDE_ROWS_EVERY_S, and a crash loses the last ones."""
    con.execute("DELETE FROM _status_counts")
    con.execute("INSERT INTO _status_counts SELECT workflow, status, count(*) FROM instances GROUP BY ALL")


def split_learned(model: CompiledModel, result: StepResult) -> tuple[list[LearnedKey], list[LearnedKey]]:
    """The step's learned trace keys as (kept by its ``spans`` rows, only in ``_trace_keys``).

    A key is kept by the spans rows when the step stores a span of that trace whose
    ``attributes`` give that key and no other (``recover_keys`` reads it back at a restart):
    such a key may reach ``_trace_keys`` later; any other must go in with this commit."""
    if not result.learned_keys:
        return [], []
    traces = {k.trace_id for k in result.learned_keys}
    given: dict[tuple[str, str], set[str]] = {}
    for m in result.spans:
        if m.span.trace_id in traces:
            attributes = rows.stored_attributes(m.span)
            for wf in model.workflows.values():
                key = model.stored_key_of(wf, attributes)
                if key is not None:
                    given.setdefault((wf.name, m.span.trace_id), set()).add(key)
    kept: list[LearnedKey] = []
    only: list[LearnedKey] = []
    for k in result.learned_keys:
        (kept if given.get((k.workflow, k.trace_id)) == {k.instance_key} else only).append(k)
    return kept, only


def recover_keys(con: Any, model: CompiledModel, known: set[tuple[str, str]], limit: int) -> list[LearnedKey]:
    """Trace keys learned after the newest row of ``_trace_keys``, from the spans rows stored
    since (see ``split_learned``), newest first; the first key of a trace wins, as when it was
    learned, and a trace in ``known`` keeps its key."""
    names = sorted({name for wf in model.workflows.values() for name in wf.key.attributes})
    if not names:
        return []
    found = con.execute(
        "SELECT trace_id, attributes FROM (SELECT trace_id, attributes, observed_at FROM spans "
        "WHERE observed_at >= coalesce((SELECT max(learned_at) FROM _trace_keys), '-infinity'::TIMESTAMP) "
        "AND list_has_any(map_keys(attributes), ?) ORDER BY observed_at DESC LIMIT ?) ORDER BY observed_at",
        [names, limit],
    ).fetchall()
    out: list[LearnedKey] = []
    seen = set(known)
    for trace_id, attributes in found:
        for wf in model.workflows.values():
            key = model.stored_key_of(wf, attributes)
            if key is not None and (wf.name, trace_id) not in seen:
                seen.add((wf.name, trace_id))
                out.append(LearnedKey(wf.name, str(trace_id), key))
    out.reverse()
    return out


def status_counts_rows(con: Any) -> int:
    return int(con.execute("SELECT count(*) FROM _status_counts").fetchone()[0])


def sum_status_counts(con: Any) -> None:
    """One row per workflow and status instead of every delta (inside the caller's transaction)."""
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _summed AS SELECT workflow, status, sum(instances)::BIGINT AS instances "
        "FROM _status_counts GROUP BY ALL HAVING sum(instances) <> 0"
    )
    con.execute("DELETE FROM _status_counts")
    con.execute("INSERT INTO _status_counts SELECT * FROM _summed")
    con.execute("DROP TABLE _summed")


def stored_statuses(con: Any, instances: Sequence[InstanceId]) -> dict[InstanceId, str]:
    con.register("_wanted", rows.instance_keys_table(instances))
    try:
        found = con.execute(
            "SELECT workflow, instance_key, status FROM instances SEMI JOIN _wanted USING (workflow, instance_key)"
        ).fetchall()
    finally:
        con.unregister("_wanted")
    return {(str(w), str(k)): str(s) for w, k, s in found}


#: a finished instance last updated before the parameter (retention, eviction at start-up)
_QUIET = f"status IN ({', '.join(repr(s.value) for s in sorted(TERMINAL_STATUSES))}) AND updated_at < ?::TIMESTAMP"


def expired_instances(con: Any, cutoff: str, limit: int) -> dict[InstanceId, str]:
    """Finished instances quiet since before ``cutoff``, with their status."""
    found = con.execute(
        f"SELECT workflow, instance_key, status FROM instances WHERE {_QUIET} LIMIT ?",
        [cutoff, limit],
    ).fetchall()
    return {(str(w), str(k)): str(s) for w, k, s in found}


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


def load_instances(
    con: Any, model: CompiledModel, instances: Sequence[InstanceId]
) -> dict[InstanceId, list[Transition]]:
    """These instances' transitions, in one read (instances coming back into memory)."""
    if len(instances) == 1:
        found = _transitions(con, model, "WHERE t.workflow = ? AND t.instance_key = ?", list(instances[0]))
    else:
        con.register("_wanted", rows.instance_keys_table(instances))
        try:
            found = _transitions(con, model, "SEMI JOIN _wanted k USING (workflow, instance_key)", [])
        finally:
            con.unregister("_wanted")
    out: dict[InstanceId, list[Transition]] = {}
    for tr in found:
        out.setdefault((tr.workflow, tr.instance_key), []).append(tr)
    return out


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


#: the 64-bit id hash processors.state.StoredIds keeps (DuckDB's own: fast, and the same for
#: the stored ids and the ids asked about, which this process hashes with the same library)
ID_HASH = "hash(workflow, instance_key)"


def stored_hashes(con: Any, where: str, params: list[str]) -> np.ndarray:
    found = con.execute(f"SELECT {ID_HASH} AS h FROM instances {where}", params).fetchnumpy()
    return np.asarray(found["h"], dtype=np.uint64)


def hash_ids(con: Any, instances: Sequence[InstanceId]) -> np.ndarray:
    con.register("_ids", rows.instance_keys_table(instances, keep_order=True))
    try:
        found = con.execute(f"SELECT {ID_HASH} AS h FROM _ids").fetchnumpy()
    finally:
        con.unregister("_ids")
    return np.asarray(found["h"], dtype=np.uint64)


@dataclass(frozen=True, slots=True)
class Restored:
    #: transitions of the instances rebuilt in memory (none when the stored rows are trusted)
    transitions: list[Transition]
    #: id hashes of the stored instances not among them (processors.state.StoredIds)
    stored_hashes: np.ndarray
    keys: list[LearnedKey]
    pending: list[PendingSpan]
    #: (status, number of history rows, next due in µs or None) as stored, per instance in memory
    stored: dict[InstanceId, tuple[str, int, int | None]]
    #: (workflow, key, next due ns) of every stored instance with a time still to be judged
    due: list[tuple[str, str, int]]
    #: those of ``keys`` read back from ``spans``, not yet in ``_trace_keys`` (``recover``)
    recovered: list[LearnedKey] = field(default_factory=list)


def load(con: Any, model: CompiledModel, quiet_before: str, *, trusted: bool, recover: bool = False) -> Restored:
    """Everything the in-memory state is rebuilt from at start-up (and after a failed commit).

    ``trusted``: the stored instance rows were folded by this model and this fold (the
    ``_folded`` fingerprint matches) — nothing is folded again: every instance stays in the
    database until a transition arrives for it or its ``next_due_at`` falls. Otherwise every
    instance not finished and quiet is read back and folded anew (an upgrade, a changed model).
    ``recover``: trace keys not yet in ``_trace_keys`` are read back from ``spans`` (a lake store
    writes the keys its spans rows keep at most every SIDE_ROWS_EVERY_S).
    """
    keys = [
        LearnedKey(*r)
        for r in con.execute(
            "SELECT workflow, trace_id, instance_key FROM _trace_keys ORDER BY learned_at DESC LIMIT ?",
            [RESTORE_TRACE_KEYS],
        ).fetchall()
    ]
    recovered = (
        recover_keys(con, model, {(k.workflow, k.trace_id) for k in keys}, RESTORE_TRACE_KEYS) if recover else []
    )
    keys = recovered + keys
    pending = [
        PendingSpan(r[0], rows.span_from_payload(r[3]), r[2], r[1])
        for r in con.execute(
            "SELECT workflow, instance_key, arrived_ns, payload FROM _pending ORDER BY arrived_ns"
        ).fetchall()
    ]
    if trusted:
        due = [
            (str(w), str(k), int(t))
            for w, k, t in con.execute(
                "SELECT workflow, instance_key, epoch_ns(next_due_at) FROM instances WHERE next_due_at IS NOT NULL"
            ).fetchall()
        ]
        return Restored([], stored_hashes(con, "", []), keys, pending, {}, due, recovered)
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
    stored = {  # only of the instances loaded into memory: the quiet ones are hashes, nothing more
        (r[0], r[1]): (str(r[2]), int(r[3]), None if r[4] is None else int(r[4]))
        for r in con.execute(
            "SELECT i.workflow, i.instance_key, i.status, count(h.status), epoch_us(any_value(i.next_due_at)) "
            f"FROM (SELECT * FROM instances WHERE ({_QUIET}) IS NOT TRUE) i "
            "LEFT JOIN instance_history h USING (workflow, instance_key) GROUP BY i.workflow, i.instance_key, i.status",
            [quiet_before],
        ).fetchall()
    }
    hashes = stored_hashes(con, f"WHERE {_QUIET}", [quiet_before])
    return Restored(transitions, hashes, keys, pending, stored, [], recovered)


def folded_by(con: Any) -> str:
    """The fingerprint of the model and fold that wrote every stored instance row ('' if unknown)."""
    found = con.execute("SELECT fingerprint FROM _folded ORDER BY written_at DESC LIMIT 1").fetchall()
    return str(found[0][0]) if found else ""


def write_folded(con: Any, fingerprint: str, now_ns: int) -> None:
    """Every stored instance row is now this fold's (inside the caller's transaction)."""
    con.execute("DELETE FROM _folded")
    con.execute("INSERT INTO _folded VALUES (?, ?::TIMESTAMP)", [fingerprint, rows.timestamp_literal(now_ns)])


def write_health(con: Any, findings: list[StepHealth], now_ns: int) -> None:
    """Replace ``model_health`` (a handful of rows; inside the caller's transaction)."""
    con.execute("DELETE FROM model_health")
    insert(con, "model_health", rows.health_table(findings, now_ns))


def load_health(con: Any) -> list[tuple[str, str, int, int | None]]:
    found = con.execute("SELECT workflow, step, matched, epoch_ns(last_matched_at) FROM model_health").fetchall()
    return [(str(w), str(s), int(m), None if t is None else int(t)) for w, s, m, t in found]
