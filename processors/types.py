"""Types that cross the boundaries of the pure core: immutable records and enums only.

The records built once per span or per transition on the ingest path (``SpanRecord``,
``SpanEvent``, ``SpanLink``, ``Transition``) are ``NamedTuple``s: immutable like a frozen
dataclass, but built ~4x faster (a frozen dataclass's ``__init__`` sets every field through
``object.__setattr__``) and unpickled ~7x faster (records come back from the decoder processes
pickled), measured on the writer's own batches. They have no defaults: every field is given.

Timestamps are integer nanoseconds since the Unix epoch (OTLP's own unit); trace and span ids are
lower-case hex strings (32 and 16 characters), as every tracing UI prints them.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import NamedTuple

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
    """Where an instance stands (docs/architecture.md); each claims only what its transitions show."""

    RUNNING = "running"
    CONVERGED = "converged"  # every required step completed, nothing failed
    FAILED = "failed"  # a clean failure: a step failed before anything needed undoing
    COMPENSATED = "compensated"  # a step failed and a compensation actually ran for what needed it
    DEGRADED = "degraded"  # the process went past a failed step: it waits for that step's retry
    DIVERGED = "diverged"  # a conflict, or completed side effects left uncompensated past grace
    STALLED = "stalled"  # past the deadline and none of the above


#: statuses an instance is not expected to leave (it may still, if a late transition says so)
TERMINAL_STATUSES = frozenset(
    {InstanceStatus.CONVERGED, InstanceStatus.FAILED, InstanceStatus.COMPENSATED, InstanceStatus.DIVERGED}
)
#: the coherent ends: what the convergence rate counts
COHERENT_STATUSES = frozenset({InstanceStatus.CONVERGED, InstanceStatus.FAILED, InstanceStatus.COMPENSATED})


class AnomalyKind(enum.StrEnum):
    MISSING_STEP = "missing_step"
    OUT_OF_ORDER = "out_of_order"
    DUPLICATE_ACTION = "duplicate_action"
    CONFLICTING_STATE = "conflicting_state"
    UNCOMPENSATED_FAILURE = "uncompensated_failure"
    FAILED_STEP = "failed_step"  # the process went past a failed step; it needs a retry
    STALLED = "stalled"


class RejectReason(enum.StrEnum):
    """Why a span was rejected as malformed (counted per reason; the rest of its request is kept)."""

    INVALID_TRACE_ID = "invalid_trace_id"
    INVALID_SPAN_ID = "invalid_span_id"
    INVALID_PARENT_SPAN_ID = "invalid_parent_span_id"
    END_BEFORE_START = "end_before_start"
    MISSING_START_TIME = "missing_start_time"
    TIME_OUT_OF_RANGE = "time_out_of_range"
    INVALID_SPAN = "invalid_span"
    INVALID_ATTRIBUTE = "invalid_attribute"


class DropReason(enum.StrEnum):
    """Why a span (or a transition drawn from it) did not become part of an instance."""

    UNMATCHED = "unmatched"  # no step of any workflow matches it (the usual case)
    UNKEYED = "unkeyed"  # matched, but no key was found within key_wait
    ORPHAN = "orphan"  # keyed, but its instance's start step never arrived within key_wait
    DUPLICATE = "duplicate"  # the same evidence was seen before (re-delivery)


class SpanStatus(enum.StrEnum):
    """A span's status code, as OTLP sends it (``Status.code`` 0, 1, 2)."""

    UNSET = "unset"
    OK = "ok"
    ERROR = "error"


#: OTLP's status code → the stored value (a plain ``str``: records are pickled by the decoders)
SPAN_STATUS_OF_CODE: Mapping[int, str] = {0: SpanStatus.UNSET.value, 1: SpanStatus.OK.value, 2: SpanStatus.ERROR.value}


class SpanEvent(NamedTuple):
    name: str
    time_ns: int
    attributes: Mapping[str, AttrValue]


class SpanLink(NamedTuple):
    trace_id: str
    span_id: str


class SpanRecord(NamedTuple):
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
    #: a :class:`SpanStatus` value: ``unset`` (most spans: a success nobody marked), ``ok``, ``error``
    status: str
    attributes: Mapping[str, AttrValue]
    resource_attributes: Mapping[str, AttrValue]
    events: tuple[SpanEvent, ...]
    links: tuple[SpanLink, ...]

    @property
    def error(self) -> bool:
        return self.status == "error"


class Transition(NamedTuple):
    """One observed change of one step of one instance.

    Identity (for idempotence) is the evidence: ``(workflow, instance_key, step, state, span_id,
    source)``. ``source`` names where in the span it came from: ``span`` (start or end) or
    ``event:<name>``. Transitions order field by field, as the fold's tie-breaks expect.
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
