"""The coordination model: YAML (``file_format: "1"``) loaded into frozen, validated objects.

Every problem is reported with the key path it concerns and how to fix it, e.g.
``workflows[0].steps[2].requires[0]: unknown step 'shipping' (known: checkout, payment)``.
Loading collects *all* problems before raising one :class:`ModelError`.
"""

from __future__ import annotations

import difflib
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from processors.types import AnomalyKind, AttrValue, StepState

SUPPORTED_FILE_FORMATS = ("1",)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|ms|s|m|h|d)\s*$")
_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
    "d": 86_400_000_000_000,
}
#: Placeholders an action template may use.
ACTION_FIELDS = frozenset({"workflow", "key", "step", "detail", "evidence"})


def parse_duration(value: object) -> int:
    """``"500ms"``, ``"10s"``, ``"5m"``, ``"1h"``, ``"7d"`` → integer nanoseconds."""
    if isinstance(value, str):
        found = _DURATION.match(value)
        if found:
            return int(float(found.group(1)) * _UNIT_NS[found.group(2)])
    raise PydanticCustomError(
        "duration",
        f"bad duration {value!r}: write a number and a unit, e.g. 500ms, 10s, 5m, 1h, 7d",
    )


Duration = Annotated[int, BeforeValidator(parse_duration)]


def format_duration(ns: int) -> str:
    for unit in ("d", "h", "m", "s", "ms", "us"):
        if ns >= _UNIT_NS[unit] and ns % _UNIT_NS[unit] == 0:
            return f"{ns // _UNIT_NS[unit]}{unit}"
    return f"{ns}ns"


class _Strict(BaseModel):
    """Frozen, and unknown keys are errors that name the allowed keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            allowed = list(cls.model_fields)
            unknown = [str(k) for k in data if k not in cls.model_fields]
            if unknown:
                hint = difflib.get_close_matches(unknown[0], allowed, n=1)
                maybe = f" (did you mean '{hint[0]}'?)" if hint else ""
                raise PydanticCustomError(
                    "unknown_key",
                    "unknown key {keys}{maybe}; allowed keys: {allowed}",
                    {
                        "keys": ", ".join(repr(k) for k in unknown),
                        "maybe": maybe,
                        "allowed": ", ".join(allowed),
                    },
                )
        return data


class MatchSpec(_Strict):
    """Which spans (or span events) are evidence of a step. Names are exact or glob."""

    service: str | None = None
    span: str | None = None
    event: str | None = None
    state: StepState | None = None
    attributes: dict[str, AttrValue] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _span_or_event(self) -> MatchSpec:
        if self.span is None and self.event is None:
            raise PydanticCustomError("match", "a match needs 'span' (a span name) or 'event' (a span event name)")
        if self.state is not None and self.event is None:
            raise PydanticCustomError(
                "match",
                "'state' applies to event matches only; a span match yields started and completed/failed by itself",
            )
        return self


class KeySpec(_Strict):
    """How spans are correlated into instances of a workflow."""

    attributes: tuple[str, ...] = ()
    inherit: tuple[Literal["trace", "links"], ...] = ("trace", "links")
    fallback: Literal["trace_id"] | None = None
    trace_id: bool = False
    wait: Duration = 10_000_000_000

    @model_validator(mode="after")
    def _has_rule(self) -> KeySpec:
        if not self.attributes and not self.trace_id:
            raise PydanticCustomError(
                "key",
                "no key rule: list the business-key attributes in key.attributes, "
                "or set key.trace_id: true to make every trace an instance",
            )
        return self


class ActionSpec(_Strict):
    """What to do about an anomaly of one kind: the suggested action's text and, opt-in, a
    reconciliation webhook called once the anomaly has stayed open ``after``."""

    #: the suggested action (placeholders as in ACTION_FIELDS); None: the built-in text
    text: str | None = None
    #: POSTed a JSON request (README: "Alerting and actions"); http or https
    webhook: str | None = None
    after: Duration = 30_000_000_000
    max_attempts: int = Field(default=5, ge=1, le=100)
    #: per request
    timeout: Duration = 10_000_000_000

    @model_validator(mode="after")
    def _url(self) -> ActionSpec:
        if self.webhook is not None and not re.match(r"^https?://[^/\s]+", self.webhook):
            raise PydanticCustomError(
                "webhook",
                "webhook {url!r} is not an http(s) URL, e.g. http://reconciler:8080/hooks/refund",
                {"url": self.webhook},
            )
        return self


def _action_spec(value: object) -> object:
    """``kind: "text"`` is shorthand for ``kind: {text: "text"}``."""
    return {"text": value} if isinstance(value, str) else value


Action = Annotated[ActionSpec, BeforeValidator(_action_spec)]


class StepSpec(_Strict):
    name: str = Field(min_length=1)
    #: one matcher, or a list (e.g. an event for success and another for failure)
    match: MatchSpec | tuple[MatchSpec, ...]
    requires: tuple[str, ...] = ()
    optional: bool = False
    compensated_by: str | None = None
    deadline: Duration | None = None
    actions: dict[AnomalyKind, Action] = Field(default_factory=dict)


def matchers(step: StepSpec) -> tuple[MatchSpec, ...]:
    return step.match if isinstance(step.match, tuple) else (step.match,)


class WorkflowSpec(_Strict):
    name: str = Field(min_length=1)
    key: KeySpec
    deadline: Duration = 300_000_000_000
    grace: Duration = 5_000_000_000
    start: tuple[str, ...] | None = None
    steps: tuple[StepSpec, ...]
    conflicts: tuple[tuple[str, str], ...] = ()
    actions: dict[AnomalyKind, Action] = Field(default_factory=dict)

    def actions_for(self, kind: AnomalyKind, step: str) -> tuple[ActionSpec, ...]:
        """The actions for an anomaly of ``kind`` at ``step``, the step's own first, then the
        workflow's: each field is taken from the first that sets it."""
        spec = next((s for s in self.steps if s.name == step), None)
        found = ((spec.actions.get(kind) if spec else None), self.actions.get(kind))
        return tuple(a for a in found if a is not None)

    def action_text(self, kind: AnomalyKind, step: str) -> str | None:
        return next((a.text for a in self.actions_for(kind, step) if a.text), None)

    def webhook(self, kind: AnomalyKind, step: str) -> ActionSpec | None:
        return next((a for a in self.actions_for(kind, step) if a.webhook), None)

    def step(self, name: str) -> StepSpec:
        """The step called ``name`` (KeyError if there is none)."""
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    @property
    def start_steps(self) -> tuple[str, ...]:
        return self.start if self.start else (self.steps[0].name,)

    @property
    def required_steps(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.steps if not s.optional)


