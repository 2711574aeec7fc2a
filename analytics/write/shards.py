"""Lake mode with roles: ingest nodes hand keyed spans to the fold nodes that own their keys,
through the lake itself (docs/architecture.md, "Scale").

The layout, created by the first node that starts (``prepare``):

- ``main._layout``: the number of key partitions, fixed for the lake's life;
- ``main._handoff``: every span an ingest node settled the key of, with its partition — appended
  by every ingest node (appends from many processes are safe in DuckLake; nothing updates or
  deletes it but ``coordstate lake maintain``, in one process);
- ``main._shared_keys``: trace → key, appended by every ingest node: a span linked to a trace
  that reached another ingest node finds its key here;
- ``p0`` … ``pN-1``: one schema per partition holding the whole coordstate schema, written by the
  one fold node that owns the partition (DuckLake's updates and deletes are safe only from one
  process per table), plus ``_feed``: how far that partition followed ``_handoff``;
- ``ingest_<node>``: an ingest node's own key buffer (``_pending``, ``_trace_keys``);
- the public names in ``main`` (``transitions``, ``instances``, … ``state_at``, ``convergence``)
  are views over the partitions: the SQL contract is the embedded one.

A fold node follows ``_handoff`` with DuckLake's change feed (``ducklake_table_insertions``
between two snapshots) and records the last snapshot it folded in the same transaction as the
fold's writes: after a crash it carries on from there, and a span folded twice changes nothing
(the fold is a function of the set of transitions).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from analytics.common.lake import ALIAS
from analytics.write import persist, rows
from analytics.write.messages import FATAL_ERRORS, StoreUnavailable
from analytics.write.schema import ANOMALY_TIME, CONVERGENCE, INSTANCE_COUNTS, STATE_AT, migrate
from processors.clock import Clock, WallClock
from processors.correlate import LearnedKey, Routed, StepResult

if TYPE_CHECKING:
    from analytics.write.store import Store

log = logging.getLogger(__name__)

ROLES = ("all", "ingest", "fold")
#: the public tables, as views over the partitions (model_health is summed over them)
PUBLIC_TABLES = (
    "transitions", "instances", "instance_history", "spans", "anomalies", "alert_deliveries", "action_deliveries",
)  # fmt: skip
#: a follower reads the change feed this many snapshots at a time (bounded memory)
FEED_SNAPSHOTS = 50
#: a partition that gets nothing still records its position this often (in snapshots), so that
#: compaction may expire what lies behind it
IDLE_POSITION_EVERY = 1_000
SHARED_LOOKUP_CHUNK = 1_000
#: hand-offs younger than this before the slowest partition's position are never pruned
PRUNE_MARGIN_S = 600


class LayoutError(RuntimeError):
    """The lake's layout does not admit this node; the message says why and what to do."""


