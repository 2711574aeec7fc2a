"""Clocks are injected, never read directly: wall time when serving, event time when replaying."""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now_ns(self) -> int:
        """Current time in nanoseconds since the epoch."""
        ...


class WallClock:
    def now_ns(self) -> int:
        return time.time_ns()


class WatermarkClock:
    """Event-time clock: the maximum event time seen so far (replays are deterministic)."""

    def __init__(self, start_ns: int = 0) -> None:
        self._now = start_ns
        self._lock = threading.Lock()

    def advance(self, event_ns: int) -> None:
        with self._lock:
            if event_ns > self._now:
                self._now = event_ns

    def now_ns(self) -> int:
        with self._lock:
            return self._now


class ManualClock(WatermarkClock):
    """A clock tests set by hand (it may also go forward through ``advance``)."""

    def set(self, now_ns: int) -> None:
        with self._lock:
            self._now = now_ns
