"""Key correlation and the processing step: span records → keyed transitions of instances.

``Processor.process(spans, now_ns)`` matches each span against the model, finds its business key
(own attributes → resource attributes → its trace → its links → the trace id when the model says
``trace_id: true``), and returns the *new* transitions of started instances. What cannot be placed
yet waits in bounded buffers:

- **key buffer**: a matched span without a key waits (``key.wait`` of the clock's time, counted
  from its own end or its arrival, whichever is later) for its trace (or a linked trace) to reveal
  the key — the order id often sits on a root span that ends, and arrives, after its children.
  After ``key.wait`` it takes the trace id as key (``fallback: trace_id``) or is dropped as
  ``unkeyed``.
- **start buffer**: a keyed span of an instance whose start step was not seen yet waits for it;
  after ``key.wait`` it is dropped as ``orphan`` (kept in ``spans`` for inspection).

Everything in the buffers is reported in :class:`StepResult` (``pending_added`` /
``pending_removed``) so the store can persist it with the batch: acknowledging a buffered span
never loses it. The processor never does I/O and never reads a clock: ``now_ns`` is given.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from processors.matching import Candidate, CompiledModel
from processors.model import WorkflowSpec
from processors.state import InstanceId, InstanceTable
from processors.types import DropReason, SpanRecord, Transition

DEFAULT_MAX_PENDING = 100_000
DEFAULT_MAX_TRACE_KEYS = 200_000


class PendingSpan(NamedTuple):
    """A matched span waiting in a buffer: for its key (``key is None``) or its instance start."""

    workflow: str
    span: SpanRecord
    arrived_ns: int
    key: str | None = None

    @property
    def ident(self) -> tuple[str, str, str]:
        return (self.workflow, self.span.trace_id, self.span.span_id)


class MatchedSpan(NamedTuple):
    """A span the model matched, with where it ended up (for the ``spans`` table)."""

    workflow: str
    instance_key: str | None
    span: SpanRecord
    steps: tuple[str, ...]
    disposition: str  # "keyed" | "orphan" | "unkeyed"


class LearnedKey(NamedTuple):
    workflow: str
    trace_id: str
    instance_key: str


class Routed(NamedTuple):
    """A matched span whose key is settled, handed from an ingest node to the fold node that owns
    its key (lake mode with roles): ``key`` is None for a span that never got one (``unkeyed``)."""

    workflow: str
    key: str | None
    span: SpanRecord
    arrived_ns: int


@dataclass(slots=True)
class StepResult:
    transitions: list[Transition] = field(default_factory=list)
    spans: list[MatchedSpan] = field(default_factory=list)
    pending_added: list[PendingSpan] = field(default_factory=list)
    pending_removed: list[tuple[str, str, str]] = field(default_factory=list)
    learned_keys: list[LearnedKey] = field(default_factory=list)
    #: spans whose key is settled, for the fold nodes (only a :class:`KeyRouter` fills this)
    routed: list[Routed] = field(default_factory=list)
    dropped: Counter[DropReason] = field(default_factory=Counter)
    touched: set[InstanceId] = field(default_factory=set)
    #: instances this step started (nothing of them is stored yet: no rows to replace)
    created: set[InstanceId] = field(default_factory=set)

    def merge(self, other: StepResult) -> None:
        self.transitions.extend(other.transitions)
        self.spans.extend(other.spans)
        self.pending_added.extend(other.pending_added)
        self.pending_removed.extend(other.pending_removed)
        self.learned_keys.extend(other.learned_keys)
        self.routed.extend(other.routed)
        self.dropped.update(other.dropped)
        self.touched |= other.touched
        self.created |= other.created


class _WorkflowCorrelator:
    """Key and start buffers of one workflow."""

    def __init__(self, wf: WorkflowSpec, max_trace_keys: int) -> None:
        self.wf = wf
        self.trace_keys: OrderedDict[str, str] = OrderedDict()
        self.max_trace_keys = max_trace_keys
        self.by_trace: dict[str, dict[str, PendingSpan]] = {}
        self.by_link: dict[str, set[str]] = {}
        self.by_key: dict[str, dict[str, PendingSpan]] = {}

    def learn(self, trace_id: str, key: str, out: StepResult) -> bool:
        if trace_id in self.trace_keys:
            self.trace_keys.move_to_end(trace_id)
            return False
        self.trace_keys[trace_id] = key
        if len(self.trace_keys) > self.max_trace_keys:
            self.trace_keys.popitem(last=False)
        out.learned_keys.append(LearnedKey(self.wf.name, trace_id, key))
        return True

    def inherited(self, span: SpanRecord) -> str | None:
        if "trace" in self.wf.key.inherit:
            key = self.trace_keys.get(span.trace_id)
            if key is not None:
                return key
        if "links" in self.wf.key.inherit:
            for link in span.links:
                key = self.trace_keys.get(link.trace_id)
                if key is not None:
                    return key
        if self.wf.key.trace_id:
            return span.trace_id
        return None


class Processor:
    """Matching + correlation + the instance table. Not thread-safe: one writer calls it."""

    def __init__(
        self,
        model: CompiledModel,
        table: InstanceTable | None = None,
        *,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_trace_keys: int = DEFAULT_MAX_TRACE_KEYS,
    ) -> None:
        self.model = model
        self.table = table if table is not None else InstanceTable(model.workflows)
        self.max_pending = max_pending
        self._wf = {name: _WorkflowCorrelator(wf, max_trace_keys) for name, wf in model.workflows.items()}
        self._pending: OrderedDict[tuple[str, str, str], PendingSpan] = OrderedDict()

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def pending_delta(self, result: StepResult) -> tuple[set[tuple[str, str, str]], list[PendingSpan]]:
        """What to persist after ``result``: idents to delete, then entries to insert.

        Within one step an entry may move between buffers (key found, start not yet seen), so
        the store deletes every ident touched and inserts what is still buffered now.
        """
        touched = set(result.pending_removed) | {p.ident for p in result.pending_added}
        insert = [p for p in (self._pending.get(i) for i in touched) if p is not None]
        return touched, insert

    # -- restart ------------------------------------------------------------------------
    def restore(self, keys: Iterable[LearnedKey], pending: Iterable[PendingSpan]) -> None:
        """Rebuild buffers from the database (instance transitions go to ``table.restore``)."""
        for lk in keys:
            corr = self._wf.get(lk.workflow)
            if corr is not None:
                corr.trace_keys[lk.trace_id] = lk.instance_key
        for p in pending:
            if p.workflow in self._wf:
                self._park(p, StepResult(), record=False)

    # -- the hot path ---------------------------------------------------------------------
    def process(self, spans: Sequence[SpanRecord], now_ns: int) -> StepResult:
        out = StepResult()
        seen: list[tuple[SpanRecord, list[Candidate], dict[str, str]]] = []
        for span in spans:
            own: dict[str, str] = {}  # workflow → the key this span carries itself
            for name, corr in self._wf.items():
                key = self.model.key_of(corr.wf, span)
                if key is not None:
                    own[name] = key
            seen.append((span, self.model.candidates(span), own))
        self.table.prefetch(self._instances_of(seen))
        matched: list[tuple[SpanRecord, list[Candidate], dict[str, str]]] = []
        for span, cands, own in seen:
            for name, key in own.items():
                corr = self._wf[name]
                if corr.learn(span.trace_id, key, out):
                    self._release_trace(corr, span.trace_id, now_ns, out)
            if cands:
                matched.append((span, cands, own))
            elif not own:
                out.dropped[DropReason.UNMATCHED] += 1
        for span, cands, own in matched:
            by_wf: dict[str, list[Candidate]] = {}
            for c in cands:
                by_wf.setdefault(c.workflow, []).append(c)
            for workflow, wf_cands in by_wf.items():
                key = own.get(workflow) or self._wf[workflow].inherited(span)
                # a span waits ``key.wait`` from its own end or from now, whichever is later: the
                # clock is event time, and one batch can move it past spans still to be placed
                arrived = span.end_ns if span.end_ns > now_ns else now_ns
                self._place(PendingSpan(workflow, span, arrived, key), now_ns, out, wf_cands)
        self._evict_overflow(now_ns, out)
        return out

    def process_routed(self, items: Sequence[Routed], now_ns: int) -> StepResult:
        """Spans whose key an ingest node settled: placed as :meth:`process` places a keyed span
        (start buffer, transitions, the instance table); no key is looked for here."""
        out = StepResult()
        self.table.prefetch((i.workflow, i.key) for i in items if i.key is not None)
        for item in items:
            if item.workflow not in self._wf:
                continue
            if item.key is None:
                steps = tuple(sorted({c.step for c in self.model.candidates(item.span) if c.workflow == item.workflow}))
                out.dropped[DropReason.UNKEYED] += 1
                out.spans.append(MatchedSpan(item.workflow, None, item.span, steps, DropReason.UNKEYED.value))
                continue
            arrived = item.span.end_ns if item.span.end_ns > now_ns else now_ns
            self._place(PendingSpan(item.workflow, item.span, arrived, item.key), now_ns, out)
        self._evict_overflow(now_ns, out)
        return out

    def tick(self, now_ns: int) -> StepResult:
        """Expire buffered spans older than their workflow's ``key.wait``."""
        out = StepResult()
        expired = [p for p in self._pending.values() if now_ns - p.arrived_ns >= self._wf[p.workflow].wf.key.wait]
        for p in expired:
            if p.ident in self._pending:
                self._expire(p, now_ns, out)
        return out

    # -- internals ----------------------------------------------------------------------
    def _instances_of(self, seen: list[tuple[SpanRecord, list[Candidate], dict[str, str]]]) -> set[InstanceId]:
        """The instances a batch will likely touch: every key a span carries, and the key a
        matched span inherits through its trace or links (brought into memory in one read)."""
        out: set[InstanceId] = set()
        for span, cands, own in seen:
            out.update(own.items())
            for workflow in {c.workflow for c in cands} - own.keys():
                key = self._wf[workflow].inherited(span)
                if key is not None:
                    out.add((workflow, key))
        return out

    def _place(self, p: PendingSpan, now_ns: int, out: StepResult, cands: list[Candidate] | None = None) -> None:
        corr = self._wf[p.workflow]
        if p.key is None:
            self._park(p, out)
            return
        instance = (p.workflow, p.key)
        if cands is None:
            cands = self._cands(p)
        if instance not in self.table and not any(c.step in corr.wf.start_steps for c in cands):
            self._park(p, out)
            return
        self._emit(p, p.key, "keyed", out, cands)
        if instance not in self.table:
            return
        waiting = corr.by_key.pop(p.key, {})
        for q in waiting.values():
            self._unpark(q, out)
            self._emit(q, p.key, "keyed", out)

    def _cands(self, p: PendingSpan) -> list[Candidate]:
        return [c for c in self.model.candidates(p.span) if c.workflow == p.workflow]

    def _emit(
        self,
        p: PendingSpan,
        key: str,
        disposition: str,
        out: StepResult,
        cands: list[Candidate] | None = None,
    ) -> None:
        if cands is None:
            cands = self._cands(p)
        span = p.span
        workflow, trace_id, span_id, service = p.workflow, span.trace_id, span.span_id, span.service
        transitions = [
            Transition(workflow, key, c.step, c.state, c.time_ns, trace_id, span_id, service, c.source) for c in cands
        ]
        instance = (p.workflow, key)
        known = instance in self.table
        new, dupes = self.table.add(transitions)
        if dupes:
            out.dropped[DropReason.DUPLICATE] += dupes
        if new:
            out.transitions.extend(new)
            out.touched.add(instance)
            if not known:
                out.created.add(instance)
            out.spans.append(MatchedSpan(p.workflow, key, p.span, tuple(sorted({c.step for c in cands})), disposition))

    def _park(self, p: PendingSpan, out: StepResult, *, record: bool = True) -> None:
        corr = self._wf[p.workflow]
        old = self._pending.pop(p.ident, None)
        if old is not None:
            self._detach(old)
        self._pending[p.ident] = p
        if p.key is None:
            corr.by_trace.setdefault(p.span.trace_id, {})[p.span.span_id] = p
            for link in p.span.links:
                corr.by_link.setdefault(link.trace_id, set()).add(p.span.trace_id)
        else:
            corr.by_key.setdefault(p.key, {})[p.span.span_id] = p
        if record and old is None:
            out.pending_added.append(p)

    def _detach(self, p: PendingSpan) -> None:
        corr = self._wf[p.workflow]
        index = corr.by_trace.get(p.span.trace_id) if p.key is None else corr.by_key.get(p.key)
        if index is not None:
            index.pop(p.span.span_id, None)
            if not index:
                if p.key is None:
                    corr.by_trace.pop(p.span.trace_id, None)
                    self._forget_links(corr, p)
                else:
                    corr.by_key.pop(p.key, None)

    @staticmethod
    def _forget_links(corr: _WorkflowCorrelator, p: PendingSpan) -> None:
        """The trace has nothing waiting any more: its link index entries go too (bounded memory)."""
        for link in p.span.links:
            waiting = corr.by_link.get(link.trace_id)
            if waiting is not None:
                waiting.discard(p.span.trace_id)
                if not waiting:
                    corr.by_link.pop(link.trace_id, None)

    def _unpark(self, p: PendingSpan, out: StepResult) -> None:
        if self._pending.pop(p.ident, None) is not None:
            self._detach(p)
            out.pending_removed.append(p.ident)

    def _release_trace(self, corr: _WorkflowCorrelator, trace_id: str, now_ns: int, out: StepResult) -> None:
        key = corr.trace_keys[trace_id]
        traces = [trace_id, *sorted(corr.by_link.pop(trace_id, ()))]
        for tid in traces:
            for p in list(corr.by_trace.get(tid, {}).values()):
                if tid != trace_id and "links" not in corr.wf.key.inherit:
                    continue
                self._unpark(p, out)
                self._place(PendingSpan(p.workflow, p.span, p.arrived_ns, key), now_ns, out)

    def _expire(self, p: PendingSpan, now_ns: int, out: StepResult) -> None:
        corr = self._wf[p.workflow]
        self._unpark(p, out)
        steps = tuple(sorted({c.step for c in self._cands(p)}))
        if p.key is None and corr.wf.key.fallback == "trace_id":
            self._place(PendingSpan(p.workflow, p.span, now_ns, p.span.trace_id), now_ns, out)
            return
        reason = DropReason.UNKEYED if p.key is None else DropReason.ORPHAN
        out.dropped[reason] += 1
        out.spans.append(MatchedSpan(p.workflow, p.key, p.span, steps, reason.value))

    def _evict_overflow(self, now_ns: int, out: StepResult) -> None:
        while len(self._pending) > self.max_pending:
            _, oldest = next(iter(self._pending.items()))
            self._expire(oldest, now_ns, out)


