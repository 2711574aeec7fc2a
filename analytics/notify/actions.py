"""Reconciliation webhooks (opt-in, per workflow/step and anomaly kind in the model): once an
anomaly has stayed open ``after`` (at the watermark), POST a JSON request to the action's URL
with ``Idempotency-Key`` = the anomaly id, and record every attempt in ``action_deliveries``.

Safety: at most one 2xx per anomaly, across restarts (the attempts are restored from the table;
should the process die between a 2xx and its record, the retry carries the same key, so the
receiver can tell); a 4xx is final; 5xx, timeouts and refused connections are retried with
backoff up to ``max_attempts``; an anomaly that resolves meanwhile is not acted on any more
(``cancelled``); ``dry_run`` records what would have been sent, and sends nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from analytics.common.telemetry import Telemetry
from analytics.notify.anomaly import Anomaly, Links
from analytics.notify.targets import post_json, rfc3339
from analytics.notify.worker import Backoff, Worker
from analytics.write.store import Store
from processors.clock import Clock
from processors.matching import CompiledModel
from processors.model import ActionSpec
from processors.types import AnomalyKind

log = logging.getLogger(__name__)

ATTEMPTS = pa.schema(
    [
        ("anomaly_id", pa.string()),
        ("workflow", pa.string()),
        ("instance_key", pa.string()),
        ("kind", pa.string()),
        ("step", pa.string()),
        ("url", pa.string()),
        ("attempt", pa.int32()),
        ("outcome", pa.string()),
        ("final", pa.bool_()),
        ("response_code", pa.int32()),
        ("error", pa.string()),
        ("attempted_at", pa.timestamp("us")),
    ]
)


@dataclass(slots=True)
class Progress:
    attempts: int = 0
    backoff: Backoff = field(default_factory=lambda: Backoff(1.0, 60.0))


class ActionRunner(Worker):
    name = "coordstate-actions"

    def __init__(
        self,
        store: Store,
        model: CompiledModel,
        clock: Clock,
        telemetry: Telemetry,
        links: Links,
        *,
        dry_run: bool = False,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        wall_ns: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(store, telemetry, monotonic)
        self.model = model
        self.clock = clock
        self.links = links
        self.dry_run = dry_run
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.wall_ns = wall_ns
        self.done: set[str] = set()
        self.progress: dict[str, Progress] = {}
        #: open anomalies with a webhook, not done: all that a pass looks at
        self.waiting: dict[str, tuple[Anomaly, ActionSpec]] = {}
        self._specs: dict[tuple[str, str, str], ActionSpec | None] = {}

    def spec(self, a: Anomaly) -> ActionSpec | None:
        """The webhook action for ``a`` (by workflow, kind and step; looked up once each)."""
        key = (a.workflow, a.kind, a.step)
        if key not in self._specs:
            wf = self.model.workflows.get(a.workflow)
            known = wf is not None and a.kind in AnomalyKind.__members__.values()
            self._specs[key] = wf.webhook(AnomalyKind(a.kind), a.step) if wf is not None and known else None
        return self._specs[key]

    def admitted(self, a: Anomaly) -> None:
        spec = self.spec(a)
        if spec is not None and a.anomaly_id not in self.done:
            self.waiting[a.anomaly_id] = (a, spec)

    def restore(self, cur: Any) -> None:
        for aid, attempts, final in cur.execute(
            "SELECT anomaly_id, max(attempt), bool_or(final) FROM action_deliveries GROUP BY anomaly_id"
        ).fetchall():
            if final:
                self.done.add(aid)
            else:
                self.progress[aid] = Progress(int(attempts), Backoff(self.backoff_s, self.max_backoff_s))

    def resolved(self, gone: Anomaly) -> None:
        self.waiting.pop(gone.anomaly_id, None)
        progress = self.progress.pop(gone.anomaly_id, None)
        spec = self.spec(gone)
        if progress is not None and progress.attempts and spec is not None and gone.anomaly_id not in self.done:
            self.done.add(gone.anomaly_id)
            self._record(gone, spec, progress.attempts, "cancelled", True, None, "the anomaly resolved")

    def _pass(self) -> None:
        watermark = self.clock.now_ns()
        now = self.monotonic()
        for aid, (a, spec) in list(self.waiting.items()):
            if watermark < a.opened_ns + spec.after:
                continue
            progress = self.progress.setdefault(aid, Progress(0, Backoff(self.backoff_s, self.max_backoff_s)))
            if progress.backoff.ready(now):
                self._attempt(a, spec, progress, now)

    def _attempt(self, a: Anomaly, spec: ActionSpec, progress: Progress, now: float) -> None:
        assert spec.webhook is not None
        if self.dry_run:
            self.done.add(a.anomaly_id)
            self.waiting.pop(a.anomaly_id, None)
            self._record(a, spec, 0, "dry_run", True, None, "")
            return
        progress.attempts += 1
        attempt = progress.attempts
        try:
            code: int | None = post_json(
                spec.webhook,
                self.body(a, attempt),
                spec.timeout / 1e9,
                {"Idempotency-Key": a.anomaly_id, "X-Coordstate-Attempt": str(attempt)},
            )
            error = ""
        except OSError as exc:
            code, error = None, str(getattr(exc, "reason", exc))
        if code is not None and 200 <= code < 300:
            outcome, final = "sent", True
        elif code is not None and 400 <= code < 500 and code not in (408, 429):
            outcome, final, error = "rejected", True, f"HTTP {code}: the receiver refused the request; not retried"
        else:
            error = error or f"HTTP {code}"
            final = attempt >= spec.max_attempts
            outcome = "gave_up" if final else "failed"
            progress.backoff.failed(now)
        if final:
            self.done.add(a.anomaly_id)
            self.waiting.pop(a.anomaly_id, None)
            self.progress.pop(a.anomaly_id, None)
        self.telemetry.add(f"action_requests:{outcome}")
        self._record(a, spec, attempt, outcome, final, code, error)

    def body(self, a: Anomaly, attempt: int) -> dict[str, object]:
        """The request (README: "Alerting and actions", the webhook contract)."""
        return {
            "anomaly": {
                "id": a.anomaly_id,
                "kind": a.kind,
                "workflow": a.workflow,
                "instance_key": a.instance_key,
                "step": a.step,
                "severity": a.severity,
                "opened_at": rfc3339(a.opened_ns),
                "message": a.message,
            },
            "action": a.action,
            "instance": self._instance(a),
            "evidence": [
                {"trace_id": t, "span_id": s, "what": w, "trace_url": self.links.trace_of(t)} for t, s, w in a.evidence
            ],
            "links": {"instance": self.links.instance(a), "trace": self.links.trace(a)},
            "attempt": attempt,
        }

    def _instance(self, a: Anomaly) -> dict[str, object] | None:
        cur = self.store.cursor()
        try:
            row = cur.execute(
                "SELECT status, steps, strftime(started_at, '%Y-%m-%dT%H:%M:%S.%gZ'), "
                "strftime(updated_at, '%Y-%m-%dT%H:%M:%S.%gZ'), open_anomalies, trace_ids "
                "FROM instances WHERE workflow = ? AND instance_key = ?",
                [a.workflow, a.instance_key],
            ).fetchone()
        finally:
            cur.close()
        if row is None:
            return None
        return {
            "workflow": a.workflow,
            "key": a.instance_key,
            "status": row[0],
            "steps": dict(row[1]),
            "started_at": row[2],
            "updated_at": row[3],
            "open_anomalies": row[4],
            "trace_ids": list(row[5]),
        }

    def _record(
        self, a: Anomaly, spec: ActionSpec, attempt: int, outcome: str, final: bool, code: int | None, error: str
    ) -> None:
        self.record(
            "action_deliveries",
            {
                "anomaly_id": [a.anomaly_id],
                "workflow": [a.workflow],
                "instance_key": [a.instance_key],
                "kind": [a.kind],
                "step": [a.step],
                "url": [spec.webhook or ""],
                "attempt": [attempt],
                "outcome": [outcome],
                "final": [final],
                "response_code": [code],
                "error": [error],
                "attempted_at": [self.wall_ns() // 1000],
            },
            ATTEMPTS,
        )
