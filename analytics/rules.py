"""The observer's rules: pure functions from a folded instance to the anomalies it shows now.

``findings(wf, state, now_ns)`` returns every anomaly that *holds* for the instance at ``now_ns``
(DESIGN.md §5). The observer opens what is new and resolves what no longer holds; the rules know
nothing of storage. Each finding carries a one-sentence message, a suggested action naming the
step, the instance and the evidence, and the evidence itself (trace and span ids).
"""

from __future__ import annotations

import enum
import string
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from processors.fold import Evidence, InstanceState
from processors.model import WorkflowSpec, format_duration
from processors.types import COHERENT_STATUSES, AnomalyKind, InstanceStatus, StepState


class Severity(enum.StrEnum):
    WARNING = "warning"
    CRITICAL = "critical"


SEVERITY: Mapping[AnomalyKind, Severity] = {
    AnomalyKind.MISSING_STEP: Severity.WARNING,
    AnomalyKind.OUT_OF_ORDER: Severity.WARNING,
    AnomalyKind.STALLED: Severity.WARNING,
    AnomalyKind.DUPLICATE_ACTION: Severity.CRITICAL,
    AnomalyKind.CONFLICTING_STATE: Severity.CRITICAL,
    AnomalyKind.UNCOMPENSATED_FAILURE: Severity.CRITICAL,
    AnomalyKind.FAILED_STEP: Severity.WARNING,
}


@dataclass(frozen=True, slots=True)
class EvidenceRef:
    trace_id: str
    span_id: str
    what: str  # e.g. "payment completed"


@dataclass(frozen=True, slots=True)
class Finding:
    kind: AnomalyKind
    step: str
    severity: Severity
    since_ns: int  # when the condition began (deterministic: derived from event times)
    message: str
    action: str
    evidence: tuple[EvidenceRef, ...]
    #: set when the condition held in event time but was already reconciled (kept as history)
    resolved_ns: int | None = None


def clock(ns: int) -> str:
    """``12:00:03.120`` (UTC) — short enough for a sentence."""
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).strftime("%H:%M:%S.%f")[:-3]


def short(span_id: str) -> str:
    return span_id[:8] + "…"


def _ref(ev: Evidence | None, what: str) -> tuple[EvidenceRef, ...]:
    return () if ev is None else (EvidenceRef(ev.trace_id, ev.span_id, what),)


def _first_incomplete(wf: WorkflowSpec, state: InstanceState) -> str:
    for name in wf.required_steps:
        if state.steps[name].state is not StepState.COMPLETED:
            return name
    return wf.required_steps[-1] if wf.required_steps else wf.steps[0].name


def _action(
    wf: WorkflowSpec,
    kind: AnomalyKind,
    step: str,
    key: str,
    detail: str,
    evidence: str,
    default: str,
) -> str:
    spec = next((s for s in wf.steps if s.name == step), None)
    template = (spec.actions.get(kind) if spec else None) or wf.actions.get(kind)
    if not template:
        return default
    fields = {"workflow": wf.name, "key": key, "step": step, "detail": detail, "evidence": evidence}
    return string.Formatter().vformat(template, (), fields)


def findings(wf: WorkflowSpec, state: InstanceState, now_ns: int) -> list[Finding]:
    out: list[Finding] = []
    out += _missing(wf, state, now_ns)
    out += _out_of_order(wf, state, now_ns)
    out += _duplicates(wf, state)
    out += _conflicts(wf, state)
    out += _uncompensated(wf, state, now_ns)
    out += _failed_steps(wf, state)
    out += _stalled(wf, state)
    return out


def _make(
    wf: WorkflowSpec,
    state: InstanceState,
    kind: AnomalyKind,
    step: str,
    since: int,
    message: str,
    detail: str,
    default_action: str,
    evidence: tuple[EvidenceRef, ...],
) -> Finding:
    if not evidence:  # nothing of the step itself was seen: point at the instance's own trace
        first = next((v.started_by for v in state.steps.values() if v.started_by is not None), None)
        evidence = _ref(first, "instance started")
    spans = ", ".join(f"{e.what} span {short(e.span_id)}" for e in evidence) or "no span"
    action = _action(wf, kind, step, state.key, detail, spans, default_action)
    return Finding(kind, step, SEVERITY[kind], since, message, action, evidence)


