"""The DuckDB store: one writer thread owns the connection; readers get their own cursors.

Receivers call :meth:`Store.submit` with decoded span records and wait on the returned future.
The writer takes everything queued (up to ``max_batch_spans``), runs the pure processor, folds
the touched instances, writes all tables through Arrow in **one transaction**, commits, and only
then resolves the futures: an acknowledged span is always in the database (group commit).

If a commit fails (disk full, I/O error), the transaction is rolled back, the in-memory state is
rebuilt from the database, and every waiting sender gets :class:`StoreUnavailable` — a retryable
error — so nothing acknowledged is lost and nothing unacknowledged is half-kept.

Every ``tick_interval`` the writer also expires key/start buffers and re-folds instances whose
deadline or grace timer fell due (e.g. ``running`` → ``stalled``).
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import duckdb

from analytics import rows
from analytics.observer import Observer
from analytics.schema import migrate
from analytics.telemetry import Telemetry
from processors.clock import Clock
from processors.correlate import LearnedKey, PendingSpan, Processor, StepResult
from processors.fold import InstanceState
from processors.matching import CompiledModel
from processors.state import InstanceId
from processors.types import TERMINAL_STATUSES, SpanRecord, StepState, Transition

log = logging.getLogger(__name__)

RESTORE_TRACE_KEYS = 200_000
RETENTION_CHUNK = 1_000
#: (table, event-time column that lets DuckDB skip recent row groups) for retention deletes
RETAINED_TABLES = (
    ("transitions", "event_time"),
    ("spans", "end_time"),
    ("instance_history", ""),
    ("anomalies", ""),
    ("instances", ""),
)

# DuckDB shares one database instance per file inside a process, so its file lock cannot stop a
# second Store here from becoming a second writer: this registry does.
_OPEN_PATHS: set[str] = set()
_OPEN_LOCK = threading.Lock()


class StoreError(Exception):
    """Base of the store's errors.

    StoreError
    ├── StoreUnavailable   retryable: the batch was not committed (answer UNAVAILABLE / 503)
    │   └── StoreClosed    the store is shutting down
    └── StoreOpenError     permanent: the database cannot be opened (locked, newer schema, …)
    """


class StoreUnavailable(StoreError):
    pass


class StoreClosed(StoreUnavailable):
    pass


class StoreOpenError(StoreError):
    pass


@dataclass(frozen=True, slots=True)
class CommitReceipt:
    spans: int
    transitions: int


class ObserverProtocol(Protocol):
    """Runs inside the writer's transaction after each batch and tick (see analytics.observer)."""

    def restore(self, con: Any) -> None: ...

    def forget(self, instance: InstanceId) -> None: ...

    def observe(self, con: Any, states: Sequence[InstanceState], now_ns: int) -> dict[InstanceId, int]:
        """Write anomaly changes; return open anomaly counts of the given instances."""
        ...


@dataclass(slots=True)
class _Request:
    records: Sequence[SpanRecord]
    future: Future[CommitReceipt]


_STOP = object()


