"""``coordstate fit``: how well a model explains the traffic, and what to change when it does not.

From OTLP files (what ``replay`` reads): per workflow and step, the spans and events it matched;
for a step that matched nothing, the nearest spans or events actually seen ("step ship-order
matched nothing; service shipping sent `POST /ship-order` 1,204 times"); the statuses and anomaly
kinds the model produces on this traffic (a replay into a throw-away database, every deadline let
pass at the end of the files, so nothing is left merely running); the spans of keyed
traces that no step matches; and how many instances were keyed by the business key rather than
the trace-id fallback. From ``--db``/``--api`` (spans already stored): the same from the tables,
without candidates — only matched spans are ever stored.
"""

from __future__ import annotations

import difflib
import multiprocessing
import tempfile
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from analytics.read.client import query_file
from collector.replay import replay
from collector.traffic import read_traffic
from processors.matching import CompiledModel, name_pattern
from processors.model import MatchSpec, ModelFile, StepSpec, WorkflowSpec, matchers

Fetch = Callable[[str], pa.Table]
CANDIDATES = 3
UNMATCHED_SHOWN = 15


@dataclass
class Candidate:
    service: str
    name: str
    what: str  # "span" | "event"
    count: int


@dataclass
class StepFit:
    name: str
    matcher: str
    optional: bool
    matched_spans: int
    matched_events: int
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def matched(self) -> int:
        return self.matched_spans + self.matched_events


@dataclass
class WorkflowFit:
    name: str
    instances: int
    keyed_by_business_key: int
    keyed_by_trace_id: int
    statuses: dict[str, int]
    anomalies: dict[str, int]
    steps: list[StepFit]
    unmatched_in_keyed_traces: list[Candidate]

    @property
    def hints(self) -> list[str]:
        out = []
        for s in self.steps:
            if s.matched == 0:
                near = s.candidates[0] if s.candidates else None
                seen = f"; service {near.service} sent {near.what} `{near.name}` {near.count:,} times" if near else ""
                out.append(f"step {s.name} matched nothing ({s.matcher}){seen}")
        return out


@dataclass
class FitReport:
    source: str
    spans: int
    traces: int
    workflows: list[WorkflowFit]
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        for wf, fit in zip(data["workflows"], self.workflows, strict=True):
            wf["hints"] = fit.hints
        return data


def describe(match: MatchSpec) -> str:
    what = f"span '{match.span}'" if match.span is not None else f"event '{match.event}'"
    return f"{match.service or '*'} / {what}"


def _nearest(step: StepSpec, traffic: TrafficSummary) -> list[Candidate]:
    """Spans or events seen, ranked by how close their name is to the step's matchers."""
    scored: list[tuple[float, Candidate]] = []
    for match in matchers(step):
        want = (match.span if match.span is not None else match.event) or ""
        bare = want.replace("*", "").replace("?", "").lower()
        service_ok = name_pattern(match.service)
        seen = traffic.span_names if match.span is not None else traffic.event_names
        what = "span" if match.span is not None else "event"
        for (service, name), count in seen.items():
            ratio = difflib.SequenceMatcher(None, bare, name.lower()).ratio()
            tail = difflib.SequenceMatcher(None, bare.rsplit("/", 1)[-1], name.lower().rsplit("/", 1)[-1]).ratio()
            score = max(ratio, tail) + (0.5 if service_ok(service) else 0.0)
            scored.append((score, Candidate(service, name, what, count)))
    scored.sort(key=lambda sc: (-sc[0], -sc[1].count, sc[1].service, sc[1].name))
    out: list[Candidate] = []
    for _, cand in scored:
        if all((c.service, c.name) != (cand.service, cand.name) for c in out):
            out.append(cand)
        if len(out) == CANDIDATES:
            break
    return out


def _step_counts(model: CompiledModel, wf: WorkflowSpec, traffic: TrafficSummary) -> dict[str, tuple[int, int]]:
    counts = {s.name: [0, 0] for s in wf.steps}
    for (service, name), n in traffic.span_names.items():
        for step in model.span_steps(service, name):
            if step.workflow == wf.name:
                counts[step.name][0] += n
    for (service, name), n in traffic.event_names.items():
        for step in model.event_steps(service, name):
            if step.workflow == wf.name:
                counts[step.name][1] += n
    return {k: (v[0], v[1]) for k, v in counts.items()}


