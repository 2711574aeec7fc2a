"""Self-telemetry: counters and gauges of the pipeline, cheap to bump from any thread.

Hot paths add counts per batch (never per span) and never log. ``snapshot()`` gives a consistent
copy for ``/metrics`` and the app.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from dataclasses import dataclass, field

#: the window of a rate gauge (``sample_rate``)
RATE_WINDOW_S = 10.0


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
    _samples: dict[str, deque[tuple[float, int]]] = field(default_factory=dict, repr=False)

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

    def sample_rate(self, counter: str, gauge: str, now_s: float) -> None:
        """Set ``gauge`` to ``counter``'s rate per second over the last RATE_WINDOW_S seconds
        (sampled by the writer's loop, so the first scrape already has a rate)."""
        with self._lock:
            samples = self._samples.setdefault(counter, deque())
            samples.append((now_s, self.counters[counter]))
            while len(samples) > 2 and now_s - samples[1][0] >= RATE_WINDOW_S:
                samples.popleft()
            (t0, c0), (t1, c1) = samples[0], samples[-1]
            self.gauges[gauge] = (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0

    def snapshot(self) -> TelemetrySnapshot:
        with self._lock:
            return TelemetrySnapshot(dict(self.counters), dict(self.rejected), dict(self.dropped), dict(self.gauges))
