"""Self-telemetry: counters and gauges of the pipeline, cheap to bump from any thread.

Hot paths add counts per batch (never per span) and never log. ``snapshot()`` gives a consistent
copy for ``/metrics`` and the app.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class TelemetrySnapshot:
    counters: dict[str, int]
    rejected: dict[str, int]
    dropped: dict[str, int]
    gauges: dict[str, float]


@dataclass
class Telemetry:
    """Thread-safe counters. Names are stable: they become Prometheus metric names."""

    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    counters: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)  # by reason
    dropped: Counter[str] = field(default_factory=Counter)  # unmatched, unkeyed, orphan, duplicate
    gauges: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, value: int = 1) -> None:
        with self._lock:
            self.counters[name] += value

    def add_rejected(self, reasons: Counter[str]) -> None:
        if reasons:
            with self._lock:
                self.rejected.update(reasons)

    def add_dropped(self, reasons: Counter[str]) -> None:
        if reasons:
            with self._lock:
                self.dropped.update({str(k): v for k, v in reasons.items()})

    def set(self, name: str, value: float) -> None:
        with self._lock:
            self.gauges[name] = value

    def snapshot(self) -> TelemetrySnapshot:
        with self._lock:
            return TelemetrySnapshot(dict(self.counters), dict(self.rejected), dict(self.dropped), dict(self.gauges))