def _outcomes(fetch: Fetch, workflow: str) -> tuple[dict[str, int], dict[str, int], int, int]:
    w = workflow.replace("'", "''")
    statuses = {r["status"]: r["n"] for r in fetch(f"SELECT status, count(*) AS n FROM instances WHERE workflow = '{w}' GROUP BY ALL ORDER BY 1").to_pylist()}  # fmt: skip
    kinds = {r["kind"]: r["n"] for r in fetch(f"SELECT kind, count(*) AS n FROM anomalies WHERE workflow = '{w}' GROUP BY ALL ORDER BY 1").to_pylist()}  # fmt: skip
    row = fetch(
        "SELECT count(*) FILTER (WHERE NOT list_contains(trace_ids, instance_key)) AS business, "
        f"count(*) FILTER (WHERE list_contains(trace_ids, instance_key)) AS fallback FROM instances WHERE workflow = '{w}'"
    ).to_pylist()[0]
    return statuses, kinds, int(row["business"] or 0), int(row["fallback"] or 0)


@dataclass
class TrafficSummary:
    """What fit needs of the files, small enough to come back from another process."""

    spans: int
    traces: int
    span_names: Counter[tuple[str, str]]
    event_names: Counter[tuple[str, str]]
    #: workflow → (service, span name) → spans of keyed traces that no step of it matches
    unmatched: dict[str, Counter[tuple[str, str]]]


def summarize_traffic(model_file: ModelFile, files: list[Path]) -> TrafficSummary:
    """One pass over the files (run in a process of its own, beside the replay)."""
    model = CompiledModel(model_file)
    keys = [a for wf in model.workflows.values() for a in wf.key.attributes]
    traffic = read_traffic(files, keys)
    unmatched: dict[str, Counter[tuple[str, str]]] = {}
    for wf in model.workflows.values():
        keyed = traffic.keyed_traces(wf.key.attributes)
        counts: Counter[tuple[str, str]] = Counter()
        for trace, service, name in traffic.names_by_trace:
            if trace in keyed and not any(s.workflow == wf.name for s in model.span_steps(service, name)):
                counts[(service, name)] += 1
        unmatched[wf.name] = counts
    return TrafficSummary(traffic.spans, len(traffic.traces), traffic.span_names, traffic.event_names, unmatched)


def summary_from_counts(
    model: CompiledModel,
    spans: int,
    traces: int,
    span_names: Counter[tuple[str, str]],
    event_names: Counter[tuple[str, str]],
    keyed_names: Counter[tuple[str, str]],
) -> TrafficSummary:
    """The summary from counts already taken (``discover`` has them): spans by (service, name),
    events likewise, and spans of traces keyed by the (one) workflow's key."""
    unmatched = {
        wf.name: Counter({
            (service, name): n for (service, name), n in keyed_names.items()
            if not any(s.workflow == wf.name for s in model.span_steps(service, name))
        })
        for wf in model.workflows.values()
    }  # fmt: skip
    return TrafficSummary(spans, traces, span_names, event_names, unmatched)


def fit_files(model: CompiledModel, files: list[Path], source: str, traffic: TrafficSummary | None = None) -> FitReport:
    """``traffic``: the files' summary when the caller has it; else the files are read twice at
    once: for names and counts in another process, and replayed here."""
    with tempfile.TemporaryDirectory(prefix="coordstate-fit-") as tmp:
        db = Path(tmp) / "fit.duckdb"
        if traffic is None:
            with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
                pending = pool.submit(summarize_traffic, model.model, files)
                replay(files, model, db, progress=False, settle=True)
                traffic = pending.result()
        else:
            replay(files, model, db, progress=False, settle=True)
        fetch: Fetch = lambda sql: query_file(db, sql)  # noqa: E731
        outcomes = {name: _outcomes(fetch, name) for name in model.workflows}
    workflows = [_workflow_fit(model, wf, traffic, outcomes[wf.name]) for wf in model.workflows.values()]
    return FitReport(source, traffic.spans, traffic.traces, workflows)