def _missing(wf: WorkflowSpec, state: InstanceState, now: int) -> list[Finding]:
    if state.status not in (InstanceStatus.RUNNING, InstanceStatus.STALLED) or state.first_failure_ns is not None:
        return []
    out = []
    overdue_instance = now >= state.started_at_ns + wf.deadline
    first_gap = _first_incomplete(wf, state)
    for step in wf.steps:
        view = state.steps[step.name]
        if step.optional or view.state is StepState.COMPLETED:
            continue
        due = state.started_at_ns + step.deadline if step.deadline is not None else None
        if due is not None and now >= due:
            since = due
        elif overdue_instance and step.name == first_gap:
            since = state.started_at_ns + wf.deadline
        else:
            continue
        budget = format_duration(since - state.started_at_ns)
        seen = "started but never completed" if view.state is not None else "never seen"
        detail = f"{step.name} {seen} within {budget} of {clock(state.started_at_ns)}"
        out.append(
            _make(
                wf, state, AnomalyKind.MISSING_STEP, step.name, since,
                f"{wf.name} {state.key}: {detail}.",
                detail,
                f"re-drive {step.name} of {state.key}: {detail}",
                _ref(view.started_by, f"{step.name} started"),
            )
        )  # fmt: skip
    return out


def _out_of_order(wf: WorkflowSpec, state: InstanceState, now: int) -> list[Finding]:
    """A step started before its requirement held in event time.

    A requirement not seen at all may simply not have *arrived* yet (spans come in any order), so
    it counts only once ``grace`` has passed since the step started. Open while the instance is
    not coherent; once it is, kept as history (opened and resolved).
    """
    out = []
    seen: set[str] = set()
    coherent = state.status in COHERENT_STATUSES
    for v in state.violations:
        if v.step in seen or (v.requirement_ns is None and now - v.at.time_ns < wf.grace):
            continue
        seen.add(v.step)
        detail = f"{v.step} started at {clock(v.at.time_ns)} before {v.requirement} held"
        finding = _make(
            wf, state, AnomalyKind.OUT_OF_ORDER, v.step, v.at.time_ns,
            f"{wf.name} {state.key}: {detail}.",
            detail,
            f"hold {v.step} of {state.key} and verify {v.requirement}: {detail} (span {short(v.at.span_id)})",
            _ref(v.at, f"{v.step} started"),
        )  # fmt: skip
        if coherent:
            finding = replace(finding, resolved_ns=max(v.at.time_ns, state.converged_at_ns or v.at.time_ns))
        out.append(finding)
    return out


def _duplicates(wf: WorkflowSpec, state: InstanceState) -> list[Finding]:
    out = []
    for name, view in state.steps.items():
        if len(view.completions) < 2 or view.state is StepState.COMPENSATED:
            continue
        first, second = sorted(view.completions, key=lambda e: (e.time_ns, e.span_id))[:2]
        detail = (
            f"{name} completed twice: at {clock(first.time_ns)} (span {short(first.span_id)}) "
            f"and at {clock(second.time_ns)} (span {short(second.span_id)})"
        )
        comp = wf.step(name).compensated_by
        undo = f"run {comp} for the second {name}" if comp else f"reverse the second {name}"
        out.append(
            _make(
                wf, state, AnomalyKind.DUPLICATE_ACTION, name, second.time_ns,
                f"{wf.name} {state.key}: {detail}.",
                detail,
                f"{undo} of {state.key} (span {short(second.span_id)}); keep the first (span {short(first.span_id)})",
                (EvidenceRef(first.trace_id, first.span_id, f"{name} completed"),
                 EvidenceRef(second.trace_id, second.span_id, f"{name} completed again")),
            )
        )  # fmt: skip
    return out