def partition_of(workflow: str, key: str, partitions: int) -> int:
    """The partition of an instance: the same in every process and every release (not hash())."""
    digest = hashlib.blake2b(f"{workflow}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partitions


def partition_schema(i: int) -> str:
    return f"p{i}"


def ingest_schema(node: str) -> str:
    return f"ingest_{node}"


def layout(con: Any) -> int | None:
    """The lake's partition count (None: no layout for roles yet)."""
    found = con.execute(
        "SELECT 1 FROM duckdb_tables() WHERE database_name = ? AND schema_name = 'main' AND table_name = '_layout'",
        [ALIAS],
    ).fetchall()
    if not found:
        return None
    row = con.execute(f"SELECT max(partitions) FROM {ALIAS}.main._layout").fetchone()
    return None if row is None or row[0] is None else int(row[0])


def prepare(con: Any, partitions: int) -> None:
    """Create the layout for ``partitions`` key partitions, or check the one there (idempotent)."""
    if partitions < 1:
        raise LayoutError(f"--partitions {partitions}: give 1 or more")
    plain = con.execute(
        "SELECT 1 FROM duckdb_tables() WHERE database_name = ? AND schema_name = 'main' AND table_name = 'instances'",
        [ALIAS],
    ).fetchall()
    existing = layout(con)
    if existing is None and plain:
        raise LayoutError(
            "this lake was written by a single node (--role all): its tables are not partitioned. Give the "
            "nodes with roles a new lake (another PostgreSQL database and data path), or keep --role all"
        )
    if existing is not None:
        if existing != partitions:
            raise LayoutError(
                f"--partitions {partitions}: this lake has {existing} key partitions, fixed when it was created; "
                f"pass --partitions {existing}"
            )
        found = con.execute(
            "SELECT 1 FROM duckdb_views() WHERE database_name = ? AND schema_name = 'main' "
            "AND view_name = 'instance_counts'",
            [ALIAS],
        ).fetchall()
        if not found:  # laid out by an older coordstate: its partitions migrated first
            for i in range(partitions):
                con.execute(f"USE {ALIAS}.{partition_schema(i)}")
                migrate(con)
            con.execute(f"USE {ALIAS}.main")
            con.execute(_instance_counts(partitions))
        return
    for i in range(partitions):
        schema = partition_schema(i)
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {ALIAS}.{schema}")
        con.execute(f"USE {ALIAS}.{schema}")
        migrate(con)
        con.execute("CREATE TABLE IF NOT EXISTS _feed (snapshot_id BIGINT NOT NULL, followed_at TIMESTAMP NOT NULL)")
    con.execute(f"USE {ALIAS}.main")
    con.execute("BEGIN")
    try:
        con.execute(
            """
            CREATE TABLE IF NOT EXISTS _handoff (
                workflow     VARCHAR NOT NULL,
                instance_key VARCHAR,           -- NULL: the span never got a key (unkeyed)
                part         INTEGER NOT NULL,  -- the key partition (of the trace id when unkeyed)
                arrived_ns   BIGINT NOT NULL,
                payload      VARCHAR NOT NULL,  -- the span (analytics/write/rows.py: span_payload)
                node         VARCHAR NOT NULL,  -- the ingest node that handed it off
                handed_at    TIMESTAMP NOT NULL
            );
            CREATE TABLE IF NOT EXISTS _shared_keys (
                workflow     VARCHAR NOT NULL,
                trace_id     VARCHAR NOT NULL,
                instance_key VARCHAR NOT NULL,
                learned_at   TIMESTAMP NOT NULL
            );
            """
        )
        for table in PUBLIC_TABLES:
            union = " UNION ALL ".join(
                f"SELECT * FROM {ALIAS}.{partition_schema(i)}.{table}" for i in range(partitions)
            )
            con.execute(f"CREATE VIEW {table} AS {union}")
        union = " UNION ALL ".join(
            f"SELECT * FROM {ALIAS}.{partition_schema(i)}.model_health" for i in range(partitions)
        )
        con.execute(
            "CREATE VIEW model_health AS SELECT workflow, step, sum(matched)::BIGINT AS matched, "
            "max(last_matched_at) AS last_matched_at, sum(instances_without_match)::INTEGER AS "
            "instances_without_match, bool_or(drifting) AS drifting, max(hint) AS hint, max(updated_at) AS updated_at "
            f"FROM ({union}) GROUP BY workflow, step"
        )
        con.execute(STATE_AT + ANOMALY_TIME + CONVERGENCE + _instance_counts(partitions))
        con.execute("CREATE TABLE _layout (partitions INTEGER NOT NULL, created_at TIMESTAMP NOT NULL)")
        con.execute("INSERT INTO _layout VALUES (?, now()::TIMESTAMP)", [partitions])
        con.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK")
        raise


def _instance_counts(partitions: int) -> str:
    union = " UNION ALL ".join(f"SELECT * FROM {ALIAS}.{partition_schema(i)}._status_counts" for i in range(partitions))
    return INSTANCE_COUNTS.format(source=f"({union})")


def prepare_with_retry(con: Any, partitions: int, attempts: int = 5) -> None:
    """``prepare``; nodes started together race to create the layout: the loser looks again."""
    for attempt in range(attempts):
        try:
            prepare(con, partitions)
            return
        except duckdb.Error:
            if attempt == attempts - 1:
                raise


@dataclass(frozen=True, slots=True)
class Handoff:
    """What an ingest node writes besides its own buffer, in the same transaction. ``handed_at``
    and the shared keys' ``learned_at`` are wall-clock (``wall``): compaction prunes by them."""

    partitions: int
    node: str
    wall: Clock = field(default_factory=WallClock)

    def write(self, con: Any, result: StepResult) -> None:
        now_ns = self.wall.now_ns()
        if result.routed:
            persist.insert(con, f"{ALIAS}.main._handoff", self.table(result.routed, now_ns))
        if result.learned_keys:
            persist.insert(con, f"{ALIAS}.main._shared_keys", rows.trace_keys_table(result.learned_keys, now_ns))

    def table(self, routed: Sequence[Routed], now_ns: int) -> pa.Table:
        n = self.partitions
        return pa.table(
            {
                "workflow": pa.array([r.workflow for r in routed], pa.string()),
                "instance_key": pa.array([r.key for r in routed], pa.string()),
                "part": pa.array(
                    [partition_of(r.workflow, r.key if r.key is not None else r.span.trace_id, n) for r in routed],
                    pa.int32(),
                ),
                "arrived_ns": pa.array([r.arrived_ns for r in routed], pa.int64()),
                "payload": pa.array([rows.span_payload(r.span) for r in routed], pa.string()),
                "node": pa.array([self.node] * len(routed), pa.string()),
                "handed_at": pa.array([now_ns // 1000] * len(routed), rows.TS_US),
            }
        )


def shared_keys(con: Any, wanted: Sequence[tuple[str, str]]) -> list[LearnedKey]:
    """Keys of these (workflow, trace id) pairs that any ingest node learned."""
    found: list[LearnedKey] = []
    for start in range(0, len(wanted), SHARED_LOOKUP_CHUNK):
        chunk = wanted[start : start + SHARED_LOOKUP_CHUNK]
        con.register("_wanted", pa.table({"workflow": [w for w, _ in chunk], "trace_id": [t for _, t in chunk]}))
        try:
            found += [
                LearnedKey(str(w), str(t), str(k))
                for w, t, k in con.execute(
                    f"SELECT DISTINCT ON (s.workflow, s.trace_id) s.workflow, s.trace_id, s.instance_key "
                    f"FROM {ALIAS}.main._shared_keys s JOIN _wanted USING (workflow, trace_id)"
                ).fetchall()
            ]
        finally:
            con.unregister("_wanted")
    return found


def write_position(con: Any, snapshot: int, now_ns: int) -> None:
    con.execute("INSERT INTO _feed VALUES (?, ?::TIMESTAMP)", [snapshot, rows.timestamp_literal(now_ns)])


def read_position(con: Any) -> int:
    return int(con.execute("SELECT coalesce(max(snapshot_id), 0) FROM _feed").fetchone()[0])


def current_snapshot(con: Any) -> int:
    return int(con.execute(f"SELECT id FROM {ALIAS}.current_snapshot()").fetchone()[0])


def oldest_position(con: Any) -> int | None:
    """The oldest snapshot any partition still has to follow from (compaction keeps it)."""
    partitions = layout(con)
    if partitions is None:
        return None
    union = " UNION ALL ".join(
        f"SELECT coalesce(max(snapshot_id), 0) AS p FROM {ALIAS}.{partition_schema(i)}._feed" for i in range(partitions)
    )
    return int(con.execute(f"SELECT min(p) FROM ({union})").fetchone()[0])


@dataclass(frozen=True, slots=True)
class Pruned:
    #: snapshots at or after this time (UTC) stay: the slowest partition still reads them
    floor: str
    handoff_rows: int
    shared_keys: int


def prune(con: Any, keep_s: int) -> Pruned | None:
    """``coordstate lake maintain`` on a lake with roles (one process, the only deleter of these
    tables): hand-offs every partition has folded, and shared keys, older than ``keep_s`` go.
    Returns where snapshot expiry must stop (None: no layout for roles)."""
    position = oldest_position(con)
    if position is None:
        return None
    floor = con.execute(
        f"SELECT strftime(min(snapshot_time) AT TIME ZONE 'UTC', '%Y-%m-%d %H:%M:%S.%f') "
        f"FROM ducklake_snapshots('{ALIAS}') WHERE snapshot_id >= ?",
        [position],
    ).fetchone()[0]
    # a row's handed_at is read before its commit: rows handed shortly before the floor may
    # have committed after it, so a margin stays
    cutoff = (
        f"least(?::TIMESTAMP - INTERVAL {PRUNE_MARGIN_S} SECOND, "
        f"(now() AT TIME ZONE 'UTC') - INTERVAL {int(keep_s)} SECOND)"
    )
    counts = []
    for table, column in (("_handoff", "handed_at"), ("_shared_keys", "learned_at")):
        done = con.execute(f"DELETE FROM {ALIAS}.main.{table} WHERE {column} < {cutoff}", [floor]).fetchone()
        counts.append(int(done[0]) if done else 0)
    return Pruned(str(floor), counts[0], counts[1])


def backlog(con: Any) -> int:
    """Hand-off rows no fold node has folded yet (as far as the partitions' stored positions
    tell; a partition's own commits move the head without handing anything to it)."""
    partitions = layout(con)
    if partitions is None:
        return 0
    head = current_snapshot(con)
    total = 0
    for i in range(partitions):
        position = int(
            con.execute(f"SELECT coalesce(max(snapshot_id), 0) FROM {ALIAS}.{partition_schema(i)}._feed").fetchone()[0]
        )
        if position < head:
            total += int(
                con.execute(
                    f"SELECT count(*) FROM ducklake_table_insertions('{ALIAS}', 'main', '_handoff', ?, ?) WHERE part = ?",
                    [position + 1, head, i],
                ).fetchone()[0]
            )
    return total


class Follower:
    """Feeds one partition's store from the change feed of ``_handoff`` (a thread of its own)."""

    def __init__(self, store: Store, partition: int, *, poll_s: float = 0.1) -> None:
        self.store = store
        self.partition = partition
        self.poll_s = poll_s
        self.position = 0
        self._stored = 0
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._con: Any = None

    def start(self) -> None:
        self._con = self.store.cursor()
        self.position = self._stored = read_position(self._con)
        self._thread = threading.Thread(target=self._run, name=f"coordstate-follow-p{self.partition}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._con is not None:
            self._con.close()
            self._con = None

    def sync(self, timeout_s: float = 60.0) -> None:
        """Wait until everything handed off so far is folded (tests, benchmarks, shutdown)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                cur = self.store.cursor()  # this thread's own: a connection serves one thread at a time
            except StoreUnavailable:  # being reopened after a fatal error
                if time.monotonic() >= deadline:
                    raise
                self._stop.wait(self.poll_s)
                continue
            try:
                target = current_snapshot(cur)
            finally:
                cur.close()
            break
        with self._changed:
            if not self._changed.wait_for(lambda: self.position >= target, timeout=deadline - time.monotonic()):
                raise TimeoutError(f"partition {self.partition} is at snapshot {self.position}, not {target}")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                moved = self._follow_once()
            except Exception as exc:  # the lake unreachable, a commit refused: try again shortly
                log.warning("following the hand-off for partition %d failed, retrying: %s", self.partition, exc)
                moved = False
                if isinstance(exc, FATAL_ERRORS):  # the store reconnects; this cursor is gone
                    self.store.invalidated()
                    with contextlib.suppress(Exception):
                        self._con.close()
                    self._con = None
            if not moved:
                self._stop.wait(self.poll_s)

    def _follow_once(self) -> bool:
        if self._con is None:
            self._con = self.store.cursor()
        head = current_snapshot(self._con)
        self.store.telemetry.set(f"handoff_lag_snapshots:{self.partition}", max(0, head - self.position))
        if head <= self.position:
            return False
        upto = min(head, self.position + FEED_SNAPSHOTS)
        found = self._con.execute(
            f"SELECT workflow, instance_key, arrived_ns, payload FROM "
            f"ducklake_table_insertions('{ALIAS}', 'main', '_handoff', ?, ?) WHERE part = ?",
            [self.position + 1, upto, self.partition],
        ).fetchall()
        items = [
            Routed(str(w), None if k is None else str(k), rows.span_from_payload(p), int(a)) for w, k, a, p in found
        ]
        if items or upto - self._stored >= IDLE_POSITION_EVERY:
            event_ns = max((it.span.end_ns for it in items), default=0)
            self.store.submit_routed(items, event_ns, upto).result()
            self._stored = upto
        with self._changed:
            self.position = upto
            self._changed.notify_all()
        return True
