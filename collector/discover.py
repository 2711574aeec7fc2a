"""``coordstate discover``: propose a model from traffic (OTLP files), with the evidence for it.

1. **Key**: every string attribute of the first spans (``KEY_SAMPLE_SPANS``) is ranked by how much
   of the traffic it covers (its traces, and traces that link to them), how unique its values are
   per trace, how stable within a trace, and on how many services it appears.
2. **Instances**: a trace with the key is (part of) the instance of its value; a trace linking to
   one joins it; a trace without it whose root span is a keyed trace's root (a failed checkout
   that never set the order id) is an instance of its own (``fallback: trace_id``).
3. **Steps**: server, producer and consumer spans (client and internal spans are the same work
   seen from the caller or inside it) and span events that recur in instances, with ids in names
   generalised to ``*``. Required when present in ≥ 90 % of the instances without any error (lost spans happen).
   A span or event that repeats within most instances that have it (a lookup per cart item) is a
   call, not a step: left out, with a comment.
4. **requires**: A completes before B starts in ≥ 99 % of the instances where both occur (only
   the nearest such steps are kept); **start**: the step that starts first in most instances,
   among those seen in nearly all of them;
   **deadline**: twice the p99 duration of an instance (at least 30 s).
5. **Compensations**: a rare step that mostly follows a failure, or whose name says it undoes
   something (refund, cancel, …), is proposed as a comment for a person to confirm.

The aggregation runs in an in-memory DuckDB, loaded by processes side by side
(``collector/discover_load.py``); the first spans are read once more when no ``--key`` is given.
(Over 400 lines on purpose: one algorithm in stages that share that database and its SQL, and
the model file it writes; each stage is a function of its own.)
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from collector import discover_load
from collector.decode import _service
from collector.decoders import auto_workers
from collector.discover_load import string_attrs
from collector.replay import Skipped, requests_in
from processors.model import format_duration

KEY_SAMPLE_SPANS = 100_000
STEP_KINDS = (2, 4, 5)  # server, producer, consumer
MIN_SHARE = 0.02  # a step occurs in at least this share of instances
REQUIRED_SHARE = 0.9
#: a span or event seen more than once in more than this share of the instances that have it is
#: a call made per item (a product lookup per cart line), not a step: a retry is rarer than that
REPEATED_SHARE = 0.2
PRECEDENCE = 0.99
FAILURE_WORDS = ("fail", "error", "reject", "declin", "denied")
UNDO_WORDS = ("refund", "cancel", "revert", "rollback", "undo", "compensat", "void", "reversal", "release")


class DiscoverError(ValueError):
    """Nothing to build a model from (no key found, no instances): says what and what to try."""


@dataclass
class KeyCandidate:
    attribute: str
    coverage: float
    uniqueness: float
    stability: float
    services: int
    score: float


@dataclass
class Step:
    name: str
    service: str
    span: str | None
    events: list[tuple[str, str]]  # (event name, state)
    instances: int
    share: float
    clean_share: float
    required: bool
    requires: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)
    compensates: tuple[str, str] | None = None  # (step, why)


@dataclass
class Discovery:
    key: KeyCandidate
    ranked: list[KeyCandidate]
    instances: int
    fallback_instances: int
    steps: list[Step]
    start: str
    deadline_ns: int
    p99_ns: int
    wait_ns: int
    spans: int
    #: (service, span or event name, share of its instances with it more than once): left out
    repeated: list[tuple[str, str, float]] = field(default_factory=list)
    #: what fit needs of the files, counted here so that it does not read them again
    counts: NameCounts | None = None


@dataclass
class NameCounts:
    traces: int
    span_names: Counter[tuple[str, str]]
    event_names: Counter[tuple[str, str]]
    #: spans of traces keyed by the business key (or linking to one)
    keyed_names: Counter[tuple[str, str]]


def _name_counts(con: duckdb.DuckDBPyConnection) -> NameCounts:
    def counter(sql: str) -> Counter[tuple[str, str]]:
        return Counter({(service, name): int(n) for service, name, n in con.execute(sql).fetchall()})

    return NameCounts(
        int(_one(con, "SELECT count(DISTINCT trace) FROM spans")[0]),
        counter("SELECT service, name, count(*) FROM spans GROUP BY ALL"),
        counter("SELECT service, name, count(*) FROM events GROUP BY ALL"),
        counter("SELECT service, name, count(*) FROM spans "
                "WHERE trace IN (SELECT trace FROM instance_of WHERE NOT fallback) GROUP BY ALL"),
    )  # fmt: skip


def _one(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> tuple[Any, ...]:
    row = con.execute(sql, params or []).fetchone()
    assert row is not None  # an aggregate always returns a row
    return row


# -- reading ------------------------------------------------------------------------------------
def _spans(files: Iterable[Path]) -> Iterator[tuple[str, Any, Any]]:
    for path in files:
        for request in requests_in(path):
            if isinstance(request, Skipped):
                continue
            for resource, scopes in request.resources:
                service = _service(resource)
                for _, scope in scopes:
                    for sp in scope.spans:
                        yield service, resource, sp


def rank_keys(files: list[Path]) -> list[KeyCandidate]:
    con = duckdb.connect()
    rows: dict[str, list[Any]] = {"trace": [], "service": [], "key": [], "value": []}
    links: dict[str, list[str]] = {"trace": [], "target": []}
    traces: set[str] = set()
    for n, (service, resource, sp) in enumerate(_spans(files)):
        if n >= KEY_SAMPLE_SPANS:
            break
        trace = sp.trace_id.hex()
        traces.add(trace)
        attrs = list(string_attrs(sp.attributes))
        attrs += [(kv.key, kv.value.string_value) for kv in resource.attributes if kv.value.string_value]
        for key, value in attrs:
            rows["trace"].append(trace)
            rows["service"].append(service)
            rows["key"].append(key)
            rows["value"].append(value)
        for link in sp.links:
            links["trace"].append(trace)
            links["target"].append(link.trace_id.hex())
    if not traces:
        raise DiscoverError("no spans in the files: pass OTLP files as replay reads them (JSON lines or protobuf)")
    con.register("attrs", pa.table(rows))
    con.register("links", pa.table(links, schema=pa.schema([("trace", pa.string()), ("target", pa.string())])))
    found = con.execute(
        """
        WITH per AS (
            SELECT key, count(DISTINCT trace) AS traces, count(DISTINCT value) AS vals,
                   count(DISTINCT service) AS services
            FROM attrs GROUP BY key
        ), covered AS (
            SELECT key, count(DISTINCT t) AS covered FROM (
                SELECT key, trace AS t FROM attrs
                UNION SELECT a.key, l.trace FROM attrs a JOIN links l ON l.target = a.trace
            ) GROUP BY key
        ), stable AS (
            SELECT key, avg(CASE WHEN nv = 1 THEN 1.0 ELSE 0.0 END) AS stability
            FROM (SELECT key, trace, count(DISTINCT value) AS nv FROM attrs GROUP BY ALL) GROUP BY key
        )
        SELECT key, covered, least(vals / traces, 1.0), stability, services
        FROM per JOIN covered USING (key) JOIN stable USING (key)
        WHERE traces >= 3 AND vals / traces >= 0.5
        """
    ).fetchall()
    con.close()
    out = []
    for key, covered, uniq, stab, services in found:
        coverage = covered / len(traces)
        score = coverage * uniq * uniq * stab * (1 + 0.25 * (services - 1))
        out.append(KeyCandidate(key, coverage, uniq, stab, services, score))
    return sorted(out, key=lambda c: (-c.score, c.attribute))


def _load(con: duckdb.DuckDBPyConnection, files: list[Path], key: str) -> int:
    """Every span, event, link and key value into tables of ``con``; returns the number of spans."""
    total = 0
    for tables, spans in discover_load.load(files, key, auto_workers()):
        for name, table in tables.items():
            if table.num_rows:
                con.register("_part", table)
                con.execute(f"INSERT INTO {name} SELECT * FROM _part")
                con.unregister("_part")
        total += spans
    return total


_SCHEMA = """
CREATE TABLE spans (trace VARCHAR, service VARCHAR, name VARCHAR, kind INTEGER, "start" BIGINT, "end" BIGINT, error BOOLEAN, root BOOLEAN);
CREATE TABLE events (trace VARCHAR, service VARCHAR, name VARCHAR, "time" BIGINT);
CREATE TABLE links (trace VARCHAR, target VARCHAR);
CREATE TABLE keys (trace VARCHAR, value VARCHAR);
"""

_INSTANCES = """
CREATE TABLE trace_key AS SELECT trace, min(value) AS instance FROM keys GROUP BY trace;
CREATE TABLE linked AS
    SELECT DISTINCT l.trace, k.instance FROM links l JOIN trace_key k ON k.trace = l.target
    WHERE l.trace NOT IN (SELECT trace FROM trace_key);