def _conflicts(wf: WorkflowSpec, state: InstanceState) -> list[Finding]:
    out = []
    for a, b in state.conflicts:
        sa, sb = a.partition(".")[0], b.partition(".")[0]
        va, vb = state.steps[sa], state.steps[sb]
        since = max(va.since_ns or 0, vb.since_ns or 0)
        detail = f"{a} and {b} both hold (since {clock(since)})"
        evidence = _ref(va.completions[-1] if va.completions else va.started_by, a) + _ref(
            vb.completions[-1] if vb.completions else vb.started_by, b
        )
        out.append(
            _make(
                wf, state, AnomalyKind.CONFLICTING_STATE, sa, since,
                f"{wf.name} {state.key}: {detail}.",
                detail,
                f"reconcile {state.key} by hand: {detail}; decide which of {sa} and {sb} stands",
                evidence,
            )
        )  # fmt: skip
    return out


def _uncompensated(wf: WorkflowSpec, state: InstanceState, now: int) -> list[Finding]:
    failed = [(n, v) for n, v in state.steps.items() if v.state is StepState.FAILED]
    if not failed or state.first_failure_ns is None or state.status is InstanceStatus.DEGRADED:
        return []
    since = state.first_failure_ns + wf.grace
    if now < since:
        return []
    fname, fview = failed[0]
    out = []
    for step in wf.steps:
        view = state.steps[step.name]
        if not step.compensated_by or view.state is not StepState.COMPLETED:
            continue
        done = view.completions[-1] if view.completions else None
        at = f" at {clock(done.time_ns)} (span {short(done.span_id)})" if done else ""
        detail = (
            f"{step.name} completed{at} but {fname} failed and no {step.compensated_by} ran "
            f"within {format_duration(wf.grace)}"
        )
        out.append(
            _make(
                wf, state, AnomalyKind.UNCOMPENSATED_FAILURE, step.name, since,
                f"{wf.name} {state.key}: {detail}.",
                detail,
                f"run {step.compensated_by} for {step.name} of {state.key}: {detail}",
                _ref(done, f"{step.name} completed") + _ref(fview.failures[-1] if fview.failures else None, f"{fname} failed"),
            )
        )  # fmt: skip
    return out


def _failed_steps(wf: WorkflowSpec, state: InstanceState) -> list[Finding]:
    """The process went past a failed step (``degraded``): the step needs a retry, not an undo.

    Open until the step completes (a retry that succeeds makes the instance ``converged``).
    """
    if state.status is not InstanceStatus.DEGRADED:
        return []
    out = []
    for name, view in state.steps.items():
        if view.state is not StepState.FAILED:
            continue
        failure = view.failures[-1] if view.failures else None
        since = failure.time_ns if failure is not None else (view.since_ns or state.started_at_ns)
        detail = f"{name} failed at {clock(since)} and {wf.name} went on without it"
        out.append(
            _make(
                wf, state, AnomalyKind.FAILED_STEP, name, since,
                f"{wf.name} {state.key}: {detail}.",
                detail,
                f"retry {name} of {state.key}: {detail}",
                _ref(failure, f"{name} failed"),
            )
        )  # fmt: skip
    return out


def _stalled(wf: WorkflowSpec, state: InstanceState) -> list[Finding]:
    if state.status is not InstanceStatus.STALLED:
        return []
    gap = _first_incomplete(wf, state)
    since = state.history[-1][1]
    detail = f"no coherent end within {format_duration(wf.deadline)} of {clock(state.started_at_ns)}; first incomplete step: {gap}"
    return [
        _make(
            wf, state, AnomalyKind.STALLED, gap, since,
            f"{wf.name} {state.key} is stalled: {detail}.",
            detail,
            f"re-drive {state.key} from {gap}: {detail}",
            _ref(state.steps[gap].started_by, f"{gap} started"),
        )
    ]  # fmt: skip