class Store:
    def __init__(
        self,
        path: str | Path,
        model: CompiledModel,
        clock: Clock,
        telemetry: Telemetry | None = None,
        *,
        max_batch_spans: int = 50_000,
        tick_interval_s: float | None = 0.5,
        observer: ObserverProtocol | None = None,
        memory_limit: str | None = None,
        retention_ns: int | None = None,
    ) -> None:
        self.path = str(path)
        self.model = model
        self.clock = clock
        self.telemetry = telemetry or Telemetry()
        self.max_batch_spans = max_batch_spans
        self.tick_interval_s = tick_interval_s
        #: DuckDB's memory limit for the whole database (e.g. "2GB"): bounds user queries too
        self.memory_limit = memory_limit
        #: history of terminal instances older than this is deleted, RETENTION_CHUNK at a time
        self.retention_ns = retention_ns if retention_ns is not None else model.model.retention
        self.observer: ObserverProtocol = observer if observer is not None else Observer(model, self.telemetry)
        self._queue: queue.Queue[_Request | object] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._con: Any = None
        self._reader_parent: Any = None
        self._reader_lock = threading.Lock()
        self._closed = threading.Event()
        self._processor = Processor(model)
        self._timers: list[tuple[int, str, str]] = []
        self._last: dict[InstanceId, tuple[str, int]] = {}
        self._idle = threading.Condition()
        self._inflight = 0
        self._real_path = ""
        #: test seam for storage faults: called inside each transaction just before COMMIT; an
        #: exception it raises is handled exactly like a failing disk
        self.fault: Callable[[], None] | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def open(self) -> None:
        """Open (or create) the database, migrate, rebuild state, start the writer."""
        real = str(Path(self.path).resolve())
        with _OPEN_LOCK:
            if real in _OPEN_PATHS:
                raise StoreOpenError(
                    f"cannot open the database {self.path}: this process already serves it. "
                    "Is another coordstate serving it? Stop it, or pass another --db"
                )
            _OPEN_PATHS.add(real)
        self._real_path = real
        try:
            self._con = duckdb.connect(self.path)
        except duckdb.Error as exc:
            self._release_path()
            raise StoreOpenError(
                f"cannot open the database {self.path}: {exc}. Is another coordstate serving it? "
                "Stop it, or pass another --db"
            ) from exc
        try:
            migrate(self._con)
        except Exception as exc:
            self._con.close()
            self._con = None
            self._release_path()
            raise StoreOpenError(f"cannot prepare the database {self.path}: {exc}") from exc
        # user SQL runs on cursors of this database: no files, no network, no extensions, and
        # no way to change that back (see analytics/sandbox.py)
        if self.memory_limit:
            self._con.execute("SET memory_limit = ?", [self.memory_limit])
        self._con.execute("SET enable_external_access = false")
        self._con.execute("SET autoinstall_known_extensions = false")
        self._con.execute("SET autoload_known_extensions = false")
        self._con.execute("SET lock_configuration = true")
        self._reader_parent = self._con.cursor()
        self._restore()
        self._thread = threading.Thread(target=self._run, name="coordstate-writer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop intake, commit everything queued, stop the writer, close the database."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
        with self._reader_lock:
            if self._reader_parent is not None:
                self._reader_parent.close()
                self._reader_parent = None
        if self._con is not None:
            self._con.close()
            self._con = None
        self._release_path()

    def _release_path(self) -> None:
        with _OPEN_LOCK:
            _OPEN_PATHS.discard(getattr(self, "_real_path", ""))

    def __enter__(self) -> Store:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- API for receivers and readers --------------------------------------------------
    def submit(self, records: Sequence[SpanRecord]) -> Future[CommitReceipt]:
        """Queue records for the next group commit; the future resolves once committed."""
        future: Future[CommitReceipt] = Future()
        if self._closed.is_set():
            future.set_exception(StoreClosed("coordstate is shutting down; retry against the next instance"))
            return future
        with self._idle:
            self._inflight += 1
        self._queue.put(_Request(records, future))
        self.telemetry.set("queue_depth", self._queue.qsize())
        return future

    def cursor(self) -> Any:
        """A new DuckDB connection to the same database, for one reader thread."""
        with self._reader_lock:
            if self._reader_parent is None:
                raise StoreClosed("the store is closed")
            return self._reader_parent.cursor()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until everything submitted so far is committed (tests, replay)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._inflight == 0, timeout)

    def tick_now(self) -> None:
        """Ask the writer for a tick at the clock's current time, and wait for it."""
        done: Future[CommitReceipt] = Future()
        self._queue.put(("tick", done))
        done.result(timeout=60)

    @property
    def pending_count(self) -> int:
        return self._processor.pending_count

    # -- the writer thread ----------------------------------------------------------------
    def _run(self) -> None:
        last_tick = time.monotonic()
        interval = self.tick_interval_s
        stopping = False
        while True:
            try:
                item = self._queue.get(timeout=interval)
            except queue.Empty:
                item = None
            batch: list[_Request] = []
            ticks: list[Future[CommitReceipt]] = []
            spans = 0
            while item is not None:
                if item is _STOP:
                    stopping = True
                elif isinstance(item, tuple):
                    ticks.append(item[1])
                elif isinstance(item, _Request):
                    batch.append(item)
                    spans += len(item.records)
                if spans >= self.max_batch_spans:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
            if batch:
                self._commit(batch)
            if ticks or (interval is not None and time.monotonic() - last_tick >= interval):
                self._tick()
                last_tick = time.monotonic()
                for t in ticks:
                    t.set_result(CommitReceipt(0, 0))
            self.telemetry.set("queue_depth", self._queue.qsize())
            if stopping and self._queue.empty():
                return

    def _commit(self, batch: list[_Request]) -> None:
        now = self.clock.now_ns()
        started = time.perf_counter()
        result = StepResult()
        try:
            for req in batch:
                result.merge(self._processor.process(req.records, now))
        except Exception:  # a bug must cost one batch (retryable), never the writer thread
            log.exception("processing a batch failed; rebuilding state from the database")
            self.telemetry.add("commit_failures")
            self._rollback_and_rebuild(in_transaction=False)
            ok = False
        else:
            ok = self._persist(result, set(), now)
        elapsed = time.perf_counter() - started
        nspans = sum(len(r.records) for r in batch)
        for req in batch:
            if ok:
                req.future.set_result(CommitReceipt(len(req.records), len(result.transitions)))
            else:
                req.future.set_exception(StoreUnavailable("the database could not commit this batch; retry"))
        if ok:
            self.telemetry.add("spans_committed", nspans)
            self.telemetry.add("transitions_written", len(result.transitions))
            self.telemetry.add("commits")
            self.telemetry.add_dropped(result.dropped)  # type: ignore[arg-type]
        self.telemetry.set("commit_latency_seconds", elapsed)
        self.telemetry.set("pending_spans", self._processor.pending_count)
        with self._idle:
            self._inflight -= len(batch)
            self._idle.notify_all()

    def _tick(self) -> None:
        try:
            self._tick_once()
        except Exception:  # never let a tick kill the writer
            log.exception("a tick failed; rebuilding state from the database")
            self.telemetry.add("commit_failures")
            self._rollback_and_rebuild(in_transaction=False)

    def _tick_once(self) -> None:
        now = self.clock.now_ns()
        if self.retention_ns is not None:
            self._retain(now)
        result = self._processor.tick(now)
        due: set[InstanceId] = set()
        while self._timers and self._timers[0][0] <= now:
            _, wf, key = heapq.heappop(self._timers)
            due.add((wf, key))
        changed = bool(result.transitions or result.spans or result.pending_removed or due)
        if changed and self._persist(result, due, now):
            self.telemetry.add_dropped(result.dropped)  # type: ignore[arg-type]
            self.telemetry.add("transitions_written", len(result.transitions))

    # -- persistence --------------------------------------------------------------------
    def _persist(self, result: StepResult, due: set[InstanceId], now: int) -> bool:
        table = self._processor.table
        states = [table.state(i, now) for i in sorted(result.touched)]
        for inst in sorted(due - result.touched):
            if inst in table:  # a deadline or grace timer fell due: status or anomalies may change
                states.append(table.state(inst, now))
        delete, insert = self._processor.pending_delta(result)
        con = self._con
        try:
            con.execute("BEGIN")
            self._insert("transitions", rows.transitions_table(result.transitions, now))
            self._insert("spans", rows.spans_table(result.spans, now))
            self._insert("_trace_keys", rows.trace_keys_table(result.learned_keys, now))
            if delete:
                con.register("_batch_pending_del", rows.pending_idents_table(delete))
                con.execute(
                    "DELETE FROM _pending USING _batch_pending_del d WHERE _pending.workflow = d.workflow "
                    "AND _pending.trace_id = d.trace_id AND _pending.span_id = d.span_id"
                )
                con.unregister("_batch_pending_del")
            self._insert("_pending", rows.pending_table(insert))
            open_counts = self.observer.observe(con, states, now) if self.observer and states else {}
            self._write_instances(states, open_counts)
            if self.fault is not None:
                self.fault()
            con.execute("COMMIT")
        except Exception as exc:  # disk full, I/O error, an injected fault, a bug: retryable for senders
            log.error("commit failed, rolling back and rebuilding state from the database: %s", exc)
            self.telemetry.add("commit_failures")
            self._rollback_and_rebuild()
            return False
        for state in states:
            inst = (state.workflow, state.key)
            self._last[inst] = (state.status.value, len(state.history))
            self._schedule(state, now)
        return True

    def _insert(self, name: str, table: Any) -> None:
        if table.num_rows:
            self._con.register("_batch", table)
            self._con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM _batch")
            self._con.unregister("_batch")

    def _write_instances(self, states: list[InstanceState], open_counts: dict[InstanceId, int]) -> None:
        if not states:
            return
        con = self._con
        con.register("_batch_keys", rows.instance_keys_table((s.workflow, s.key) for s in states))
        for name in ("instances", "instance_history"):
            con.execute(
                f"DELETE FROM {name} USING _batch_keys k "
                f"WHERE {name}.workflow = k.workflow AND {name}.instance_key = k.instance_key"
            )
        con.unregister("_batch_keys")
        self._insert("instances", rows.instances_table(states, open_counts))
        self._insert("instance_history", rows.history_table(states))

    def _schedule(self, state: InstanceState, now: int) -> None:
        if state.status in TERMINAL_STATUSES and state.first_failure_ns is None:
            return
        wf = self.model.workflows[state.workflow]
        due = [state.started_at_ns + wf.deadline]
        if state.first_failure_ns is not None:
            due.append(state.first_failure_ns + wf.grace)
        for step in wf.steps:
            if step.deadline is not None and state.steps[step.name].state is not StepState.COMPLETED:
                due.append(state.started_at_ns + step.deadline)
        due.extend(v.at.time_ns + wf.grace for v in state.violations if v.requirement_ns is None)
        for t in due:
            if t > now:
                heapq.heappush(self._timers, (t, state.workflow, state.key))

    # -- retention ----------------------------------------------------------------------------
    def _retain(self, now: int) -> None:
        """Delete one bounded chunk of expired terminal instances (one short transaction per tick)."""
        assert self.retention_ns is not None
        cutoff = rows.timestamp_literal(now - self.retention_ns)
        con = self._con
        expired = con.execute(
            "SELECT workflow, instance_key FROM instances "
            "WHERE status IN ('converged', 'compensated', 'diverged') AND updated_at < ?::TIMESTAMP LIMIT ?",
            [cutoff, RETENTION_CHUNK],
        ).fetchall()
        if not expired:
            return
        started = time.perf_counter()
        try:
            con.execute("BEGIN")
            con.register("_expired", rows.instance_keys_table((str(w), str(k)) for w, k in expired))
            for table, time_column in RETAINED_TABLES:
                window = f" AND {table}.{time_column} < ?::TIMESTAMP" if time_column else ""
                con.execute(
                    f"DELETE FROM {table} USING _expired x WHERE {table}.workflow = x.workflow "
                    f"AND {table}.instance_key = x.instance_key{window}",
                    [cutoff] if time_column else [],
                )
            con.execute("DELETE FROM _trace_keys WHERE learned_at < ?::TIMESTAMP", [cutoff])
            con.unregister("_expired")
            con.execute("COMMIT")
        except Exception as exc:
            log.error("retention failed, will retry on the next tick: %s", exc)
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")
            return
        for w, k in expired:
            inst = (str(w), str(k))
            self._processor.table.forget(inst)
            self._last.pop(inst, None)
            self.observer.forget(inst)
        self.telemetry.add("instances_expired", len(expired))
        self.telemetry.set("retention_chunk_seconds", time.perf_counter() - started)

    # -- restart and recovery ---------------------------------------------------------------
    def _rollback_and_rebuild(self, *, in_transaction: bool = True) -> None:
        if in_transaction:
            with contextlib.suppress(duckdb.Error):
                self._con.execute("ROLLBACK")
        self._processor = Processor(self.model)
        self._timers.clear()
        self._last.clear()
        try:
            self._restore()
        except Exception as exc:  # the database itself is unreadable: keep serving (retryable) errors
            log.error("cannot rebuild state from the database: %s", exc)

    def _restore(self) -> None:
        con = self._con
        cur = con.execute(
            "SELECT workflow, instance_key, step, state, epoch_ns(event_time), trace_id, span_id, service, source "
            "FROM transitions"
        )
        known = self.model.workflows
        transitions = [
            Transition(r[0], r[1], r[2], StepState(r[3]), r[4], r[5], r[6], r[7], r[8])
            for r in cur.fetchall()
            if r[0] in known and r[2] in {s.name for s in known[r[0]].steps}
        ]
        table = self._processor.table
        table.restore(transitions)
        keys = [
            LearnedKey(*r)
            for r in con.execute(
                "SELECT workflow, trace_id, instance_key FROM _trace_keys ORDER BY learned_at LIMIT ?",
                [RESTORE_TRACE_KEYS],
            ).fetchall()
        ]
        pending = [
            PendingSpan(r[0], rows.span_from_payload(r[3]), r[2], r[1])
            for r in con.execute(
                "SELECT workflow, instance_key, arrived_ns, payload FROM _pending ORDER BY arrived_ns"
            ).fetchall()
        ]
        self._processor.restore(keys, pending)
        now = self.clock.now_ns()
        self.observer.restore(con)
        stored = {
            (r[0], r[1]): (str(r[2]), int(r[3]))
            for r in con.execute(
                "SELECT i.workflow, i.instance_key, i.status, count(h.status) FROM instances i "
                "LEFT JOIN instance_history h USING (workflow, instance_key) GROUP BY ALL"
            ).fetchall()
        }
        for inst in table:
            state = table.state(inst, now)
            self._last[inst] = stored.get(inst, ("", 0))
            self._schedule(state, now)
            if self._last[inst] != (state.status.value, len(state.history)):
                heapq.heappush(self._timers, (now, state.workflow, state.key))
        self.telemetry.set("instances_restored", len(table))
        self.telemetry.set("pending_spans", self._processor.pending_count)
