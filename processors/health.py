"""Model drift: a required step that matches nothing while its workflow's instances keep starting.

Not an anomaly of an instance — a finding about the *model*: a collector that renamed a span, a
service moved from gRPC to HTTP, and every new instance will stall for want of a step that the
traffic does carry under another name. The tracker counts, per required step, the instances that
started after the step last matched and whose expected time (the step's deadline, else the
workflow's) has passed; at ``threshold`` such instances the step is drifting. Pure: the store
feeds it committed transitions and new instances, and reads its findings in event time.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from processors.model import WorkflowSpec, format_duration, matchers
from processors.types import Transition

DEFAULT_THRESHOLD = 50
#: start times kept per workflow (enough to count far past any threshold)
MAX_STARTS = 10_000


@dataclass(frozen=True, slots=True)
class StepHealth:
    workflow: str
    step: str
    matched: int
    last_matched_ns: int | None
    #: instances started after the last match whose expected time for the step has passed
    unmatched_instances: int
    drifting: bool
    hint: str


def _describe(wf: WorkflowSpec, step: str) -> str:
    out = []
    for m in matchers(wf.step(step)):
        what = f"span '{m.span}'" if m.span is not None else f"event '{m.event}'"
        out.append(f"{m.service or '*'} / {what}")
    return " or ".join(out)


class ModelHealth:
    def __init__(self, workflows: Mapping[str, WorkflowSpec], threshold: int = DEFAULT_THRESHOLD) -> None:
        self.workflows = workflows
        self.threshold = threshold
        self.matched: dict[tuple[str, str], int] = {}
        self.last: dict[tuple[str, str], int] = {}
        self._starts: dict[str, list[int]] = {name: [] for name in workflows}

    def restore(self, rows: Iterable[tuple[str, str, int, int | None]]) -> None:
        """(workflow, step, matched, last matched ns) as last written."""
        for wf, step, matched, last in rows:
            if wf in self.workflows:
                self.matched[(wf, step)] = matched
                if last is not None:
                    self.last[(wf, step)] = last

    def observe(self, transitions: Iterable[Transition], started: Iterable[tuple[str, int]]) -> None:
        """New transitions, and (workflow, started_at) of the instances they created."""
        for t in transitions:
            k = (t.workflow, t.step)
            self.matched[k] = self.matched.get(k, 0) + 1
            if t.event_time_ns > self.last.get(k, 0):
                self.last[k] = t.event_time_ns
        for wf, at in started:
            starts = self._starts.get(wf)
            if starts is not None:
                bisect.insort(starts, at)
                if len(starts) > MAX_STARTS:
                    del starts[: len(starts) - MAX_STARTS]

    def findings(self, now_ns: int) -> list[StepHealth]:
        out = []
        for name, wf in self.workflows.items():
            starts = self._starts[name]
            for step in wf.steps:
                k = (name, step.name)
                expected = step.deadline if step.deadline is not None else wf.deadline
                last = self.last.get(k)
                lo = bisect.bisect_right(starts, last) if last is not None else 0
                hi = bisect.bisect_right(starts, now_ns - expected)
                late = max(0, hi - lo) if not step.optional else 0
                drifting = late >= self.threshold
                hint = ""
                if drifting:
                    since = "has never matched" if last is None else "has matched nothing since its last match"
                    hint = (
                        f"step {step.name} of {name} {since} while {late:,} instances passed its expected time "
                        f"({format_duration(expected)} after their start): its matcher ({_describe(wf, step.name)}) "
                        "may no longer fit the traffic (a renamed span, a service moved from gRPC to HTTP). Run "
                        "`coordstate fit --model MODEL FILE` on a capture of the traffic (the collector's file "
                        "exporter) to see the spans it sends instead."
                    )
                out.append(StepHealth(name, step.name, self.matched.get(k, 0), last, late, drifting, hint))
        return out
