"""The observer's rules: pure functions from a folded instance to the anomalies it shows now.

``findings(wf, state, now_ns)`` returns every anomaly that *holds* for the instance at ``now_ns``
(docs/architecture.md), and those that held in event time and were already reconciled (``resolved_ns``
set: a payment that completed after its deadline was missing from the deadline until it
completed). ``now_ns`` is the event-time watermark: a condition is judged only once the watermark
has passed the moment it begins, and when it ends is read from the transitions, never from the
arrival of the batch that showed it. So the anomaly history depends on the transitions alone, not
on the order or the batches they came in. The observer opens what is new and resolves what no
longer holds; the rules know nothing of storage. Each finding carries a one-sentence message, a suggested action naming the
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
from processors.types import COHERENT_STATUSES, TERMINAL_STATUSES, AnomalyKind, InstanceStatus, StepState


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


def _completed_at(state: InstanceState, step: str) -> int | None:
    """When the step first completed (None: never)."""
    return state.steps[step].first_ns.get(StepState.COMPLETED)


def _first_gap_at(wf: WorkflowSpec, state: InstanceState, t: int) -> str | None:
    """The first required step not completed by event time ``t`` (None: all were)."""
    for name in wf.required_steps:
        done = _completed_at(state, name)
        if done is None or done > t:
            return name
    return None


def _action(
    wf: WorkflowSpec,
    kind: AnomalyKind,
    step: str,
    key: str,
    detail: str,
    evidence: str,
    default: str,
) -> str:
    template = wf.action_text(kind, step)
    if not template:
        return default
    fields = {"workflow": wf.name, "key": key, "step": step, "detail": detail, "evidence": evidence}
    return string.Formatter().vformat(template, (), fields)


def due_times(wf: WorkflowSpec, state: InstanceState) -> list[int]:
    """Every event time at which this instance's status or findings may change with no new
    transition: the one place that says when an instance is next due (the store schedules a
    re-fold at each; a new timed rule adds its time here, or it never fires between transitions).

    The fold's own timers (deadline, failure + grace) are among them; a finished instance with
    nothing failed keeps only the times of rules about its past (a step that completed after its
    deadline is judged once the watermark reaches that deadline).
    """
    out: list[int] = []
    start = state.started_at_ns
    if state.status not in TERMINAL_STATUSES or state.first_failure_ns is not None:
        out.append(start + wf.deadline)
        if state.first_failure_ns is not None:
            out.append(state.first_failure_ns + wf.grace)
    for step in wf.steps:
        if step.deadline is not None and not step.optional:
            done = _completed_at(state, step.name)
            if done is None or done > start + step.deadline:
                out.append(start + step.deadline)
    out.extend(v.at.time_ns + wf.grace for v in state.violations if v.requirement_ns is None)
    return out


def findings(wf: WorkflowSpec, state: InstanceState, now_ns: int) -> list[Finding]:
    out: list[Finding] = []
    out += _missing(wf, state, now_ns)
    out += _out_of_order(wf, state, now_ns)
    out += _duplicates(wf, state)
    out += _conflicts(wf, state)
    out += _uncompensated(wf, state, now_ns)
    out += _failed_steps(wf, state)
    out += _stalled(wf, state, now_ns)
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
    """A required step not completed by its deadline (or, for the first such step, the
    instance's). Held from the deadline until the step completed or something failed (the
    failure rules take over); a step that completed late is kept as history."""
    out = []
    start, failed_at = state.started_at_ns, state.first_failure_ns
    gap_due = start + wf.deadline
    gap = _first_gap_at(wf, state, gap_due)
    for step in wf.steps:
        if step.optional:
            continue
        view = state.steps[step.name]
        done = _completed_at(state, step.name)
        due = start + step.deadline if step.deadline is not None else None
        if due is None or (done is not None and done <= due):
            if step.name != gap:
                continue
            due = gap_due
        if now < due or (failed_at is not None and failed_at <= due):
            continue
        ends = [t for t in (done, failed_at) if t is not None]
        budget = format_duration(due - start)
        seen = "started but never completed" if view.state is not None else "never seen"
        if done is not None:
            seen = f"completed only at {clock(done)}"
        detail = f"{step.name} {seen} within {budget} of {clock(start)}"
        finding = _make(
            wf, state, AnomalyKind.MISSING_STEP, step.name, due,
            f"{wf.name} {state.key}: {detail}.",
            detail,
            f"re-drive {step.name} of {state.key}: {detail}",
            _ref(view.started_by, f"{step.name} started"),
        )  # fmt: skip
        out.append(replace(finding, resolved_ns=min(ends)) if ends else finding)
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
    """A step completed twice with different spans. Open until the step is compensated; then
    history, resolved when the compensation completed (event time)."""
    out = []
    for name, view in state.steps.items():
        if len(view.completions) < 2:
            continue
        first, second = sorted(view.completions, key=lambda e: (e.time_ns, e.span_id))[:2]
        undone = view.since_ns if view.state is StepState.COMPENSATED else None
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
        if undone is not None:
            out[-1] = replace(out[-1], resolved_ns=max(undone, second.time_ns))
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
    """A step failed and completed steps with a ``compensated_by`` were not undone within
    ``grace``. Held until the compensation ran (then kept as history)."""
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
        if not step.compensated_by or view.state not in (StepState.COMPLETED, StepState.COMPENSATED):
            continue
        undone = view.since_ns if view.state is StepState.COMPENSATED else None
        if undone is not None and undone <= since:
            continue  # compensated within grace: nothing to report
        done = view.completions[-1] if view.completions else None
        at = f" at {clock(done.time_ns)} (span {short(done.span_id)})" if done else ""
        detail = (
            f"{step.name} completed{at} but {fname} failed and no {step.compensated_by} ran "
            f"within {format_duration(wf.grace)}"
        )
        finding = _make(
            wf, state, AnomalyKind.UNCOMPENSATED_FAILURE, step.name, since,
            f"{wf.name} {state.key}: {detail}.",
            detail,
            f"run {step.compensated_by} for {step.name} of {state.key}: {detail}",
            _ref(done, f"{step.name} completed") + _ref(fview.failures[-1] if fview.failures else None, f"{fname} failed"),
        )  # fmt: skip
        out.append(finding if undone is None else replace(finding, resolved_ns=undone))
    return out


def _failed_steps(wf: WorkflowSpec, state: InstanceState) -> list[Finding]:
    """The process went past a failed step (``degraded``): the step needs a retry, not an undo.

    Open while the instance is degraded; when a retry completes the step, kept as history,
    resolved at that completion (event time, whenever the retry's span arrived).
    """
    degraded = [t for status, t in state.history if status is InstanceStatus.DEGRADED]
    if not degraded:
        return []
    out = []
    for name, view in state.steps.items():
        if not view.failures:
            continue
        failure = max(view.failures, key=lambda e: (e.time_ns, e.span_id))
        retried = view.since_ns if view.state is StepState.COMPLETED else None
        if view.state is StepState.FAILED and state.status is not InstanceStatus.DEGRADED:
            continue
        if retried is not None and (
            retried <= failure.time_ns or not any(failure.time_ns <= t < retried for t in degraded)
        ):
            continue  # completed again before the process went past it: never degraded by this step
        if view.state not in (StepState.FAILED, StepState.COMPLETED):
            continue
        detail = f"{name} failed at {clock(failure.time_ns)} and {wf.name} went on without it"
        finding = _make(
            wf, state, AnomalyKind.FAILED_STEP, name, failure.time_ns,
            f"{wf.name} {state.key}: {detail}.",
            detail,
            f"retry {name} of {state.key}: {detail}",
            _ref(failure, f"{name} failed"),
        )  # fmt: skip
        out.append(finding if retried is None else replace(finding, resolved_ns=retried))
    return out


def _stalled(wf: WorkflowSpec, state: InstanceState, now: int) -> list[Finding]:
    """The instance was ``stalled`` (in its status history): from then until its next status."""
    history = state.history
    at = next((i for i, (status, _) in enumerate(history) if status is InstanceStatus.STALLED), None)
    if at is None or history[at][1] > now:
        return []
    since = history[at][1]
    until = history[at + 1][1] if at + 1 < len(history) else None
    gap = _first_gap_at(wf, state, since) or _first_incomplete(wf, state)
    detail = f"no coherent end within {format_duration(wf.deadline)} of {clock(state.started_at_ns)}; first incomplete step: {gap}"
    finding = _make(
        wf, state, AnomalyKind.STALLED, gap, since,
        f"{wf.name} {state.key} is stalled: {detail}.",
        detail,
        f"re-drive {state.key} from {gap}: {detail}",
        _ref(state.steps[gap].started_by, f"{gap} started"),
    )  # fmt: skip
    return [finding if until is None else replace(finding, resolved_ns=until)]
