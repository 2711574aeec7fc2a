"""The state of an instance: a pure, deterministic fold of the *set* of its transitions.

``fold(workflow, key, transitions, now_ns)`` sorts the transitions by event time (ties broken by
state rank, step declaration order, span id and source), drops exact duplicates of evidence, and
replays them. So arrival order never matters and re-delivery changes nothing: two processes that
saw the same transitions agree, to the nanosecond, on state, status and status history.

Status rules (docs/architecture.md), evaluated at every transition and at every timer in between
(instance deadline, failure + grace) up to ``now_ns``. No status claims what did not happen:

- ``diverged``: a ``conflicts`` pair holds, or a failure left completed steps that declare a
  ``compensated_by`` uncompensated for longer than ``grace``;
- ``converged``: every required step completed and no step is failed or compensated;
- ``degraded``: the process went *past* a failed step — every other required step completed —
  so nothing is to be undone; the failed step waits for a retry;
- ``compensated``: something failed (or was compensated), a compensation actually ran, and no
  completed step still needs undoing;
- ``failed``: a clean failure — a step failed, nothing needed undoing, no compensation ran, and
  no step is still in flight (a failure while the root span is open is not the end yet);
- ``stalled``: past the workflow deadline and none of the above;
- ``running``: otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import NamedTuple

from processors.model import WorkflowSpec
from processors.types import COHERENT_STATUSES, STATE_RANK, InstanceStatus, StepState, Transition

#: bump when a change here or in processors/rules.py can change what a stored instance row says:
#: the next start-up then folds every live instance again instead of trusting the stored rows
FOLD_VERSION = 1


class Evidence(NamedTuple):
    trace_id: str
    span_id: str
    time_ns: int


class StepView(NamedTuple):
    """One step of one instance after the fold (a ``NamedTuple``: built for every step of every fold)."""

    state: StepState | None
    since_ns: int | None
    #: first event time each state was reached (``requires`` and conflicts look here)
    first_ns: Mapping[StepState, int]
    #: distinct spans that completed this step (more than one: a duplicate action)
    completions: tuple[Evidence, ...]
    failures: tuple[Evidence, ...]
    started_by: Evidence | None


@dataclass(frozen=True, slots=True)
class OrderViolation:
    """A step started before one of its ``requires`` held (in event time)."""

    step: str
    requirement: str
    at: Evidence
    #: when the requirement was reached after all (None: not seen yet — it may still arrive)
    requirement_ns: int | None = None


@dataclass(frozen=True, slots=True)
class InstanceState:
    workflow: str
    key: str
    status: InstanceStatus
    steps: Mapping[str, StepView]
    started_at_ns: int
    updated_at_ns: int
    #: when the instance reached its current coherent end (converged, failed, compensated), else None
    converged_at_ns: int | None
    #: (status, valid_from_ns) in time order; the last entry is the current status
    history: tuple[tuple[InstanceStatus, int], ...]
    trace_ids: tuple[str, ...]
    violations: tuple[OrderViolation, ...]
    conflicts: tuple[tuple[str, str], ...]
    #: when the first failure (or compensation) happened, for the ``grace`` rule
    first_failure_ns: int | None


def sort_key(wf_order: Mapping[str, int]) -> Callable[[Transition], tuple[int, int, int, str, str]]:
    def key(t: Transition) -> tuple[int, int, int, str, str]:
        return (
            t.event_time_ns,
            STATE_RANK[t.state],
            wf_order.get(t.step, 1 << 30),
            t.span_id,
            t.source,
        )

    return key


class _Plan:
    """What a fold needs from a workflow, parsed once per workflow (not once per fold)."""

    def __init__(self, wf: WorkflowSpec) -> None:
        self.wf = wf
        self.order = {s.name: i for i, s in enumerate(wf.steps)}
        self.comp_of: dict[str, tuple[str, ...]] = {}
        for s in wf.steps:
            if s.compensated_by:
                self.comp_of[s.compensated_by] = (*self.comp_of.get(s.compensated_by, ()), s.name)
        self.requires = {
            s.name: tuple((r.partition(".")[0], StepState(r.partition(".")[2] or "completed")) for r in s.requires)
            for s in wf.steps
        }
        self.conflicts = tuple(
            (
                a,
                b,
                a.partition(".")[0],
                StepState(a.partition(".")[2]),
                b.partition(".")[0],
                StepState(b.partition(".")[2]),
            )
            for a, b in wf.conflicts
        )
        self.required = wf.required_steps
        self.compensable = tuple(s.name for s in wf.steps if s.compensated_by)
        self.sort_key = sort_key(self.order)
        self.start_steps = frozenset(wf.start_steps)


_PLANS: dict[int, _Plan] = {}


def _plan(wf: WorkflowSpec) -> _Plan:
    plan = _PLANS.get(id(wf))
    if plan is None or plan.wf is not wf:
        if len(_PLANS) > 1024:
            _PLANS.clear()
        plan = _PLANS[id(wf)] = _Plan(wf)
    return plan


_TROUBLE = (StepState.FAILED, StepState.COMPENSATED)


class _Fold:
    """Mutable scratchpad of one fold; never escapes :func:`fold`."""

    def __init__(self, plan: _Plan) -> None:
        self.plan = plan
        self.wf = plan.wf
        self.state: dict[str, StepState] = {}
        self.since: dict[str, int] = {}
        self.first: dict[str, dict[StepState, int]] = {s: {} for s in plan.order}
        self.completions: dict[str, dict[str, Evidence]] = {s: {} for s in plan.order}
        self.failures: dict[str, dict[str, Evidence]] = {s: {} for s in plan.order}
        self.started_by: dict[str, Evidence] = {}
        self.violations: list[OrderViolation] = []
        self.first_failure: int | None = None
        self.comp_of = plan.comp_of
        self.requires = plan.requires

    def set(self, step: str, state: StepState, t: int) -> None:
        self.state[step] = state
        self.since[step] = t
        self.first[step].setdefault(state, t)
        if state in (StepState.FAILED, StepState.COMPENSATED) and self.first_failure is None:
            self.first_failure = t

    def apply(self, tr: Transition) -> None:
        ev = Evidence(tr.trace_id, tr.span_id, tr.event_time_ns)
        if tr.step not in self.started_by:
            self.started_by[tr.step] = ev
            for req_step, req_state in self.requires.get(tr.step, ()):
                reached = self.first[req_step].get(req_state)
                if reached is None or reached > tr.event_time_ns:
                    self.violations.append(OrderViolation(tr.step, f"{req_step}.{req_state}", ev, reached))
        if tr.state is StepState.COMPLETED:
            self.completions[tr.step].setdefault(tr.span_id, ev)
        elif tr.state is StepState.FAILED:
            self.failures[tr.step].setdefault(tr.span_id, ev)
        self.set(tr.step, tr.state, tr.event_time_ns)
        if tr.state is StepState.COMPLETED:
            for target in self.comp_of.get(tr.step, ()):
                if self.state.get(target) is StepState.COMPLETED:
                    self.set(target, StepState.COMPENSATED, tr.event_time_ns)

    def conflicts(self) -> tuple[tuple[str, str], ...]:
        get = self.state.get
        return tuple((a, b) for a, b, sa, xa, sb, xb in self.plan.conflicts if get(sa) is xa and get(sb) is xb)

    def status(self, started_at: int, t: int) -> InstanceStatus:
        get = self.state.get
        for _, _, sa, xa, sb, xb in self.plan.conflicts:
            if get(sa) is xa and get(sb) is xb:
                return InstanceStatus.DIVERGED
        troubled = self.first_failure is not None and any(st in _TROUBLE for st in self.state.values())
        if not troubled:
            for s in self.plan.required:  # a loop, not all(): this runs once per transition
                if get(s) is not StepState.COMPLETED:
                    break
            else:
                return InstanceStatus.CONVERGED
        else:
            verdict = self._after_trouble(t)
            if verdict is not None:
                return verdict
        if t - started_at >= self.wf.deadline:
            return InstanceStatus.STALLED
        return InstanceStatus.RUNNING

    def _after_trouble(self, t: int) -> InstanceStatus | None:
        """The status once something failed or was compensated (None: still running)."""
        assert self.first_failure is not None
        get = self.state.get
        failed = [s for s, st in self.state.items() if st is StepState.FAILED]
        if failed and self._went_past(failed):
            return InstanceStatus.DEGRADED
        if any(get(s) is StepState.COMPLETED for s in self.plan.compensable):  # side effects to undo
            return InstanceStatus.DIVERGED if t - self.first_failure >= self.wf.grace else None
        if any(st is StepState.COMPENSATED for st in self.state.values()):
            return InstanceStatus.COMPENSATED
        if any(st is StepState.STARTED for st in self.state.values()):  # still in flight: not the end
            return None
        return InstanceStatus.FAILED

    def _went_past(self, failed: list[str]) -> bool:
        """Every required step but the failed ones completed: the process did not stop at the
        failure (an order shipped although its cart was not emptied, or its asynchronous
        fulfilment failed afterwards)."""
        get = self.state.get
        return all(get(s) is StepState.COMPLETED for s in self.plan.required if s not in failed)

    def timers(self, started_at: int) -> list[int]:
        out = [started_at + self.wf.deadline]
        if self.first_failure is not None:
            out.append(self.first_failure + self.wf.grace)
        return out


def fold(
    wf: WorkflowSpec, key: str, transitions: Iterable[Transition], now_ns: int, *, distinct: bool = False
) -> InstanceState:
    """Fold the transition set of one instance into its state as of ``now_ns``.

    ``transitions`` may contain duplicates and come in any order (``distinct=True``: the caller
    guarantees one transition per evidence, as :class:`InstanceTable` does). It must not be empty.
    """
    plan = _plan(wf)
    if distinct:
        ordered = sorted(transitions, key=plan.sort_key)
    else:
        unique: dict[tuple[str, ...], Transition] = {}
        for t in transitions:  # same evidence twice (a confused client): the smallest wins, always
            seen = unique.get(t.evidence)
            if seen is None or t < seen:
                unique[t.evidence] = t
        ordered = sorted(unique.values(), key=plan.sort_key)
    if not ordered:
        raise ValueError(f"instance {key!r} of {wf.name!r} has no transitions")
    f = _Fold(plan)
    # the instance begins at its start step; a step seen earlier (a consumer span that started
    # waiting before the message existed) does not move that back
    starts = plan.start_steps
    started_at = next((t.event_time_ns for t in ordered if t.step in starts), ordered[0].event_time_ns)
    history: list[tuple[InstanceStatus, int]] = []
    deadline = started_at + wf.deadline
    grace = wf.grace
    last = len(ordered) - 1
    for i, tr in enumerate(ordered):
        at = tr.event_time_ns if tr.event_time_ns > started_at else started_at
        f.apply(tr)
        status = f.status(started_at, at)
        if not history or history[-1][0] is not status:
            history.append((status, at))
        until = ordered[i + 1].event_time_ns if i < last else now_ns
        if at < deadline <= until or (f.first_failure is not None and at < f.first_failure + grace <= until):
            for timer in sorted(f.timers(started_at)):  # a deadline or grace period ends in (at, until]
                if at < timer <= until:
                    status = f.status(started_at, timer)
                    if history[-1][0] is not status:
                        history.append((status, timer))
    status = history[-1][0]
    converged_at = history[-1][1] if status in COHERENT_STATUSES else None
    steps = {
        s.name: StepView(
            state=f.state.get(s.name),
            since_ns=f.since.get(s.name),
            first_ns=f.first[s.name],  # the scratchpad's own dict: _Fold never escapes
            completions=tuple(f.completions[s.name].values()),
            failures=tuple(f.failures[s.name].values()),
            started_by=f.started_by.get(s.name),
        )
        for s in wf.steps
    }
    return InstanceState(
        workflow=wf.name,
        key=key,
        status=status,
        steps=steps,
        started_at_ns=started_at,
        updated_at_ns=ordered[-1].event_time_ns,
        converged_at_ns=converged_at,
        history=tuple(history),
        trace_ids=tuple(sorted({t.trace_id for t in ordered})),
        violations=tuple(
            replace(
                v,
                requirement_ns=f.first[v.requirement.partition(".")[0]].get(StepState(v.requirement.partition(".")[2])),
            )
            for v in f.violations
        ),
        conflicts=f.conflicts(),
        first_failure_ns=f.first_failure,
    )