class WatermarkSpec(_Strict):
    """How long data may arrive late (event time) before lateness is judged (docs/architecture.md)."""

    #: a span may arrive this long after newer data and still count as on time
    lateness: Duration = 15_000_000_000
    #: serving only: with nothing arriving, the wall clock moves the watermark this far behind it
    idle: Duration = 600_000_000_000


class ModelFile(_Strict):
    file_format: str
    workflows: tuple[WorkflowSpec, ...]
    watermark: WatermarkSpec = Field(default_factory=WatermarkSpec)
    #: Attributes stored besides the ones the model reads (everything else is never stored).
    allow_attributes: tuple[str, ...] = ()
    #: Delete the history of terminal instances older than this (None: keep everything).
    retention: Duration | None = None


@dataclass(frozen=True, slots=True)
class ModelProblem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ModelError(Exception):
    """A model file is not valid. ``problems`` lists every problem found, each with its path."""

    def __init__(self, source: str, problems: Sequence[ModelProblem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__("\n".join(f"{source}: {p}" for p in self.problems))


def parse_model(text: str, source: str = "<model>") -> ModelFile:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ModelError(source, [ModelProblem(where, f"not valid YAML: {problem}")]) from exc
    except RecursionError as exc:  # the YAML parser recurses once per level of nesting
        raise ModelError(
            source,
            [
                ModelProblem(
                    "",
                    "not valid YAML for a model: nested too deeply to parse (a model is a few levels "
                    "deep); look for unbalanced brackets or runaway indentation",
                )
            ],
        ) from exc
    if not isinstance(data, dict):
        raise ModelError(source, [ModelProblem("", 'expected a mapping with file_format: "1" and workflows')])
    fmt = data.get("file_format")
    if fmt is None:
        raise ModelError(source, [ModelProblem("file_format", 'missing: add file_format: "1"')])
    if str(fmt) not in SUPPORTED_FILE_FORMATS:
        raise ModelError(
            source,
            [
                ModelProblem(
                    "file_format",
                    f"unsupported format {fmt!r}: this coordstate reads "
                    f"{', '.join(repr(f) for f in SUPPORTED_FILE_FORMATS)}; "
                    "upgrade coordstate or write the model in a supported format",
                )
            ],
        )
    data = {**data, "file_format": str(fmt)}
    try:
        model = ModelFile.model_validate(data)
    except ValidationError as exc:
        raise ModelError(source, [_problem(err) for err in exc.errors()]) from exc
    problems = list(semantic_problems(model))
    if problems:
        raise ModelError(source, problems)
    return model


def _path(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _problem(err: Any) -> ModelProblem:
    loc = [p for p in err["loc"] if not (isinstance(p, str) and "[" in p)]
    message = err["msg"]
    if err["type"] == "missing":
        message = "missing: this key is required"
    elif err["type"] == "enum":
        message = f"unknown value {err['input']!r}; {message[0].lower()}{message[1:]}"
    elif err["type"].startswith("value_error") and message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
    return ModelProblem(_path(loc), message)


def semantic_problems(model: ModelFile) -> Iterable[ModelProblem]:
    """Checks across keys: references to steps and states, cycles, duplicates, templates."""
    if not model.workflows:
        yield ModelProblem("workflows", "declare at least one workflow")
    if model.watermark.idle < model.watermark.lateness:
        yield ModelProblem(
            "watermark.idle",
            f"{format_duration(model.watermark.idle)} is shorter than watermark.lateness "
            f"({format_duration(model.watermark.lateness)}): make idle at least as long as lateness",
        )
    seen_workflows: dict[str, int] = {}
    for wi, wf in enumerate(model.workflows):
        base = f"workflows[{wi}]"
        if wf.name in seen_workflows:
            yield ModelProblem(
                f"{base}.name",
                f"duplicate workflow {wf.name!r} (already defined at "
                f"workflows[{seen_workflows[wf.name]}]); workflow names must be unique",
            )
        seen_workflows.setdefault(wf.name, wi)
        yield from _workflow_problems(wf, base)


def _workflow_problems(wf: WorkflowSpec, base: str) -> Iterable[ModelProblem]:
    if not wf.steps:
        yield ModelProblem(f"{base}.steps", "a workflow needs at least one step")
    index: dict[str, int] = {}
    for si, step in enumerate(wf.steps):
        if step.name in index:
            yield ModelProblem(
                f"{base}.steps[{si}].name",
                f"duplicate step {step.name!r} (already defined at steps[{index[step.name]}]); rename one of them",
            )
        index.setdefault(step.name, si)
    known = ", ".join(index)

    def ref(text: str, *, allow_bare: bool) -> str | None:
        step_name, _, state = text.partition(".")
        if not state and not allow_bare:
            return f"write {text!r} as 'step.state', e.g. '{step_name}.completed'"
        if step_name not in index:
            hint = difflib.get_close_matches(step_name, list(index), n=1)
            maybe = f"; did you mean {hint[0]!r}?" if hint else ""
            return f"unknown step {step_name!r} (known: {known}){maybe}"
        if state and state not in StepState.__members__.values():
            states = ", ".join(s.value for s in StepState)
            return f"unknown state {state!r} in {text!r} (states: {states})"
        return None

    for si, step in enumerate(wf.steps):
        sbase = f"{base}.steps[{si}]"
        for ri, req in enumerate(step.requires):
            msg = ref(req, allow_bare=True)
            if msg:
                yield ModelProblem(f"{sbase}.requires[{ri}]", msg)
        if step.compensated_by is not None:
            if step.compensated_by not in index:
                yield ModelProblem(
                    f"{sbase}.compensated_by",
                    f"unknown step {step.compensated_by!r} (known: {known})",
                )
            elif step.compensated_by == step.name:
                yield ModelProblem(f"{sbase}.compensated_by", "a step cannot compensate itself")
        yield from _action_problems(step.actions, f"{sbase}.actions")
    for ci, pair in enumerate(wf.conflicts):
        for pi, text in enumerate(pair):
            msg = ref(text, allow_bare=False)
            if msg:
                yield ModelProblem(f"{base}.conflicts[{ci}][{pi}]", msg)
    for ti, name in enumerate(wf.start or ()):
        if name not in index:
            yield ModelProblem(f"{base}.start[{ti}]", f"unknown step {name!r} (known: {known})")
    yield from _action_problems(wf.actions, f"{base}.actions")
    cycle = _find_cycle(wf, index)
    if cycle:
        where = index[cycle[0]]
        yield ModelProblem(
            f"{base}.steps[{where}].requires",
            f"cycle in requires: {' → '.join(cycle)}; remove one of these requirements",
        )


def _action_problems(actions: dict[AnomalyKind, ActionSpec], base: str) -> Iterable[ModelProblem]:
    for kind, action in actions.items():
        template = action.text or ""
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
        except ValueError as exc:
            yield ModelProblem(f"{base}.{kind.value}", f"bad template: {exc}")
            continue
        bad = sorted(fields - ACTION_FIELDS)
        if bad:
            yield ModelProblem(
                f"{base}.{kind.value}",
                f"unknown placeholder {{{bad[0]}}}; use {', '.join(sorted(ACTION_FIELDS))}",
            )


def _find_cycle(wf: WorkflowSpec, index: dict[str, int]) -> list[str] | None:
    edges = {s.name: [r.partition(".")[0] for r in s.requires if r.partition(".")[0] in index] for s in wf.steps}
    colour: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        colour[node] = 1
        for nxt in edges.get(node, ()):
            if colour.get(nxt) == 1:
                return [*trail[trail.index(nxt) :], nxt] if nxt in trail else [node, nxt]
            if not colour.get(nxt):
                found = visit(nxt, [*trail, nxt])
                if found:
                    return found
        colour[node] = 2
        return None

    for name in edges:
        if not colour.get(name):
            found = visit(name, [name])
            if found:
                return found
    return None