CREATE TABLE roots AS SELECT DISTINCT trace, service, name FROM spans WHERE root;
CREATE TABLE key_roots AS
    SELECT r.service, r.name FROM roots r JOIN trace_key USING (trace) GROUP BY ALL
    HAVING count(*) >= 0.1 * (SELECT count(*) FROM trace_key);
CREATE TABLE instance_of AS
    SELECT trace, instance, false AS fallback FROM trace_key
    UNION ALL SELECT trace, instance, false FROM linked
    UNION ALL SELECT DISTINCT r.trace, r.trace, true FROM roots r JOIN key_roots USING (service, name)
        WHERE r.trace NOT IN (SELECT trace FROM trace_key) AND r.trace NOT IN (SELECT trace FROM linked);
CREATE TABLE occurrences AS
    SELECT i.instance, s.service, s.name, NULL AS event, min(s."start") AS first_start, min(s."end") AS first_end,
           bool_or(s.error) AS failed, count(*) AS calls
    FROM spans s JOIN instance_of i USING (trace) WHERE s.kind IN (2, 4, 5) GROUP BY ALL
    UNION ALL
    SELECT i.instance, e.service, NULL, e.name, min(e."time"), min(e."time"), false, count(*)
    FROM events e JOIN instance_of i USING (trace) GROUP BY ALL;
