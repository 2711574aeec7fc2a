"""Clocks are injected, never read directly: wall time, event time, or a hand-set time in tests.

The store judges lateness (deadlines, grace periods, buffers' waits) against ``now_ns()`` and
tells the clock, through ``observe``, the latest event time of every request it accepted. When
serving and replaying, that clock is an :class:`EventTimeClock`: the watermark of event time,
so a service whose batch arrives later than another's is not "late" (docs/architecture.md).
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now_ns(self) -> int:
        """Current time in nanoseconds since the epoch."""
        ...

    def observe(self, event_ns: int) -> None:
        """The latest event time of data just accepted (a clock may move forward with it)."""
        ...


class WallClock:
    def now_ns(self) -> int:
        return time.time_ns()

    def observe(self, event_ns: int) -> None:
        pass


class WatermarkClock:
    """The maximum event time seen so far."""

    def __init__(self, start_ns: int = 0) -> None:
        self._now = start_ns
        self._lock = threading.Lock()

    def advance(self, event_ns: int) -> None:
        with self._lock:
            if event_ns > self._now:
                self._now = event_ns

    def observe(self, event_ns: int) -> None:
        self.advance(event_ns)

    def now_ns(self) -> int:
        with self._lock:
            return self._now


class ManualClock(WatermarkClock):
    """A clock tests set by hand: data never moves it (``observe`` does nothing)."""

    def set(self, now_ns: int) -> None:
        with self._lock:
            self._now = now_ns

    def observe(self, event_ns: int) -> None:
        pass


class EventTimeClock:
    """The event-time watermark: the latest event time seen, minus the allowed ``lateness``.

    Anything judged at ``now_ns()`` has had ``lateness`` to arrive after newer data did: SDKs
    export on their own schedules (5 s by default) and a collector flushes a backlog in the order
    it received it, so per-service batches delayed by up to ``lateness`` change no judgement.

    With a ``wall`` clock (serving), an event time ahead of the wall clock (a host's clock runs
    fast) counts as the wall time, and the watermark never lags the wall clock by more than
    ``idle``: when nothing arrives at all, deadlines still pass. Without one (replay), only the
    data moves it, so the same files always give the same judgements.
    """

    def __init__(self, lateness_ns: int, wall: Clock | None = None, idle_ns: int | None = None) -> None:
        self.lateness_ns = lateness_ns
        self.wall = wall
        self.idle_ns = idle_ns
        self._seen = 0
        self._lock = threading.Lock()

    def observe(self, event_ns: int) -> None:
        if self.wall is not None:
            event_ns = min(event_ns, self.wall.now_ns())
        with self._lock:
            if event_ns > self._seen:
                self._seen = event_ns

    @property
    def seen_ns(self) -> int:
        """The latest event time observed (0: none yet)."""
        with self._lock:
            return self._seen

    def now_ns(self) -> int:
        with self._lock:
            now = self._seen - self.lateness_ns if self._seen else 0
        if self.wall is not None and self.idle_ns is not None:
            now = max(now, self.wall.now_ns() - self.idle_ns)
        return now
