"""Idempotency and order, stateful: random interleavings of re-delivery, duplicates and
out-of-order batches through the real store give the same tables as one sorted, deduplicated
ingest of the same spans (hypothesis RuleBasedStateMachine over the pipeline): transitions,
instances, status history and spans identical; the same anomalies open at the end."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from analytics.write.store import Store
from processors.clock import ManualClock
from processors.types import SpanRecord
from tests.conftest import query
from tests.helpers import SECOND, T0, compiled_orders, order_spans, span
from tests.reliability.report import SOAK

MODEL = compiled_orders()


def pool() -> list[SpanRecord]:
    """Orders of every shape: happy, declined (no key: trace-id fallback), a double charge."""
    spans: list[SpanRecord] = []
    for n in range(4):
        spans += order_spans(100 + n, f"o-{n}", t=n)
    spans += [span(200, "checkout", "PlaceOrder", 5, 6), span(200, "payment", "Charge", 5.1, 5.2, error=True)]
    spans += [
        span(104, "payment", "Charge", 4.2, 4.45)
    ]  # a retry in o-4's… trace 104 has no root: stays pending/orphan
    return spans


POOL = pool()
TABLES = [
    "SELECT * EXCLUDE (observed_at) FROM transitions ORDER BY ALL",
    "SELECT * FROM instances ORDER BY ALL",
    "SELECT * FROM instance_history ORDER BY ALL",
    "SELECT * EXCLUDE (observed_at) FROM spans ORDER BY ALL",
    # anomalies are *observations*: a span that arrives late can open one (then resolve it) that a
    # single sorted ingest never sees. What must agree is what is open at the end, and when it opened.
    "SELECT instance_key, kind, step, opened_at FROM anomalies WHERE resolved_at IS NULL ORDER BY ALL",
]
NOW = T0 + 20 * SECOND


def ingest(db: Path, batches: list[list[SpanRecord]]) -> list[list[tuple[object, ...]]]:
    store = Store(db, MODEL, ManualClock(NOW), tick_interval_s=None)
    store.open()
    try:
        for batch in batches:
            store.submit(batch).result(timeout=30)
        store.tick_now()
    finally:
        store.close()
    return [query(db, sql) for sql in TABLES]


class Pipeline(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.batches: list[list[SpanRecord]] = []

    @rule(picks=st.lists(st.integers(0, len(POOL) - 1), min_size=1, max_size=8))
    def deliver(self, picks: list[int]) -> None:
        """A batch of any spans, in any order, possibly with duplicates."""
        self.batches.append([POOL[i] for i in picks])

    @precondition(lambda self: bool(self.batches))
    @rule(which=st.integers(0, 1000))
    def redeliver(self, which: int) -> None:
        """A collector retry: a batch sent again."""
        self.batches.append(list(self.batches[which % len(self.batches)]))

    @invariant()
    def nothing_yet(self) -> None:
        pass  # the comparison runs once, at teardown (a DuckDB file per example is the cost)

    def teardown(self) -> None:
        try:
            if self.batches:
                seen = {id(s): s for batch in self.batches for s in batch}
                ordered = sorted(seen.values(), key=lambda s: (s.start_ns, s.span_id))
                got = ingest(Path(self.tmp.name) / "random.duckdb", self.batches)
                want = ingest(Path(self.tmp.name) / "sorted.duckdb", [ordered])
                assert got == want
        finally:
            self.tmp.cleanup()


TestPipeline = Pipeline.TestCase
TestPipeline.settings = settings(max_examples=60 if SOAK else 12, stateful_step_count=6, deadline=None)