CREATE TABLE troubled AS
    SELECT DISTINCT i.instance FROM spans s JOIN instance_of i USING (trace) WHERE s.error;
"""


def discover(files: list[Path], key: str | None = None) -> Discovery:
    ranked = rank_keys(files) if key is None else []
    if key is None:
        if not ranked:
            raise DiscoverError(
                "no attribute looks like a business key (present on most traces, one value per trace); "
                "name it with --key ATTR"
            )
        chosen = ranked[0]
    else:
        chosen = KeyCandidate(key, math.nan, math.nan, math.nan, 0, math.nan)
    con = duckdb.connect()
    try:
        con.execute(_SCHEMA)
        spans = _load(con, files, chosen.attribute)
        con.execute(_INSTANCES)
        (instances, fallback) = _one(
            con, "SELECT count(DISTINCT instance), count(DISTINCT instance) FILTER (WHERE fallback) FROM instance_of"
        )
        if not instances:
            raise DiscoverError(f"no span carries {chosen.attribute!r}: name the business key with --key ATTR")
        repeated: list[tuple[str, str, float]] = []
        steps = _steps(con, instances, repeated)
        _times(con, steps)  # step_times: what _start, _requires and _compensations read
        start = _start(con, steps)
        _requires(con, steps)
        _compensations(con, steps)
        counts = _name_counts(con)
        p99 = int(_one(con,
            "SELECT quantile_cont(d, 0.99) FROM (SELECT max(first_end) - min(first_start) AS d FROM occurrences GROUP BY instance)"
        )[0] or 0)  # fmt: skip
        wait = int(_one(con,
            "SELECT quantile_cont(d, 0.99) FROM (SELECT max(s.\"end\") - min(s.\"end\") AS d FROM spans s "
            "JOIN trace_key USING (trace) GROUP BY trace)"
        )[0] or 0)  # fmt: skip
    finally:
        con.close()
    return Discovery(
        chosen, ranked, int(instances), int(fallback), steps, start,
        _round_up(max(2 * p99, 30_000_000_000)), p99, _round_up(max(3 * wait, 10_000_000_000)), spans, repeated, counts,
    )  # fmt: skip


def _round_up(ns: int) -> int:
    second = 1_000_000_000
    for unit in (60 * second, 10 * second, second):
        if ns >= 2 * unit:
            return -(-ns // unit) * unit
    return -(-ns // second) * second


def _step_name(service: str, name: str, taken: set[str]) -> str:
    text = name.replace("grpc.", "").rstrip("/")
    for sep in ("/", " "):
        if sep in text:
            text = text.rsplit(sep, 1)[-1] if sep == "/" else text
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", text).lower()
    text = re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "step"
    if text in taken:
        text = f"{re.sub(r'[^a-z0-9]+', '-', service.lower())}-{text}"
    while text in taken:
        text += "-2"
    return text


def _steps(con: duckdb.DuckDBPyConnection, instances: int, repeats: list[tuple[str, str, float]]) -> list[Step]:
    """The steps, and (into ``repeats``) what recurs in instances but repeats within them."""
    clean = _one(con, "SELECT count(DISTINCT instance) FROM instance_of WHERE instance NOT IN (SELECT instance FROM troubled)")[0]  # fmt: skip
    rows = con.execute(
        """
        SELECT service, name, event, count(*) AS n,
               count(*) FILTER (WHERE instance NOT IN (SELECT instance FROM troubled)) AS n_clean,
               min(first_start) AS t, count(*) FILTER (WHERE calls > 1) / count(*) AS repeated
        FROM occurrences GROUP BY ALL HAVING count(*) >= greatest(2, ? * ?) ORDER BY t
        """,
        [MIN_SHARE, instances],
    ).fetchall()
    steps: list[Step] = []
    taken: set[str] = set()
    by_event_prefix: dict[tuple[str, str], Step] = {}
    for service, span, event, n, n_clean, _, repeated in rows:
        if repeated > REPEATED_SHARE:
            repeats.append((service, span if event is None else event, repeated))
            continue
        share, clean_share = n / instances, (n_clean / clean if clean else 0.0)
        if event is not None:
            failing = any(w in event.lower() for w in FAILURE_WORDS)
            prefix = (service, event.rsplit(".", 1)[0] if "." in event else event)
            sibling = by_event_prefix.get(prefix)
            if sibling is not None:  # inventory.reserved / inventory.failed: one step, two outcomes
                sibling.events.append((event, "failed" if failing else "completed"))
                sibling.instances += n
                sibling.share = min(1.0, sibling.share + share)
                sibling.clean_share = min(1.0, sibling.clean_share + clean_share)
                sibling.required = sibling.clean_share >= REQUIRED_SHARE
                continue
            step = Step(_step_name(service, prefix[1] if "." in event else event, taken), service, None,
                        [(event, "failed" if failing else "completed")], n, share, clean_share, clean_share >= REQUIRED_SHARE)  # fmt: skip
            by_event_prefix[prefix] = step
        else:
            step = Step(_step_name(service, span, taken), service, span, [], n, share, clean_share, clean_share >= REQUIRED_SHARE)  # fmt: skip
        taken.add(step.name)
        steps.append(step)
    for s in steps:
        s.evidence.append(f"seen in {s.share:.1%} of instances, {s.clean_share:.1%} of those without any error")
    return steps


def _occ_filter(step: Step) -> str:
    service = step.service.replace("'", "''")
    if step.span is not None:
        return f"service = '{service}' AND name = '{step.span.replace(chr(39), chr(39) * 2)}'"
    events = ", ".join("'" + e.replace("'", "''") + "'" for e, _ in step.events)
    return f"service = '{service}' AND event IN ({events})"


def _times(con: duckdb.DuckDBPyConnection, steps: list[Step]) -> None:
    parts = [
        f"SELECT instance, {i} AS step, min(first_start) AS s, min(first_end) AS e, bool_or(failed) AS failed "
        f"FROM occurrences WHERE {_occ_filter(st)} GROUP BY instance"
        for i, st in enumerate(steps)
    ]
    con.execute("CREATE OR REPLACE TABLE step_times AS " + " UNION ALL ".join(parts))


def _start(con: duckdb.DuckDBPyConnection, steps: list[Step]) -> str:
    """The step that starts first in most instances, among those seen in (nearly) all of them: a
    consumer waiting for messages starts its span before the order even exists."""
    top = max(s.share for s in steps)
    candidates = ", ".join(str(i) for i, s in enumerate(steps) if s.share >= top - 0.05)
    first = _one(
        con,
        "SELECT step, count(*) FROM (SELECT instance, arg_min(step, s) AS step FROM step_times "
        f"WHERE step IN ({candidates}) GROUP BY instance) GROUP BY step ORDER BY 2 DESC, 1 LIMIT 1",
    )
    return steps[int(first[0])].name


def _requires(con: duckdb.DuckDBPyConnection, steps: list[Step]) -> None:
    pairs = con.execute(
        """
        SELECT a.step, b.step, count(*) AS both, avg(CASE WHEN a.e <= b.s THEN 1.0 ELSE 0.0 END) AS before
        FROM step_times a JOIN step_times b ON a.instance = b.instance AND a.step <> b.step
        GROUP BY ALL HAVING count(*) >= 5
        """
    ).fetchall()
    after: dict[int, set[int]] = {}
    share: dict[tuple[int, int], tuple[int, float]] = {}
    for a, b, both, before in pairs:
        if before >= PRECEDENCE:
            after.setdefault(int(b), set()).add(int(a))
            share[(int(a), int(b))] = (int(both), float(before))
    for b, preds in after.items():
        nearest = {a for a in preds if not any(a in after.get(c, set()) for c in preds if c != a)}
        for a in sorted(nearest):
            both, before = share[(a, b)]
            steps[b].requires.append(steps[a].name)
            steps[b].evidence.append(
                f"{steps[a].name} completed before it started in {before:.1%} of {both:,} instances"
            )


def _compensations(con: duckdb.DuckDBPyConnection, steps: list[Step]) -> None:
    for i, step in enumerate(steps):
        if step.share > 0.5 or step.span is None:
            continue
        after_failure = _one(
            con,
            "SELECT avg(CASE WHEN instance IN (SELECT instance FROM troubled) THEN 1.0 ELSE 0.0 END) FROM step_times WHERE step = ?",
            [i],
        )[0] or 0.0  # fmt: skip
        undo = any(w in step.span.lower() for w in UNDO_WORDS)
        if after_failure < 0.5 and not undo:
            continue
        target = next(
            (s for s in steps if s is not step and s.service == step.service and s.share > step.share and s.span), None
        )
        if target is None:
            continue
        why = f"{step.name} follows a failure in {after_failure:.0%} of the instances it appears in" + (
            "; its name says it undoes something" if undo else ""
        )
        target.compensates = (step.name, why)


def render_model(d: Discovery, workflow: str = "discovered") -> str:
    """The model file: valid ``file_format: "1"`` YAML, every choice commented with its evidence."""
    k = d.key
    q = json.dumps
    lines = [
        f"# Proposed by `coordstate discover` from {d.spans:,} spans: {d.instances:,} instances",
        f"# ({d.fallback_instances:,} of them without the key, keyed by their trace id). Review it, then run",
        "# `coordstate fit --model THIS-FILE FILES...` and `coordstate check THIS-FILE`.",
        'file_format: "1"',
        "workflows:",
        f"  - name: {workflow}",
        "    key:",
    ]
    if not math.isnan(k.score):
        lines.append(f"      # on {k.coverage:.0%} of traces (with linked ones), {k.uniqueness:.0%} distinct values per trace, "
                     f"one value in {k.stability:.0%} of traces, on {k.services} service(s)")  # fmt: skip
        lines += [f"      # runner-up: {c.attribute} (score {c.score:.2f} vs {k.score:.2f})" for c in d.ranked[1:3]]
    lines += [
        f"      attributes: [{q(k.attribute)}]",
        "      inherit: [trace, links]",
        "      fallback: trace_id" + ("   # some instances never carry the key" if d.fallback_instances else ""),
        f"      wait: {format_duration(d.wait_ns)}   # 3x the p99 time from a trace's first span end to its last",
        f"    deadline: {format_duration(d.deadline_ns)}   # 2x the p99 instance duration ({d.p99_ns / 1e9:.2f} s), at least 30s",
        "    grace: 10s",
        f"    start: [{d.start}]   # starts first in most instances",
        "    steps:",
    ]  # fmt: skip
    for s in d.steps:
        lines.append(f"      - name: {s.name}   # " + "; ".join(s.evidence[:1]))
        lines += [f"        # {e}" for e in s.evidence[1:]]
        if s.span is not None:
            lines.append(f"        match: {{service: {q(s.service)}, span: {q(s.span)}}}")
        elif len(s.events) == 1 and s.events[0][1] == "completed":
            lines.append(f"        match: {{service: {q(s.service)}, event: {q(s.events[0][0])}}}")
        else:
            lines.append("        match:")
            for event, state in s.events:
                lines.append(f"          - {{service: {q(s.service)}, event: {q(event)}, state: {state}}}")
        if s.requires:
            lines.append(f"        requires: [{', '.join(s.requires)}]")
        if not s.required:
            lines.append("        optional: true")
        if s.compensates:
            lines.append(f"        # compensated_by: {s.compensates[0]}   # candidate, confirm: {s.compensates[1]}")
    for service, name, share in d.repeated:
        lines.append(f"      # left out: {service} / {q(name)}, more than once in {share:.0%} of the instances that have it "
                     "(a call per item, not a step)")  # fmt: skip
    return "\n".join(lines) + "\n"
