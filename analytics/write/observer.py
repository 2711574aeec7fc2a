"""The coordination observer: opens and resolves anomalies inside the writer's transaction.

The store calls :meth:`Observer.plan` with every instance it just re-folded (after a batch, or
when a deadline/grace timer fell due) and :meth:`Observer.write` inside the transaction that
commits them. The rules (``processors/rules.py``) say what holds now;
this class opens what is new, resolves what no longer holds — the row keeps ``opened_at`` and
``resolved_at``, so "healed by itself, after how long" is one query — and never keeps two open
anomalies for the same (instance, kind, step).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from analytics.common.telemetry import Telemetry
from processors.fold import InstanceState
from processors.matching import CompiledModel
from processors.rules import Finding, findings
from processors.state import InstanceId
from processors.types import AnomalyKind

EVIDENCE = pa.list_(pa.struct([("trace_id", pa.string()), ("span_id", pa.string()), ("what", pa.string())]))


@dataclass(frozen=True, slots=True)
class OpenAnomaly:
    anomaly_id: str
    kind: str


def anomaly_id(inst: InstanceId, f: Finding) -> str:
    """Deterministic: the same condition, from the same event time, is the same anomaly."""
    raw = f"{inst[0]}|{inst[1]}|{f.kind.value}|{f.step}|{f.since_ns}"
    return hashlib.sha1(raw.encode(), usedforsecurity=False).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Changes:
    """Anomalies to open and to resolve after one step, and open counts per re-folded instance."""

    opened: list[tuple[InstanceId, Finding, str]]
    resolved: list[tuple[str, int]]
    counts: dict[InstanceId, int]


class Observer:
    def __init__(self, model: CompiledModel, telemetry: Telemetry | None = None) -> None:
        self.model = model
        self.telemetry = telemetry or Telemetry()
        self._open: dict[InstanceId, dict[tuple[str, str], OpenAnomaly]] = {}
        #: open anomalies per kind, kept as they open and resolve (never recounted: 285k open at 40M)
        self._counts: Counter[str] = Counter()

    def restore(self, con: Any) -> None:
        self._open.clear()
        rows = con.execute(
            "SELECT workflow, instance_key, kind, step, anomaly_id FROM anomalies WHERE resolved_at IS NULL"
        ).fetchall()
        for wf, key, kind, step, aid in rows:
            self._open.setdefault((wf, key), {})[(kind, step)] = OpenAnomaly(aid, kind)
        self._counts = Counter(a.kind for per in self._open.values() for a in per.values())
        self._publish()

    def forget(self, instance: InstanceId) -> list[str]:
        """The instance's history was deleted (retention): the ids of its anomalies still open."""
        gone = list(self._open.pop(instance, {}).values())
        self._counts.subtract(a.kind for a in gone)
        return [a.anomaly_id for a in gone]

    def open_counts(self) -> Counter[str]:
        return +self._counts

    def plan(self, states: Sequence[InstanceState], now_ns: int) -> Changes:
        """What opens and resolves, given these re-folded instances (updates the open set in memory)."""
        opened: list[tuple[InstanceId, Finding, str]] = []
        resolved: list[tuple[str, int]] = []
        counts: dict[InstanceId, int] = {}
        for state in states:
            inst = (state.workflow, state.key)
            wf = self.model.workflows[state.workflow]
            current = {(f.kind.value, f.step): f for f in findings(wf, state, now_ns)}
            known = self._open.get(inst, {})
            for k, f in current.items():
                if f.resolved_ns is not None:  # held in event time, already reconciled: history
                    if k in known:
                        resolved.append((self._close(known, k), f.resolved_ns))
                    else:
                        opened.append((inst, f, anomaly_id(inst, f)))
                elif k not in known:
                    aid = anomaly_id(inst, f)
                    known[k] = OpenAnomaly(aid, f.kind.value)
                    self._counts[f.kind.value] += 1
                    opened.append((inst, f, aid))
            for k in [k for k in known if k not in current]:
                resolved.append((self._close(known, k), now_ns))
            if known:
                self._open[inst] = known
            else:
                self._open.pop(inst, None)
            counts[inst] = len(known)
        self._publish()
        return Changes(opened, resolved, counts)

    def _close(self, known: dict[tuple[str, str], OpenAnomaly], k: tuple[str, str]) -> str:
        gone = known.pop(k)
        self._counts[gone.kind] -= 1
        return gone.anomaly_id

    def write(self, con: Any, changes: Changes, now_ns: int) -> None:
        """Write planned changes (inside the caller's transaction)."""
        if changes.opened:
            self._insert(con, changes.opened, now_ns)
        if changes.resolved:
            self._resolve(con, changes.resolved, now_ns)
        self.telemetry.add("anomalies_opened", len(changes.opened))
        self.telemetry.add("anomalies_resolved", len(changes.resolved))

    def _publish(self) -> None:
        counts = self.open_counts()
        for kind in AnomalyKind:
            self.telemetry.set(f"open_anomalies:{kind}", counts.get(kind, 0))

    @staticmethod
    def _insert(con: Any, opened: list[tuple[InstanceId, Finding, str]], now_ns: int) -> None:
        table = pa.table(
            {
                "anomaly_id": pa.array([aid for _, _, aid in opened], pa.string()),
                "workflow": pa.array([i[0] for i, _, _ in opened], pa.string()),
                "instance_key": pa.array([i[1] for i, _, _ in opened], pa.string()),
                "kind": pa.array([f.kind.value for _, f, _ in opened], pa.string()),
                "step": pa.array([f.step for _, f, _ in opened], pa.string()),
                "severity": pa.array([f.severity.value for _, f, _ in opened], pa.string()),
                "opened_at": pa.array([f.since_ns // 1000 for _, f, _ in opened], pa.timestamp("us")),
                "resolved_at": pa.array(
                    [None if f.resolved_ns is None else f.resolved_ns // 1000 for _, f, _ in opened],
                    pa.timestamp("us"),
                ),
                "message": pa.array([f.message for _, f, _ in opened], pa.string()),
                "suggested_action": pa.array([f.action for _, f, _ in opened], pa.string()),
                "evidence": pa.array(
                    [
                        [{"trace_id": e.trace_id, "span_id": e.span_id, "what": e.what} for e in f.evidence]
                        for _, f, _ in opened
                    ],
                    EVIDENCE,
                ),
                "detected_at": pa.array([now_ns // 1000] * len(opened), pa.timestamp("us")),
            }
        )
        # the id is a hash of (instance, kind, step, since): a stored twin has the same opened_at,
        # so row groups (files, in a lake) that end before the oldest one here are never read
        oldest = min(f.since_ns for _, f, _ in opened) // 1000
        con.register("_batch_anomalies", table)
        con.execute(
            "INSERT INTO anomalies BY NAME SELECT * FROM _batch_anomalies b WHERE NOT EXISTS (SELECT 1 FROM "
            "anomalies a WHERE a.opened_at >= make_timestamp(?) AND a.anomaly_id = b.anomaly_id)",
            [oldest],
        )
        con.unregister("_batch_anomalies")

    @staticmethod
    def _resolve(con: Any, resolved: list[tuple[str, int]], now_ns: int) -> None:
        table = pa.table(
            {
                "anomaly_id": pa.array([aid for aid, _ in resolved], pa.string()),
                "at": pa.array([at // 1000 for _, at in resolved], pa.timestamp("us")),
            }
        )
        con.register("_batch_resolved", table)
        con.execute(
            "UPDATE anomalies SET resolved_at = greatest(opened_at, r.at) "
            "FROM _batch_resolved r WHERE anomalies.anomaly_id = r.anomaly_id AND anomalies.resolved_at IS NULL"
        )
        con.unregister("_batch_resolved")
