"""One anomaly as the notifiers see it: built from the observer's changes (live) or from the
``anomalies`` table (restart), and the links a person follows from an alert."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, replace
from typing import Any

from analytics.write.observer import Changes


@dataclass(frozen=True, slots=True)
class Anomaly:
    anomaly_id: str
    workflow: str
    instance_key: str
    kind: str
    step: str
    severity: str
    message: str
    action: str
    opened_ns: int
    #: (trace id, span id, what) of each piece of evidence
    evidence: tuple[tuple[str, str, str], ...]
    resolved_ns: int | None = None

    def resolved(self, at_ns: int) -> Anomaly:
        return replace(self, resolved_ns=max(at_ns, self.opened_ns))

    @property
    def trace_id(self) -> str:
        return self.evidence[0][0] if self.evidence else ""

    @property
    def span_id(self) -> str:
        return self.evidence[0][1] if self.evidence else ""


#: the columns ``from_row`` reads, in order
COLUMNS = (
    "anomaly_id, workflow, instance_key, kind, step, severity, message, suggested_action, "
    "epoch_ns(opened_at), epoch_ns(resolved_at), evidence"
)


def from_row(row: tuple[Any, ...]) -> Anomaly:
    aid, workflow, key, kind, step, severity, message, action, opened, resolved, evidence = row
    return Anomaly(
        aid, workflow, key, kind, step, severity, message, action, int(opened),
        tuple((e["trace_id"], e["span_id"], e["what"]) for e in evidence or ()),
        None if resolved is None else int(resolved),
    )  # fmt: skip


def from_changes(changes: Changes) -> tuple[list[Anomaly], list[tuple[str, int]]]:
    """The anomalies opened (and still open) by one commit, and those it resolved, with when.
    An anomaly born resolved (a condition already reconciled when it was judged) is history:
    nobody is alerted about it."""
    opened = [
        Anomaly(
            aid,
            inst[0],
            inst[1],
            f.kind.value,
            f.step,
            f.severity.value,
            f.message,
            f.action,
            f.since_ns,
            tuple((e.trace_id, e.span_id, e.what) for e in f.evidence),
        )
        for inst, f, aid in changes.opened
        if f.resolved_ns is None
    ]
    return opened, list(changes.resolved)


@dataclass(frozen=True, slots=True)
class Links:
    """Where a person goes from an alert: the evidence trace (a template with ``{trace_id}``,
    e.g. Jaeger's ``http://jaeger:16686/trace/{trace_id}``) and the app's instance page."""

    trace_url: str | None = None
    app_url: str | None = None

    def trace(self, anomaly: Anomaly) -> str:
        return self.trace_of(anomaly.trace_id)

    def trace_of(self, trace_id: str) -> str:
        return self.trace_url.replace("{trace_id}", trace_id) if self.trace_url and trace_id else ""

    def instance(self, anomaly: Anomaly) -> str:
        if not self.app_url:
            return ""
        query = urllib.parse.urlencode({"key": anomaly.instance_key})
        return f"{self.app_url.rstrip('/')}/instance?{query}"
