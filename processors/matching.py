"""Compiled matching: span records → step candidates, and the attribute projection.

:class:`CompiledModel` is built once from a validated model. It answers, per span, which steps
of which workflows the span is evidence of, with caches keyed by ``(service, name)`` so that
glob patterns are evaluated once per distinct name, not once per span.

It also exposes the *projection*: the only attribute keys any part of the model reads. Decoders
extract those and nothing else (speed, and no personal data ever reaches storage).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Hashable, Mapping
from typing import NamedTuple, TypeVar

from processors.model import MatchSpec, ModelFile, StepSpec, WorkflowSpec, matchers
from processors.types import AttrValue, SpanEvent, SpanRecord, StepState

_CACHE_LIMIT = 50_000
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Pattern:
    """Exact or glob (``*``, ``?``, ``[...]``) name pattern; ``None`` matches anything."""

    __slots__ = ("exact", "regex")

    def __init__(self, pattern: str | None) -> None:
        self.exact: str | None = None
        self.regex: re.Pattern[str] | None = None
        if pattern is not None and any(c in pattern for c in "*?["):
            self.regex = re.compile(fnmatch.translate(pattern))
        else:
            self.exact = pattern

    def __call__(self, value: str) -> bool:
        if self.regex is not None:
            return self.regex.match(value) is not None
        return self.exact is None or self.exact == value


def name_pattern(pattern: str | None) -> _Pattern:
    """A matcher's exact-or-glob name test (``None`` matches anything), as steps use it."""
    return _Pattern(pattern)


class Candidate(NamedTuple):
    """A transition before correlation: which step, which state, when, from which evidence."""

    workflow: str
    step: str
    state: StepState
    time_ns: int
    source: str


class _CompiledStep:
    __slots__ = ("attributes", "event", "name", "service", "span", "state", "workflow")

    def __init__(self, workflow: str, step: StepSpec, match: MatchSpec) -> None:
        self.workflow = workflow
        self.name = step.name
        self.service = _Pattern(match.service)
        self.span = _Pattern(match.span) if match.span is not None else None
        self.event = _Pattern(match.event) if match.event is not None else None
        self.state = match.state or StepState.COMPLETED
        self.attributes = dict(match.attributes)

    def filters_hold(self, attrs: Mapping[str, AttrValue]) -> bool:
        return all(attrs.get(k) == v for k, v in self.attributes.items())


def _cached(cache: dict[K, V], key: K, compute: Callable[[], V]) -> V:
    """The one cache of matching: per distinct name, not per span; cleared when it grows past
    _CACHE_LIMIT (names with ids in them would otherwise grow it without bound)."""
    hit = cache.get(key)
    if hit is None:
        hit = compute()
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[key] = hit
    return hit


class CompiledModel:
    """The model, ready for the hot path. Immutable after construction; caches are internal."""

    def __init__(self, model: ModelFile) -> None:
        self.model = model
        self.workflows: Mapping[str, WorkflowSpec] = {w.name: w for w in model.workflows}
        steps = [_CompiledStep(w.name, s, m) for w in model.workflows for s in w.steps for m in matchers(s)]
        self._span_steps = [s for s in steps if s.span is not None]
        self._event_steps = [s for s in steps if s.event is not None]
        self._span_cache: dict[tuple[str, str], tuple[_CompiledStep, ...]] = {}
        self._event_cache: dict[tuple[str, str], tuple[_CompiledStep, ...]] = {}
        self._service_cache: dict[str, bool] = {}
        key_attrs: list[str] = []
        for w in model.workflows:
            key_attrs.extend(a for a in w.key.attributes if a not in key_attrs)
        #: attribute keys that carry a business key, in the model's priority order
        self.key_attributes: tuple[str, ...] = tuple(key_attrs)
        filters = {k for s in steps for k in s.attributes}
        #: every attribute key the model reads (plus ``allow_attributes``); nothing else is kept
        self.projection: frozenset[str] = frozenset(key_attrs) | filters | set(model.allow_attributes)

    # -- questions the decoder asks, per span, before building a record -------------------
    def span_steps(self, service: str, name: str) -> tuple[_CompiledStep, ...]:
        return _cached(
            self._span_cache, (service, name),
            lambda: tuple(s for s in self._span_steps if s.service(service) and s.span is not None and s.span(name)),
        )  # fmt: skip

    def event_steps(self, service: str, event: str) -> tuple[_CompiledStep, ...]:
        return _cached(
            self._event_cache, (service, event),
            lambda: tuple(s for s in self._event_steps if s.service(service) and s.event is not None and s.event(event)),
        )  # fmt: skip

    def service_has_events(self, service: str) -> bool:
        return _cached(self._service_cache, service, lambda: any(s.service(service) for s in self._event_steps))

    # -- matching -----------------------------------------------------------------------
    def candidates(self, span: SpanRecord) -> list[Candidate]:
        """Every step candidate this span is evidence of, across all workflows."""
        out: list[Candidate] = []
        for step in self.span_steps(span.service, span.name):
            if step.attributes and not step.filters_hold(span.attributes):
                continue
            out.append(Candidate(step.workflow, step.name, StepState.STARTED, span.start_ns, "span"))
            end = StepState.FAILED if span.error else StepState.COMPLETED
            out.append(Candidate(step.workflow, step.name, end, span.end_ns, "span"))
        for event in span.events:
            out.extend(self._event_candidates(span, event))
        return out

    def _event_candidates(self, span: SpanRecord, event: SpanEvent) -> list[Candidate]:
        out = []
        for step in self.event_steps(span.service, event.name):
            if step.attributes and not step.filters_hold({**span.attributes, **event.attributes}):
                continue
            out.append(Candidate(step.workflow, step.name, step.state, event.time_ns, f"event:{event.name}"))
        return out

    def key_of(self, workflow: WorkflowSpec, span: SpanRecord) -> str | None:
        """The business key the span itself carries: span attributes first, then resource."""
        for attrs in (span.attributes, span.resource_attributes):
            for name in workflow.key.attributes:
                value = attrs.get(name)
                if value is not None and value != "":
                    return str(value)
        return None

    @staticmethod
    def stored_key_of(workflow: WorkflowSpec, attributes: Mapping[str, str]) -> str | None:
        """The key a span stored in ``spans`` gives back: its ``attributes`` column (resource
        attributes overlaid by the span's). Not always :meth:`key_of`'s answer (an earlier key
        attribute set only on the resource wins here); the store relies on it only where the
        two agree (analytics/write/persist.py ``split_learned``)."""
        for name in workflow.key.attributes:
            value = attributes.get(name)
            if value:
                return value
        return None
