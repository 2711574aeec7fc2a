"""The DuckDB store: one writer thread owns the connection; readers get their own cursors.

(Over 400 lines on purpose: the writer is one state machine — lifecycle, group commit, ticks,
recovery — over one connection and one in-memory state; what is stateless lives in persist.py,
rows.py and messages.py, what is pure in processors/.)

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

import collections
import contextlib
import hashlib
import heapq
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from analytics.common import lake
from analytics.common.telemetry import Telemetry
from analytics.write import persist, rows, shards
from analytics.write.connection import CHECKPOINT_THRESHOLD, connect
from analytics.write.messages import (
    FATAL_ERRORS,
    CommitReceipt,
    Message,
    ObserverProtocol,
    Record,
    Request,
    Stop,
    StoreClosed,
    StoreError,
    StoreOpenError,
    StoreUnavailable,
    Tick,
)
from analytics.write.observer import Changes, Observer
from analytics.write.schema import migrate
from processors.clock import Clock
from processors.correlate import KeyRouter, LearnedKey, Processor, Routed, StepResult
from processors.fold import FOLD_VERSION, InstanceState
from processors.health import DEFAULT_THRESHOLD, ModelHealth
from processors.matching import CompiledModel
from processors.rules import due_times
from processors.state import InstanceId, InstanceTable
from processors.types import TERMINAL_STATUSES, SpanRecord, Transition

__all__ = ["CommitReceipt", "Store", "StoreClosed", "StoreError", "StoreOpenError", "StoreUnavailable"]

log = logging.getLogger(__name__)

RETENTION_CHUNK = 1_000
#: model_health is rewritten when a drift verdict changes, else its counts at most this often
HEALTH_REFRESH_NS = 10 * 1_000_000_000
#: due instances (a deadline or grace timer) re-folded per periodic tick. After a restart every
#: instance whose status changed while the server was down is due at once (229k on a database of
#: 40M transitions: the first tick took ~30 s and every export waited for it); in chunks, commits
#: go on between them
DUE_CHUNK = 2_000
#: a finished instance quiet this long leaves memory (reloaded if a late span arrives)
EVICT_AFTER_NS = 10 * 60 * 1_000_000_000
#: ``_status_counts`` rows summed into one per workflow and status past this many
SUM_COUNTS_AFTER = 2_000
#: a lake store writes its status count deltas, and the trace keys its ``spans`` rows keep
#: (persist.split_learned), at most this often instead of with every commit: each table a
#: DuckLake commit touches costs it a Parquet file and the catalog's statistics (~8 ms of ~60 at
#: 16k spans/s). A crash loses nothing: a start-up counts the statuses anew from the instance
#: rows and reads the keys back from the spans rows (persist.recount_statuses, recover_keys)
SIDE_ROWS_EVERY_S = 2.0
#: beyond this many instances in memory, finished ones leave sooner, the longest-finished first
#: (~2 KB each: at 70k spans/s, ten quiet minutes would be ~2M instances)
MAX_LOADED_INSTANCES = 200_000
TERMINAL_VALUES = frozenset(s.value for s in TERMINAL_STATUSES)
#: tables appended to through :meth:`Store.record` (nothing else writes them)
RECORD_TABLES = ("alert_deliveries", "action_deliveries")

#: what a reader hears while a lake store connects anew after a fatal error (Store.invalidated)
REOPENING = "the database is being reopened after a fatal error; retry"

# DuckDB shares one database instance per file inside a process, so its file lock cannot stop a
# second Store here from becoming a second writer: this registry does.
_OPEN_PATHS: set[str] = set()
_OPEN_LOCK = threading.Lock()


def fold_fingerprint(model: CompiledModel) -> str:
    """Names the model and the fold that wrote an instance row (``_folded``)."""
    text = f"{FOLD_VERSION}|{model.model.model_dump_json()}"
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


@dataclass(slots=True)
class SideRows:
    """What a lake store committed but has not yet written to ``_status_counts`` and ``_trace_keys``."""

    counts: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    keys: list[LearnedKey] = field(default_factory=list)
    #: when the oldest of them was committed (time.monotonic()); None: nothing waits
    since: float | None = None

    def due(self, every_s: float) -> bool:
        return self.since is not None and time.monotonic() - self.since >= every_s


class Store:
    def __init__(
        self,
        path: str | Path,
        model: CompiledModel,
        clock: Clock,
        telemetry: Telemetry | None = None,
        *,
        max_batch_spans: int = 50_000,
        max_loaded_instances: int = MAX_LOADED_INSTANCES,
        tick_interval_s: float | None = 0.5,
        observer: ObserverProtocol | None = None,
        memory_limit: str | None = None,
        retention_ns: int | None = None,
        drift_threshold: int = DEFAULT_THRESHOLD,
        lake_at: lake.Lake | None = None,
        schema: str | None = None,
        handoff: shards.Handoff | None = None,
    ) -> None:
        #: lake mode: the tables live in this DuckLake (``path`` is then only a name for messages)
        self.lake = lake_at
        #: lake mode with roles: this store's own schema in the lake (a partition's, or an ingest
        #: node's buffer); None: the lake's main schema
        self.schema = schema
        #: an ingest node: spans whose key is settled go to the lake's hand-off, not to a fold
        self.handoff = handoff
        self.path = str(path) if lake_at is None else lake_at.describe() + (f" schema {schema}" if schema else "")
        self.model = model
        self.clock = clock
        self.telemetry = telemetry or Telemetry()
        self.max_batch_spans = max_batch_spans
        self.max_loaded_instances = max_loaded_instances
        self.tick_interval_s = tick_interval_s
        #: DuckDB's memory limit for the whole database (e.g. "2GB"): bounds user queries too
        self.memory_limit = memory_limit
        #: history of terminal instances older than this is deleted, RETENTION_CHUNK at a time
        self.retention_ns = retention_ns if retention_ns is not None else model.model.retention
        self.observer: ObserverProtocol = observer if observer is not None else Observer(model, self.telemetry)
        self._queue: queue.Queue[Message] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._con: Any = None
        #: an in-memory DuckDB for id hashes: the same hash() as the stored ones, without a
        #: statement on the database (in a lake, each one starts a catalog transaction)
        self._hash_con: Any = None
        self._reader_parent: Any = None
        self._catalog = ""
        self._schema = "main"
        self._reader_lock = threading.Lock()
        self._closed = threading.Event()
        self._processor = self._new_processor()
        self.drift_threshold = drift_threshold
        self.health = ModelHealth(model.workflows, drift_threshold)
        self._health_written: list[tuple[str, str, int, bool]] = []
        self._health_written_at = 0
        self._quiet: collections.deque[tuple[int, InstanceId]] = collections.deque()
        self._timers: list[tuple[int, str, str]] = []
        self._last: dict[InstanceId, tuple[str, int]] = {}
        #: ``_folded``: the stored instance rows were written by this model and fold
        self.fingerprint = fold_fingerprint(model)
        #: instances a start-up fold found different from their stored row, not yet rewritten;
        #: the fingerprint is written once none is left
        self._unsettled: set[InstanceId] = set()
        self._settling = False
        #: rows in ``_status_counts`` (summed past SUM_COUNTS_AFTER)
        self._count_rows = 0
        #: a lake store's status deltas and trace keys not written yet (SIDE_ROWS_EVERY_S)
        self._side = SideRows()
        self._real_path = ""
        #: the in-memory state could not be rebuilt from the database: refuse work until it can
        self._stale = False
        #: a fatal error invalidated the database instance: the next rebuild reconnects (a lake)
        self._invalid = False
        #: called by the writer after each commit that opened or resolved anomalies (the alert
        #: dispatcher's inbox): must return at once and never raise
        self.listeners: list[Callable[[Changes], None]] = []
        #: called by the writer after each commit with the clock's time (the server's garbage
        #: collection policy, collector/service.py GcFreezer); must not raise
        self.after_commit: Callable[[int], None] | None = None
        #: test seam for storage faults: called inside each transaction just before COMMIT; an
        #: exception it raises is handled exactly like a failing disk
        self.fault: Callable[[], None] | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def open(self) -> None:
        """Open (or create) the database, migrate, rebuild state, start the writer."""
        real = f"lake {self.lake.catalog} {self.schema}" if self.lake is not None else str(Path(self.path).resolve())
        with _OPEN_LOCK:
            if real in _OPEN_PATHS:
                raise StoreOpenError(
                    f"cannot open the database {self.path}: this process already serves it. "
                    "Is another coordstate serving it? Stop it, or pass another --db"
                )
            _OPEN_PATHS.add(real)
        self._real_path = real
        problem = self._file_problem() if self.lake is None else ""
        if problem:
            self._release_path()
            raise StoreOpenError(f"cannot open the database {self.path}: {problem}")
        try:
            self._con = connect(self.path) if self.lake is None else lake.connect(self.lake)
        except lake.LakeError as exc:
            self._release_path()
            raise StoreOpenError(str(exc)) from exc
        except duckdb.Error as exc:
            self._release_path()
            held = "lock" in str(exc).lower()
            raise StoreOpenError(
                f"cannot open the database {self.path}: {exc}"
                + (". Is another coordstate serving it? Stop it, or pass another --db" if held else "")
            ) from exc
        try:
            self._prepare_connection()
        except Exception as exc:
            self._con.close()
            self._con = None
            self._release_path()
            raise StoreOpenError(f"cannot prepare the database {self.path}: {exc}") from exc
        self._restore()
        self._thread = threading.Thread(target=self._run, name="coordstate-writer", daemon=True)
        self._thread.start()

    def _prepare_connection(self) -> None:
        """Schema, migrations and settings of a new connection, and the parent of readers' cursors."""
        if self.schema is not None:
            self._con.execute(f"CREATE SCHEMA IF NOT EXISTS {lake.ALIAS}.{self.schema}")
            self._con.execute(f"USE {lake.ALIAS}.{self.schema}")
        migrate(self._con)
        # user SQL runs on cursors of this database: no files, no network, no extensions, and
        # no way to change that back (see analytics/read/sandbox.py)
        if self.memory_limit:
            self._con.execute("SET memory_limit = ?", [self.memory_limit])
        self._con.execute("SET enable_external_access = false")
        self._con.execute("SET autoinstall_known_extensions = false")
        self._con.execute("SET autoload_known_extensions = false")
        if self.lake is None:  # a lake commits files, not a WAL
            self._con.execute(f"SET checkpoint_threshold = '{CHECKPOINT_THRESHOLD}'")
        self._con.execute("SET lock_configuration = true")
        self._catalog = self._con.execute("SELECT current_database()").fetchone()[0]
        self._schema = self._con.execute("SELECT current_schema()").fetchone()[0]
        with self._reader_lock:
            self._reader_parent = self._con.cursor()

    def invalidated(self) -> None:
        """A reader met a fatal DuckDB error: the database instance is unusable from now on (a
        DuckLake scan failed inside while the catalog went away, seen once in a test of a
        PostgreSQL restart). A lake store opens a new connection with its next rebuild, which
        this asks for; until then senders and readers are told to retry."""
        if self.lake is None or self._closed.is_set():
            return
        self._invalid = True
        self._stale = True
        self.request_tick()  # wakes the writer, which rebuilds before anything else

    def _reconnect(self) -> None:
        """A new connection to the lake in place of an invalidated one (the writer's thread)."""
        assert self.lake is not None
        log.warning("the database was invalidated by a fatal error; connecting to the lake anew")
        with self._reader_lock:
            old, self._reader_parent = self._reader_parent, None
        for con in (old, self._con):
            with contextlib.suppress(Exception):
                con.close()
        self._con = lake.connect(self.lake)
        self._prepare_connection()
        self._invalid = False
        self.telemetry.add("reconnects")

    def _file_problem(self) -> str:
        where = Path(self.path)
        if where.is_dir():
            return f"it is a directory; pass a file, e.g. --db {where / 'coordstate.duckdb'}"
        if not where.parent.is_dir():
            return f"the directory {where.parent} does not exist; create it, or pass another --db"
        return ""

    def close(self) -> None:
        """Stop intake, commit everything queued, stop the writer, close the database."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._thread is not None:
            self._queue.put(Stop())
            self._thread.join()
        with self._reader_lock:
            if self._reader_parent is not None:
                self._reader_parent.close()
                self._reader_parent = None
        if self._con is not None:
            self._con.close()
            self._con = None
        if self._hash_con is not None:
            self._hash_con.close()
            self._hash_con = None
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
    def submit(self, records: Sequence[SpanRecord], event_ns: int = 0) -> Future[CommitReceipt]:
        """Queue records for the next group commit; the future resolves once committed.
        ``event_ns``: the request's latest event time, which the clock observes right after the
        commit (so a tick at the new watermark always sees the batch that moved it)."""
        future: Future[CommitReceipt] = Future()
        if self._closed.is_set():
            future.set_exception(StoreClosed("coordstate is shutting down; retry against the next instance"))
            return future
        self._queue.put(Request(records, future, event_ns))
        self.telemetry.set("queue_depth", self._queue.qsize())
        return future

    def cursor(self, schema: str | None = None) -> Any:
        """A new DuckDB connection to the same database, for one reader thread; in this store's
        schema, or in ``schema`` (``main``: the whole lake's public views, on a node with roles)."""
        with self._reader_lock:
            if self._reader_parent is None:
                if self._invalid:
                    raise StoreUnavailable(REOPENING)
                raise StoreClosed("the store is closed")
            cur = self._reader_parent.cursor()
        try:  # a cursor starts in DuckDB's memory catalog
            cur.execute(f'USE "{self._catalog}"."{schema or self._schema}"')
        except FATAL_ERRORS as exc:
            cur.close()
            if self.lake is None:  # one file: only a restart opens it again
                raise
            self.invalidated()
            raise StoreUnavailable(f"{REOPENING} ({exc})") from exc
        return cur

    def submit_routed(self, items: Sequence[Routed], event_ns: int, position: int) -> Future[CommitReceipt]:
        """A fold node's input: spans an ingest node keyed, followed up to snapshot ``position``
        of the hand-off (recorded in the same transaction)."""
        future: Future[CommitReceipt] = Future()
        if self._closed.is_set():
            future.set_exception(StoreClosed("the store is closed"))
            return future
        self._queue.put(Request((), future, event_ns, items, position))
        return future

    def tick_now(self, limit: int | None = None) -> None:
        """Ask the writer for a tick at the clock's current time, and wait for it. It re-folds
        every due instance, or at most ``limit`` of them as a periodic tick does (DUE_CHUNK)."""
        self.request_tick(limit).result(timeout=60)

    def request_tick(self, limit: int | None = None) -> Future[CommitReceipt]:
        """Queue a tick after everything queued so far (``tick_now`` without the wait)."""
        done: Future[CommitReceipt] = Future()
        self._queue.put(Tick(done, limit))
        return done

    def record(self, table: str, rows: Any) -> Future[CommitReceipt]:
        """Append Arrow ``rows`` to ``table`` (one of RECORD_TABLES) through the writer."""
        if table not in RECORD_TABLES:
            raise ValueError(f"{table} is not a table of records ({', '.join(RECORD_TABLES)})")
        done: Future[CommitReceipt] = Future()
        if self._closed.is_set():
            done.set_exception(StoreClosed("the store is closed"))
            return done
        self._queue.put(Record(table, rows, done))
        return done

    def observe(self, event_ns: int) -> None:
        """The latest event time of a request just accepted (committed, or wholly unmatched):
        the clock's watermark may move forward with it."""
        self.clock.observe(event_ns)

    @property
    def pending_count(self) -> int:
        return self._processor.pending_count

    # -- the writer thread ----------------------------------------------------------------
    def _run(self) -> None:
        last_tick = time.monotonic()
        interval = self.tick_interval_s
        stopping = False
        while True:
            item: Message | None
            try:
                item = self._queue.get(timeout=interval)
            except queue.Empty:
                item = None
            batch: list[Request] = []
            ticks: list[Tick] = []  # explicit ones, each with its own limit
            records: list[Record] = []
            spans = 0
            while item is not None:
                if isinstance(item, Stop):
                    stopping = True
                elif isinstance(item, Tick):
                    ticks.append(item)
                elif isinstance(item, Record):
                    records.append(item)
                else:
                    batch.append(item)
                    spans += len(item.records)
                if spans >= self.max_batch_spans:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
            try:
                if self._stale and not self._rebuild():
                    # the database is still unreadable (a lake whose catalog is down): nothing is
                    # processed on a state that is not the stored one; senders are told to retry
                    self._refuse(batch, ticks, records)
                    batch, ticks, records = [], [], []
                    last_tick = time.monotonic()  # nor is a periodic tick run on it
                if batch:
                    self._commit(batch)
                    if self.after_commit is not None:
                        self.after_commit(self.clock.now_ns())
                if records:
                    self._append_records(records)
                if ticks:  # asked for (tick_now): each with its own limit
                    for tick in ticks:
                        self._tick(tick.limit)
                    last_tick = time.monotonic()
                elif interval is not None and time.monotonic() - last_tick >= interval:
                    self._tick(DUE_CHUNK)
                    last_tick = time.monotonic()
            except Exception:  # last resort: the writer thread outlives any bug
                log.exception("the writer hit an unexpected error; rebuilding state from the database")
                self._rollback_and_rebuild(in_transaction=False)
            for req in batch:
                if not req.future.done():
                    req.future.set_exception(StoreUnavailable("the batch was not committed; retry"))
            for tick in ticks:
                if not tick.done.done():
                    tick.done.set_result(CommitReceipt(0, 0))
            for rec in records:
                if not rec.done.done():
                    rec.done.set_exception(StoreUnavailable("the records were not committed; retry"))
            self.telemetry.set("queue_depth", self._queue.qsize())
            self.telemetry.sample_rate("spans_received", "spans_per_second", time.monotonic())
            if stopping and self._queue.empty():
                try:
                    self._write_side(self.clock.now_ns(), force=True, last=True)
                except Exception:  # never let it stop the writer from stopping
                    log.exception("writing status counts and trace keys at shutdown failed")
                return

    def _commit(self, batch: list[Request]) -> None:
        now = self.clock.now_ns()
        started = time.perf_counter()
        result = StepResult()
        position = max((req.position for req in batch if req.position is not None), default=None)
        try:
            # every request's spans in one step: one read-back query and one id hash per batch
            # (arrival order within it changes nothing: DESIGN §4)
            spans = [span for req in batch if req.routed is None for span in req.records]
            if spans:
                result.merge(self._processor.process(spans, now))
            for req in batch:
                if req.routed is not None:
                    result.merge(self._processor.process_routed(req.routed, now))
        except Exception:  # a bug must cost one batch (retryable), never the writer thread
            log.exception("processing a batch failed; rebuilding state from the database")
            self.telemetry.add("commit_failures")
            self._rollback_and_rebuild(in_transaction=False)
            ok = False
        else:
            ok = self._persist(result, set(), now, position)
        elapsed = time.perf_counter() - started
        nspans = sum(len(r.records) + len(r.routed or ()) for r in batch)
        if ok:  # before any sender hears back: its acknowledged data is always inside the watermark
            self.clock.observe(max(req.event_ns for req in batch))
        for req in batch:
            if ok:
                req.future.set_result(CommitReceipt(len(req.records), len(result.transitions)))
            else:
                req.future.set_exception(StoreUnavailable("the database could not commit this batch; retry"))
        if ok:
            self.telemetry.add("spans_committed", nspans)
            self.telemetry.add("transitions_written", len(result.transitions))
            self.telemetry.add("spans_handed_off", len(result.routed))
            self.telemetry.add("commits")
            self.telemetry.add_dropped(result.dropped)  # type: ignore[arg-type]
        self.telemetry.set("commit_latency_seconds", elapsed)
        self.telemetry.set("pending_spans", self._processor.pending_count)

    def _append_records(self, records: list[Record]) -> None:
        con = self._con

        def append() -> None:
            for i, rec in enumerate(records):
                con.register(f"_records_{i}", rec.rows)
                try:
                    con.execute(f"INSERT INTO {rec.table} BY NAME SELECT * FROM _records_{i}")
                finally:
                    con.unregister(f"_records_{i}")

        if persist.in_transaction(con, "appending delivery records", append):
            for rec in records:
                rec.done.set_result(CommitReceipt(0, 0))

    def _tick(self, limit: int | None) -> None:
        try:
            self._tick_once(limit)
        except Exception:  # never let a tick kill the writer
            log.exception("a tick failed; rebuilding state from the database")
            self.telemetry.add("commit_failures")
            self._rollback_and_rebuild(in_transaction=False)

    def _tick_once(self, limit: int | None) -> None:
        """``limit``: at most this many due instances re-folded now (the rest at the next ticks),
        so that commits go on between; None (an explicit tick): all of them."""
        now = self.clock.now_ns()
        self._evict_quiet(now)
        if self.retention_ns is not None:
            self._retain(now)
        result = self._lookup_links(now)
        result.merge(self._processor.tick(now))
        due: set[InstanceId] = set()
        while self._timers and self._timers[0][0] <= now and (limit is None or len(due) < limit):
            _, wf, key = heapq.heappop(self._timers)
            due.add((wf, key))
        changed = bool(result.transitions or result.spans or result.pending_removed or result.routed or due)
        if changed and self._persist(result, due, now, flush=limit is None):
            self.telemetry.add_dropped(result.dropped)  # type: ignore[arg-type]
            self.telemetry.add("transitions_written", len(result.transitions))
        self._write_side(now, force=limit is None)  # an explicit tick leaves nothing unwritten
        self._write_health(now)
        self._settle(now)
        self._sum_counts()

    def _lookup_links(self, now: int) -> StepResult:
        """An ingest node: keys of linked traces that reached another ingest node (the lake's
        shared lookup); the spans waiting on them go on. They wait ``key.wait`` at most, as any."""
        processor = self._processor
        if self.handoff is None or not isinstance(processor, KeyRouter):
            return StepResult()
        wanted = processor.waiting_links()
        if not wanted:
            return StepResult()
        try:
            found = shards.shared_keys(self._con, wanted)
        except Exception as exc:  # the lake unreachable: they wait on, and expire as they would
            log.warning("looking up linked traces' keys failed, retrying at the next tick: %s", exc)
            return StepResult()
        return processor.learn_remote(found, now)

    def _write_health(self, now: int) -> None:
        """Model drift findings to ``model_health`` and the gauges, when they changed."""
        findings = self.health.findings(now)
        for f in findings:
            self.telemetry.set(f"model_drift:{f.workflow}|{f.step}", 1 if f.drifting else 0)
            self.telemetry.set(f"step_matches:{f.workflow}|{f.step}", f.matched)
        verdicts = [(f.workflow, f.step, f.unmatched_instances, f.drifting) for f in findings]
        stale = now - self._health_written_at >= HEALTH_REFRESH_NS  # counts move with every commit
        if verdicts == self._health_written and not stale:
            return
        if not persist.in_transaction(
            self._con, "writing model health", lambda: persist.write_health(self._con, findings, now)
        ):
            return
        self._health_written = verdicts
        self._health_written_at = now

    # -- persistence --------------------------------------------------------------------
    def _persist(
        self, result: StepResult, due: set[InstanceId], now: int, position: int | None = None, *, flush: bool = False
    ) -> bool:
        """Write a step in one transaction. ``flush``: a lake store's status deltas and trace
        keys not written yet go with it, however recent (SIDE_ROWS_EVERY_S)."""
        table = self._processor.table
        table.prefetch(due - result.touched)  # one read for every due instance not in memory
        states = [table.state(i, now) for i in sorted(result.touched)]
        for inst in sorted(due - result.touched):
            if inst in table:  # a deadline or grace timer fell due: status or anomalies may change
                states.append(table.state(inst, now))
        delete, buffered = self._processor.pending_delta(result)
        changes = self.observer.plan(states, now) if states else Changes([], [], {})
        upcoming = {(s.workflow, s.key): self._upcoming(s, now) for s in states}
        next_due = {i: (min(times) if times else None) for i, times in upcoming.items()}
        moved: collections.Counter[tuple[str, str]] = collections.Counter()
        for s in states:
            before = self._last.get((s.workflow, s.key))  # every stored instance has one (see _load_instances)
            if before is None or before[0] != s.status.value:
                moved[(s.workflow, s.status.value)] += 1
                if before is not None:
                    moved[(s.workflow, before[0])] -= 1
        side = self._side
        if self.lake is None:  # one file: the side rows cost next to nothing, written every time
            learned, counts, deferred = result.learned_keys, moved, False
        else:
            kept, only = persist.split_learned(self.model, result)
            deferred = not (flush or only or side.due(SIDE_ROWS_EVERY_S))
            if deferred:
                learned, counts = [], collections.Counter()
            else:  # a key only _trace_keys keeps takes every earlier one with it (recover_keys)
                learned, counts = side.keys + kept + only, collections.Counter(side.counts)
                counts.update(moved)
        tables = persist.tables(result, delete, buffered, states, changes.counts, next_due, counts, now, learned)
        con = self._con
        try:
            con.execute("BEGIN")
            persist.write(con, tables)
            if self.handoff is not None:
                self.handoff.write(con, result)
            if position is not None:
                shards.write_position(con, position, now)
            self.observer.write(con, changes, now)
            if self.fault is not None:
                self.fault()
            con.execute("COMMIT")
        except Exception as exc:  # disk full, I/O error, an injected fault, a bug: retryable for senders
            log.error("commit failed, rolling back and rebuilding state from the database: %s", exc)
            self.telemetry.add("commit_failures")
            self._rollback_and_rebuild()
            return False
        self._notify(changes)
        self.health.observe(
            result.transitions, [(s.workflow, s.started_at_ns) for s in states if (s.workflow, s.key) in result.created]
        )
        for state in states:
            inst = (state.workflow, state.key)
            before = self._last.get(inst)
            # an instance read back from the database has no status in memory: not counted again
            if (before[0] if before else "") != state.status.value and (before or inst in result.created):
                self.telemetry.add(f"status_entered:{state.status.value}")
            self._last[inst] = (state.status.value, len(state.history))
            for t in upcoming[inst]:
                heapq.heappush(self._timers, (t, state.workflow, state.key))
            if state.status in TERMINAL_STATUSES:
                self._quiet.append((now, inst))
        if self._unsettled:
            self._unsettled.difference_update(upcoming)
        self._count_rows += tables.status_counts.num_rows
        if self.lake is not None:
            if not deferred:
                self._side = SideRows()
            elif kept or any(moved.values()):
                side.keys += kept
                side.counts.update(moved)
                if side.since is None:
                    side.since = time.monotonic()
        return True

    def _write_side(self, now: int, *, force: bool, last: bool = False) -> None:
        """A lake store's status deltas and trace keys not written yet, in their own transaction
        (when they are due: traffic has paused since; ``force``: an explicit tick, a shutdown;
        ``last``: the shutdown's, after which no tick retries)."""
        side = self._side
        if side.since is None or not (force or side.due(SIDE_ROWS_EVERY_S)):
            return
        counts = rows.status_counts_table(side.counts)

        def write() -> None:
            persist.insert(self._con, "_trace_keys", rows.trace_keys_table(side.keys, now))
            persist.insert(self._con, "_status_counts", counts)

        then = "the next start-up counts the statuses and reads the keys back" if last else persist.NEXT_TICK
        if persist.in_transaction(self._con, "writing status counts and trace keys", write, then):
            self._count_rows += counts.num_rows
            self._side = SideRows()

    def _notify(self, changes: Changes) -> None:
        """Tell the listeners what a commit opened and resolved."""
        if changes.opened or changes.resolved:
            for listener in self.listeners:
                try:
                    listener(changes)
                except Exception:  # a listener's bug must not cost the writer
                    log.exception("an anomaly listener failed")

    def _upcoming(self, state: InstanceState, now: int) -> list[int]:
        """The instance's due times still ahead of ``now`` (each one schedules a re-fold)."""
        return [t for t in due_times(self.model.workflows[state.workflow], state) if t > now]

    def _settle(self, now: int) -> None:
        """After a start-up fold: once every instance it changed is rewritten, the stored rows are
        this fold's — the next start-up trusts them and folds nothing."""
        if self._settling and not self._unsettled:
            write = lambda: persist.write_folded(self._con, self.fingerprint, now)  # noqa: E731
            if persist.in_transaction(self._con, "recording the fold's fingerprint", write):
                self._settling = False

    # -- retention ----------------------------------------------------------------------------
    def _retain(self, now: int) -> None:
        """Delete one bounded chunk of expired terminal instances (one short transaction per tick)."""
        assert self.retention_ns is not None
        cutoff = rows.timestamp_literal(now - self.retention_ns)
        con = self._con
        expired = persist.expired_instances(con, cutoff, RETENTION_CHUNK)
        if not expired:
            return
        started = time.perf_counter()
        leaving: collections.Counter[tuple[str, str]] = collections.Counter()
        for (w, _), s in expired.items():
            leaving[(w, s)] -= 1

        def delete() -> None:
            persist.delete_history(con, list(expired), cutoff)
            persist.insert(con, "_status_counts", rows.status_counts_table(leaving))

        if not persist.in_transaction(con, "retention", delete):
            return
        self._count_rows += len(leaving)
        gone: list[tuple[str, int]] = []
        self._processor.table.forget(list(expired))
        for inst in expired:
            self._last.pop(inst, None)
            self._unsettled.discard(inst)
            gone += [(aid, now) for aid in self.observer.forget(inst)]
        self._notify(Changes([], gone, {}))  # an alert about deleted history ends with it
        self.telemetry.add("instances_expired", len(expired))
        self.telemetry.set("retention_chunk_seconds", time.perf_counter() - started)

    # -- restart and recovery ---------------------------------------------------------------
    def _rollback_and_rebuild(self, *, in_transaction: bool = True) -> None:
        if in_transaction:
            with contextlib.suppress(duckdb.Error):
                self._con.execute("ROLLBACK")
        self._rebuild()

    def _rebuild(self) -> bool:
        """The in-memory state anew from the database. If the database cannot be read (a lake's
        catalog down), the store stays *stale*: every batch is refused (retryable) and the
        rebuild is tried again before the next one."""
        self._processor = self._new_processor()
        self._health_written = []
        self._quiet.clear()
        self._timers.clear()
        self._last.clear()
        self._unsettled.clear()
        self._settling = False
        try:
            if self._invalid:
                self._reconnect()
            self._restore(start=False)
        except Exception as exc:  # keep serving (retryable) errors until it can be read again
            if isinstance(exc, FATAL_ERRORS) and self.lake is not None:
                self._invalid = True  # reconnect with the next try
            log.error("cannot rebuild state from the database, will retry before the next batch: %s", exc)
            self._stale = True
            return False
        self._stale = False
        return True

    @staticmethod
    def _refuse(batch: list[Request], ticks: list[Tick], records: list[Record]) -> None:
        error = StoreUnavailable("the database cannot be read right now (is the lake's catalog up?); retry")
        for req in batch:
            req.future.set_exception(error)
        for rec in records:
            rec.done.set_exception(error)
        for tick in ticks:
            tick.done.set_result(CommitReceipt(0, 0))

    def _new_processor(self) -> Processor:
        kind = KeyRouter if self.handoff is not None else Processor
        table = InstanceTable(self.model.workflows, loader=self._load_instances, hasher=self._hash_ids)
        return kind(self.model, table)

    def _hash_ids(self, instances: Sequence[InstanceId]) -> Any:
        """processors.state.Hasher: DuckDB's hash, as persist.load hashed the stored ids."""
        if self._hash_con is None:
            self._hash_con = duckdb.connect()
        return persist.hash_ids(self._hash_con, instances)

    def _load_instances(self, instances: Sequence[InstanceId]) -> dict[InstanceId, list[Transition]]:
        """Read instances back into memory, with the status their stored row says (the status
        counts move from it when the instance is written again)."""
        self.telemetry.add("instances_read_back", len(instances))
        found = persist.load_instances(self._con, self.model, instances)
        if found:
            for inst, status in persist.stored_statuses(self._con, list(found)).items():
                self._last[inst] = (status, -1)  # -1: the history rows were not counted
        return found

    def _sum_counts(self) -> None:
        """Keep ``_status_counts`` short: its deltas summed once they pile up."""
        if self._count_rows >= SUM_COUNTS_AFTER and persist.in_transaction(
            self._con, "summing status counts", lambda: persist.sum_status_counts(self._con)
        ):
            self._count_rows = persist.status_counts_rows(self._con)

    def _evict_quiet(self, now: int) -> None:
        """Finished instances quiet for EVICT_AFTER_NS leave memory (their id stays); sooner, the
        longest-finished first, while more than ``max_loaded_instances`` are in memory."""
        table = self._processor.table
        while self._quiet and (self._quiet[0][0] <= now - EVICT_AFTER_NS or table.loaded > self.max_loaded_instances):
            _, inst = self._quiet.popleft()
            if self._last.get(inst, ("",))[0] in TERMINAL_VALUES:
                table.evict(inst)
                self._last.pop(inst, None)
        self.telemetry.set("instances_in_memory", table.loaded)

    def _restore(self, *, start: bool = True) -> None:
        """Rebuild memory from the database. When the stored rows were written by this model and
        fold, nothing is folded: each instance's next due time is scheduled and its transitions
        are read back when it falls or a span for it arrives. Otherwise every live instance is
        folded now and those whose row differs are rewritten over the next ticks.

        ``start``: a start-up, which may follow a crash that lost a lake store's side rows not yet
        written (SIDE_ROWS_EVERY_S): the statuses are counted anew and the keys read back from the
        spans rows. A rebuild in the same process (after a failed commit) still has them."""
        now = self.clock.now_ns()
        trusted = persist.folded_by(self._con) == self.fingerprint
        quiet_before = rows.timestamp_literal(now - EVICT_AFTER_NS)
        lake_mode = self.lake is not None
        # keys wait for _trace_keys only in a store that learns them and stores spans: a lake's
        # --role all (an ingest node stores no spans; a fold node learns no keys)
        recover = start and lake_mode and self.schema is None and self.handoff is None
        restored = persist.load(self._con, self.model, quiet_before, trusted=trusted, recover=recover)
        if restored.recovered:  # into _trace_keys with the next side rows
            self._side = SideRows(keys=list(restored.recovered), since=time.monotonic())
        if start and lake_mode:
            self._con.execute("BEGIN")
            try:
                persist.recount_statuses(self._con)
                self._con.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    self._con.execute("ROLLBACK")
                raise
        table = self._processor.table
        table.restore(restored.transitions, restored.stored_hashes)
        self._processor.restore(restored.keys, restored.pending)
        if not start:  # committed, not yet in _trace_keys
            self._processor.restore(self._side.keys, [])
        self.observer.restore(self._con)
        self.health = ModelHealth(self.model.workflows, self.drift_threshold)
        self.health.restore(persist.load_health(self._con))
        self._timers.extend((t, wf, key) for wf, key, t in restored.due)
        heapq.heapify(self._timers)
        for inst in table:
            state = table.state(inst, now)
            status, history, stored_due = restored.stored.get(inst, ("", 0, None))
            if status:
                self._last[inst] = (status, history)
            upcoming = self._upcoming(state, now)
            for t in upcoming:
                heapq.heappush(self._timers, (t, state.workflow, state.key))
            due = rows.us_up(min(upcoming, default=None))  # as stored: microseconds
            if (status, history, stored_due) != (state.status.value, len(state.history), due):
                heapq.heappush(self._timers, (now, state.workflow, state.key))
                self._unsettled.add(inst)
            if state.status in TERMINAL_STATUSES:  # finished before the restart: may leave memory
                self._quiet.append((now, inst))
        self._settling = not trusted
        self._settle(now)
        self._count_rows = persist.status_counts_rows(self._con)
        self.telemetry.set("restored_without_fold", 1 if trusted else 0)
        self.telemetry.set("instances_restored", len(table))
        self.telemetry.set("pending_spans", self._processor.pending_count)