class KeyRouter(Processor):
    """The ingest role's half of :class:`Processor`: matching and key correlation only. A span
    whose key is settled (its own, its trace's, a linked trace's, or the trace-id fallback) leaves
    as :class:`Routed` for the fold node owning that key; the start buffer, the fold and the
    instance table are the fold node's. Key buffers work as in :class:`Processor`."""

    def _place(self, p: PendingSpan, now_ns: int, out: StepResult, cands: list[Candidate] | None = None) -> None:
        if p.key is None:
            self._park(p, out)
            return
        out.routed.append(Routed(p.workflow, p.key, p.span, p.arrived_ns))

    def _expire(self, p: PendingSpan, now_ns: int, out: StepResult) -> None:
        corr = self._wf[p.workflow]
        if p.key is not None or corr.wf.key.fallback == "trace_id":
            super()._expire(p, now_ns, out)
            return
        self._unpark(p, out)
        out.routed.append(Routed(p.workflow, None, p.span, p.arrived_ns))

    def waiting_links(self) -> list[tuple[str, str]]:
        """(workflow, trace id) of linked traces that spans wait on and whose key this node has
        not seen: their trace may have reached another ingest node (looked up in the lake)."""
        return sorted(
            (name, tid)
            for name, corr in self._wf.items()
            if "links" in corr.wf.key.inherit
            for tid in corr.by_link
            if tid not in corr.trace_keys
        )

    def learn_remote(self, keys: Iterable[LearnedKey], now_ns: int) -> StepResult:
        """Keys another node learned (from the lake's shared lookup): release what waits on them.
        They are not reported as learned here (the other node stored them)."""
        out = StepResult()
        for lk in keys:
            corr = self._wf.get(lk.workflow)
            if corr is None or lk.trace_id in corr.trace_keys:
                continue
            corr.trace_keys[lk.trace_id] = lk.instance_key
            self._release_trace(corr, lk.trace_id, now_ns, out)
        return out