def _workflow_fit(
    model: CompiledModel,
    wf: WorkflowSpec,
    traffic: TrafficSummary,
    outcomes: tuple[dict[str, int], dict[str, int], int, int],
) -> WorkflowFit:
    counts = _step_counts(model, wf, traffic)
    steps = []
    for step in wf.steps:
        spans, events = counts[step.name]
        fit = StepFit(step.name, " or ".join(describe(m) for m in matchers(step)), step.optional, spans, events)
        if spans + events == 0:
            fit.candidates = _nearest(step, traffic)
        steps.append(fit)
    statuses, kinds, business, fallback = outcomes
    return WorkflowFit(
        wf.name, sum(statuses.values()), business, fallback, statuses, kinds, steps,
        [Candidate(s, n, "span", c) for (s, n), c in traffic.unmatched[wf.name].most_common(UNMATCHED_SHOWN)],
    )  # fmt: skip


def fit_stored(model: CompiledModel, fetch: Fetch, source: str) -> FitReport:
    """The same from a database: matched spans only, so no candidates for unmatched steps."""
    workflows = []
    for wf in model.workflows.values():
        w = wf.name.replace("'", "''")
        rows = fetch(
            f"SELECT step, count(DISTINCT span_id) FILTER (WHERE source = 'span') AS spans, "
            f"count(*) FILTER (WHERE source <> 'span') AS events FROM transitions WHERE workflow = '{w}' GROUP BY ALL"
        ).to_pylist()
        counts = {r["step"]: (int(r["spans"]), int(r["events"])) for r in rows}
        steps = [
            StepFit(s.name, " or ".join(describe(m) for m in matchers(s)), s.optional, *counts.get(s.name, (0, 0)))
            for s in wf.steps
        ]
        statuses, kinds, business, fallback = _outcomes(fetch, wf.name)
        workflows.append(WorkflowFit(wf.name, sum(statuses.values()), business, fallback, statuses, kinds, steps, []))
    spans = int(fetch("SELECT count(*) AS n FROM spans").to_pylist()[0]["n"])
    traces = int(fetch("SELECT count(DISTINCT trace_id) AS n FROM spans").to_pylist()[0]["n"])
    note = (
        "a database keeps only the spans a model matched: for the nearest candidates of an unmatched step, "
        "run fit on a capture of the traffic (the collector's file exporter) instead"
    )
    return FitReport(source, spans, traces, workflows, note)


def render_fit(report: FitReport) -> str:
    lines = [f"fit of {report.source}: {report.spans:,} spans in {report.traces:,} traces"]
    for wf in report.workflows:
        total = wf.keyed_by_business_key + wf.keyed_by_trace_id
        share = f"{wf.keyed_by_business_key / total:.1%}" if total else "n/a"
        lines += ["", f"workflow {wf.name}: {wf.instances:,} instances; keyed by the business key: {share} "
                  f"({wf.keyed_by_business_key:,}), by the trace id (fallback): {wf.keyed_by_trace_id:,}"]  # fmt: skip
        lines.append("  statuses:  " + (", ".join(f"{k} {v:,}" for k, v in wf.statuses.items()) or "none"))
        lines.append("  anomalies: " + (", ".join(f"{k} {v:,}" for k, v in wf.anomalies.items()) or "none"))
        width = max(len(s.name) for s in wf.steps)
        lines.append(f"  {'step'.ljust(width)}  {'spans':>9}  {'events':>9}  matcher")
        for s in wf.steps:
            flag = "  (optional)" if s.optional else ""
            lines.append(f"  {s.name.ljust(width)}  {s.matched_spans:>9,}  {s.matched_events:>9,}  {s.matcher}{flag}")
        for s in wf.steps:
            if s.matched == 0:
                lines.append(f"  step {s.name} matched nothing ({s.matcher})")
                lines += [f"      nearest: service {c.service} sent {c.what} `{c.name}` {c.count:,} times" for c in s.candidates]  # fmt: skip
        if wf.unmatched_in_keyed_traces:
            lines.append("  spans in keyed traces that no step matches:")
            lines += [f"      {c.service} `{c.name}` {c.count:,}" for c in wf.unmatched_in_keyed_traces]
    if report.note:
        lines += ["", f"note: {report.note}"]
    return "\n".join(lines) + "\n"
