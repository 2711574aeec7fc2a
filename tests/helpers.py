"""Builders shared by the tests (plain functions; no mocks of our own classes)."""

from __future__ import annotations

import itertools
from pathlib import Path

from collector.service import read_model
from processors.matching import CompiledModel
from processors.model import ModelFile
from processors.types import AttrValue, SpanEvent, SpanLink, SpanRecord, StepState, Transition

ROOT = Path(__file__).resolve().parent.parent
ORDERS_MODEL = ROOT / "otel-config" / "models" / "orders.yaml"
OTEL_DEMO_MODEL = ROOT / "otel-config" / "models" / "otel-demo.yaml"
SECOND = 1_000_000_000
T0 = 1_700_000_000 * SECOND

_ids = itertools.count(1)


def orders_model() -> ModelFile:
    return read_model(ORDERS_MODEL)[0]


def compiled_orders() -> CompiledModel:
    return CompiledModel(orders_model())


def trace_id(n: int) -> str:
    return f"{n:032x}"


def span(
    trace: int,
    service: str,
    name: str,
    start: float,
    end: float,
    *,
    error: bool = False,
    attrs: dict[str, AttrValue] | None = None,
    events: tuple[tuple[str, float], ...] = (),
    links: tuple[tuple[int, str], ...] = (),
    span_id: str | None = None,
    parent: str = "",
) -> SpanRecord:
    """A span record; times in seconds after T0."""
    return SpanRecord(
        trace_id=trace_id(trace),
        span_id=span_id or f"{next(_ids):016x}",
        parent_span_id=parent,
        service=service,
        name=name,
        start_ns=T0 + int(start * SECOND),
        end_ns=T0 + int(end * SECOND),
        status="error" if error else "unset",
        attributes=attrs or {},
        resource_attributes={},
        events=tuple(SpanEvent(n, T0 + int(t * SECOND), {}) for n, t in events),
        links=tuple(SpanLink(trace_id(t), s) for t, s in links),
    )


def order_spans(trace: int, order_id: str, *, t: float = 0.0) -> list[SpanRecord]:
    """A happy-path order as the demo emits it: the key only on the root, which ends last."""
    return [
        span(trace, "checkout", "PlaceOrder", t, t + 1.0, attrs={"app.order.id": order_id}),
        span(trace, "payment", "Charge", t + 0.1, t + 0.3),
        span(
            trace,
            "inventory",
            "Reserve",
            t + 0.3,
            t + 0.4,
            events=(("inventory.reserved", t + 0.35),),
        ),
        span(trace, "shipping", "ShipOrder", t + 0.5, t + 0.8),
    ]


def tr(step: str, state: str, at: float, span_id: str = "", trace: str = "t1") -> Transition:
    """A transition of order ``o-1``, ``at`` seconds after T0 (one span per step by default)."""
    return Transition(
        "order", "o-1", step, StepState(state), T0 + int(at * SECOND), trace, span_id or f"{step}-span", "svc", "span"
    )


#: the coordination state as sets of rows, for comparing two stores (observed_at, detected_at and
#: handed_at are wall-clock, and so is convergence's seconds_with_open_anomaly: left out)
STATE_QUERIES = {
    "transitions": "SELECT workflow, instance_key, step, state, event_time, trace_id, span_id, service, source FROM transitions",
    "instances": "SELECT workflow, instance_key, status, map_entries(steps), started_at, updated_at, converged_at, "
    "open_anomalies, list_sort(trace_ids) FROM instances",
    "instance_history": "SELECT * FROM instance_history",
    "convergence": "SELECT * EXCLUDE (seconds_with_open_anomaly) FROM convergence(INTERVAL 1 MINUTE)",
    "instance_counts": "SELECT * FROM instance_counts",
}
