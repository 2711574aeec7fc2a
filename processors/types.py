"""Types that cross the boundaries of the pure core: frozen dataclasses and enums only.

Timestamps are integer nanoseconds since the Unix epoch (OTLP's own unit); trace and span ids are
lower-case hex strings (32 and 16 characters), as every tracing UI prints them.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

AttrValue = str | int | float | bool


class StepState(enum.StrEnum):
    """The state of one step of an instance; a step with no transition yet is *pending*."""

    STARTED = "started"
    COMPLETED = "completed"
    FAILED = "failed"
    COMPENSATED = "compensated"


#: Fold order of states observed at the same event time: a step that starts and ends in the same
#: nanosecond must end up completed, never started.
STATE_RANK: Mapping[StepState, int] = {
    StepState.STARTED: 0,
    StepState.COMPLETED: 1,
    StepState.FAILED: 2,
    StepState.COMPENSATED: 3,
}


class InstanceStatus(enum.StrEnum):
    RUNNING = "running"
    CONVERGED = "converged"
    COMPENSATED = "compensated"
    DIVERGED = "diverged"
    STALLED = "stalled"


TERMINAL_STATUSES = frozenset({InstanceStatus.CONVERGED, InstanceStatus.COMPENSATED, InstanceStatus.DIVERGED})


class AnomalyKind(enum.StrEnum):
    MISSING_STEP = "missing_step"
    OUT_OF_ORDER = "out_of_order"
    DUPLICATE_ACTION = "duplicate_action"
    CONFLICTING_STATE = "conflicting_state"
    UNCOMPENSATED_FAILURE = "uncompensated_failure"
    STALLED = "stalled"


class DropReason(enum.StrEnum):
    """Why a span (or a transition drawn from it) did not become part of an instance."""

    UNMATCHED = "unmatched"  # no step of any workflow matches it (the usual case)
    UNKEYED = "unkeyed"  # matched, but no key was found within key_wait
    ORPHAN = "orphan"  # keyed, but its instance's start step never arrived within key_wait
    DUPLICATE = "duplicate"  # the same evidence was seen before (re-delivery)


@dataclass(frozen=True, slots=True)
class SpanEvent:
    name: str
    time_ns: int
    attributes: Mapping[str, AttrValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SpanLink:
    trace_id: str
    span_id: str


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """One span, reduced to the fields the model needs.

    ``attributes`` holds only the projected attributes (span attributes over resource
    attributes for the key; see ``CompiledModel.projection``), never the whole span.
    """

    trace_id: str
    span_id: str
    parent_span_id: str
    service: str
    name: str
    start_ns: int
    end_ns: int
    error: bool
    attributes: Mapping[str, AttrValue] = field(default_factory=dict)
    resource_attributes: Mapping[str, AttrValue] = field(default_factory=dict)
    events: tuple[SpanEvent, ...] = ()
    links: tuple[SpanLink, ...] = ()


@dataclass(frozen=True, slots=True, order=True)
class Transition:
    """One observed change of one step of one instance.

    Identity (for idempotence) is the evidence: ``(workflow, instance_key, step, state, span_id,
    source)``. ``source`` names where in the span it came from: ``span`` (start or end) or
    ``event:<name>``.
    """

    workflow: str
    instance_key: str
    step: str
    state: StepState
    event_time_ns: int
    trace_id: str
    span_id: str
    service: str
    source: str

    @property
    def evidence(self) -> tuple[str, str, str, str, str, str]:
        # the member itself, not ``.value``: a StrEnum member hashes and compares as its string
        return (self.workflow, self.instance_key, self.step, self.state, self.span_id, self.source)
