"""Alert delivery: every open anomaly reaches every target at least once, and its resolution
too — from a durable outbox that *is* the database: the open rows of ``anomalies``, minus what
``alert_deliveries`` says each target was told. A crash between opening an anomaly and telling a
target costs nothing: after the restart the anomaly is still open and still untold.

A down target is retried with backoff on this thread; ingest never waits for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa

from analytics.common.telemetry import Telemetry
from analytics.notify import anomaly
from analytics.notify.anomaly import Anomaly
from analytics.notify.targets import AlertTarget, DeliveryError
from analytics.notify.worker import Backoff, Worker
from analytics.write.store import Store

log = logging.getLogger(__name__)

DELIVERIES = pa.schema(
    [
        ("anomaly_id", pa.string()),
        ("workflow", pa.string()),
        ("instance_key", pa.string()),
        ("target", pa.string()),
        ("event", pa.string()),
        ("attempts", pa.int32()),
        ("delivered_at", pa.timestamp("us")),
    ]
)


class TargetState:
    """What one target was told: anomalies told open (not yet told resolved), resolutions owed."""

    def __init__(self, target: AlertTarget, backoff: Backoff) -> None:
        self.target = target
        self.backoff = backoff
        self.told_open: set[str] = set()
        self.owed: dict[str, Anomaly] = {}  # resolved, told open, not yet told resolved
        self.last_resend = float("-inf")


class AlertDispatcher(Worker):
    name = "coordstate-alerts"

    def __init__(
        self,
        store: Store,
        targets: Sequence[AlertTarget],
        telemetry: Telemetry,
        *,
        resend_s: float = 60.0,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        wall_ns: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(store, telemetry, monotonic)
        self.resend_s = resend_s
        self.wall_ns = wall_ns
        self.targets = [TargetState(t, Backoff(backoff_s, max_backoff_s)) for t in targets]

    def restore(self, cur: Any) -> None:
        for state in self.targets:
            told = cur.execute(
                "SELECT DISTINCT d.anomaly_id FROM alert_deliveries d JOIN anomalies a USING (anomaly_id) "
                "WHERE d.target = ? AND d.event = 'opened' AND a.resolved_at IS NULL",
                [state.target.name],
            ).fetchall()
            state.told_open = {aid for (aid,) in told if aid in self.open}
            owed = cur.execute(
                f"SELECT {anomaly.COLUMNS} FROM anomalies a WHERE a.resolved_at IS NOT NULL "
                "AND anomaly_id IN (SELECT anomaly_id FROM alert_deliveries WHERE target = ? AND event = 'opened') "
                "AND anomaly_id NOT IN (SELECT anomaly_id FROM alert_deliveries WHERE target = ? AND event = 'resolved')",
                [state.target.name, state.target.name],
            ).fetchall()
            state.owed = {a.anomaly_id: a for a in map(anomaly.from_row, owed)}
        self._publish()

    def resolved(self, gone: Anomaly) -> None:
        for state in self.targets:
            if gone.anomaly_id in state.told_open:
                state.told_open.discard(gone.anomaly_id)
                state.owed[gone.anomaly_id] = gone

    def _pass(self) -> None:
        now = self.monotonic()
        for state in self.targets:
            if state.backoff.ready(now):
                self._deliver(state, now)
        self._publish()

    def _deliver(self, state: TargetState, now: float) -> None:
        new = [a for aid, a in self.open.items() if aid not in state.told_open]
        resend = state.target.resends and now - state.last_resend >= self.resend_s
        again = [a for aid, a in self.open.items() if aid in state.told_open] if resend else []
        owed = list(state.owed.values())
        if not (new or again or owed):
            return
        try:
            state.target.send([*new, *again], owed, self.wall_ns())
        except DeliveryError as exc:
            if not exc.permanent:
                state.backoff.failed(now)
                self.telemetry.add("alert_delivery_failures")
                log.warning("alerts not delivered (attempt %d), retrying with backoff: %s", state.backoff.failures, exc)
                return
            log.error("alerts refused, not sent again: %s", exc)  # counted; recorded as not delivered
            self.telemetry.add("alerts_refused", len(new) + len(owed))
            state.told_open.update(a.anomaly_id for a in new)
            state.owed.clear()
            return
        attempts = state.backoff.failures + 1
        state.backoff.succeeded()
        if resend:
            state.last_resend = now
        state.told_open.update(a.anomaly_id for a in new)
        state.owed.clear()
        self._record(state.target.name, [(a, "opened") for a in new] + [(a, "resolved") for a in owed], attempts)
        self.telemetry.add("alerts_delivered", len(new) + len(owed))

    def _record(self, target: str, events: list[tuple[Anomaly, str]], attempts: int) -> None:
        if not events:
            return
        at = self.wall_ns() // 1000
        self.record(
            "alert_deliveries",
            {
                "anomaly_id": [a.anomaly_id for a, _ in events],
                "workflow": [a.workflow for a, _ in events],
                "instance_key": [a.instance_key for a, _ in events],
                "target": [target] * len(events),
                "event": [e for _, e in events],
                "attempts": [attempts] * len(events),
                "delivered_at": [at] * len(events),
            },
            DELIVERIES,
        )

    def _publish(self) -> None:
        backlog = sum(len(s.owed) + sum(1 for aid in self.open if aid not in s.told_open) for s in self.targets)
        self.telemetry.set("alert_backlog", backlog)
