"""The shape both notifiers share: a thread fed by the store's commits (never blocking the
writer), state restored from the database at start, and records written back through the
writer (``Store.record``)."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from analytics.common.telemetry import Telemetry
from analytics.notify import anomaly
from analytics.notify.anomaly import Anomaly
from analytics.write.observer import Changes
from analytics.write.store import Store

log = logging.getLogger(__name__)

#: how often a worker looks at what is due when no commit wakes it
POLL_S = 0.5


class Backoff:
    """Exponential backoff: ``base``, 2×, 4×, … capped at ``cap`` seconds (monotonic time)."""

    def __init__(self, base_s: float, cap_s: float) -> None:
        self.base_s, self.cap_s = base_s, cap_s
        self.failures = 0
        self.next_at = 0.0

    def ready(self, now: float) -> bool:
        return now >= self.next_at

    def failed(self, now: float) -> None:
        self.failures += 1
        self.next_at = now + min(self.cap_s, self.base_s * 2 ** (self.failures - 1))

    def succeeded(self) -> None:
        self.failures, self.next_at = 0, 0.0


class Worker:
    """A notifier's thread: ``on_changes`` (the store's listener) queues, ``_pass`` does the work."""

    name = "coordstate-notify"

    def __init__(self, store: Store, telemetry: Telemetry, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.telemetry = telemetry
        self.monotonic = monotonic
        self.open: dict[str, Anomaly] = {}
        self._inbox: collections.deque[Changes] = collections.deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unrecorded: list[tuple[str, pa.Table]] = []
        self._passes = 0
        self._passed = threading.Condition()

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Listen to commits, then restore (nothing committed in between is missed: it waits in
        the inbox, and applying it twice changes nothing), then start the thread."""
        self.store.listeners.append(self.on_changes)
        cur = self.store.cursor()
        try:
            rows = cur.execute(f"SELECT {anomaly.COLUMNS} FROM anomalies WHERE resolved_at IS NULL").fetchall()
            self.open = {a.anomaly_id: a for a in map(anomaly.from_row, rows)}
            self.restore(cur)
            for a in self.open.values():
                self.admitted(a)
        finally:
            cur.close()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self.on_changes in self.store.listeners:
            self.store.listeners.remove(self.on_changes)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._flush_records(final=True)

    def on_changes(self, changes: Changes) -> None:
        """The store's listener (the writer thread, after a commit): queue and return."""
        self._inbox.append(changes)
        self._wake.set()

    def wait_passes(self, count: int = 2, timeout_s: float = 30.0) -> None:
        """Wait until ``count`` more passes have run (tests, and ``stop`` ordering): a pass
        starting after this call has seen every commit made before it."""
        with self._passed:
            target = self._passes + count
            self._wake.set()
            if not self._passed.wait_for(lambda: self._passes >= target, timeout=timeout_s):
                raise TimeoutError(f"{self.name}: no pass within {timeout_s} s")

    # -- the thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(POLL_S)
            self._wake.clear()
            try:
                self._drain()
                self._flush_records()
                self._pass()
            except Exception:  # a notifier's bug must not end notifying
                log.exception("%s: a pass failed; retrying at the next one", self.name)
            with self._passed:
                self._passes += 1
                self._passed.notify_all()

    def _drain(self) -> None:
        while self._inbox:
            opened, resolved = anomaly.from_changes(self._inbox.popleft())
            for a in opened:
                if a.anomaly_id not in self.open:
                    self.open[a.anomaly_id] = a
                    self.admitted(a)
            for aid, at in resolved:
                gone = self.open.pop(aid, None)
                if gone is not None:
                    self.resolved(gone.resolved(at))

    # -- records, through the writer --------------------------------------------------------
    def record(self, table: str, rows: dict[str, list[Any]], schema: pa.Schema) -> None:
        self._unrecorded.append((table, pa.table(rows, schema=schema)))

    def _flush_records(self, *, final: bool = False) -> None:
        while self._unrecorded:
            table, rows = self._unrecorded[0]
            try:
                self.store.record(table, rows).result(timeout=60)
            except Exception as exc:
                if final:
                    log.error("%s: %d delivery records not written at stop: %s", self.name, len(rows), exc)
                    self._unrecorded.clear()
                else:
                    log.warning("%s: delivery records not written yet, will retry: %s", self.name, exc)
                return
            self._unrecorded.pop(0)

    # -- what a notifier adds --------------------------------------------------------------
    def restore(self, cur: Any) -> None:
        """Read this notifier's delivery state (``self.open`` is loaded)."""

    def admitted(self, a: Anomaly) -> None:
        """An anomaly joined ``self.open`` (opened, or open at start after ``restore``)."""

    def resolved(self, gone: Anomaly) -> None:
        """An open anomaly resolved (``gone.resolved_ns`` is set)."""

    def _pass(self) -> None:
        """Deliver what is due."""
