"""Order scenarios emitted through the real OpenTelemetry SDK with explicit event times.

Every scenario is a list of spans relative to a base time; ``emit`` sends them, service by
service, through real exporters, with W3C parent/child relations inside the trace, the order id
only on the checkout root, and the root ended last (as real services do).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import Status, StatusCode

SECOND = 1_000_000_000


@dataclass(frozen=True)
class S:
    """One child span: service, name, start/end in seconds after the root's start."""

    service: str
    name: str
    start: float
    end: float
    error: bool = False
    events: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Order:
    order_id: str
    children: tuple[S, ...]
    root_end: float = 1.0
    late: tuple[S, ...] = field(default=())  # sent in a second export, after the rest


HAPPY = (
    S("payment", "Charge", 0.1, 0.3),
    S("inventory", "Reserve", 0.3, 0.4, events=(("inventory.reserved", 0.35),)),
    S("shipping", "ShipOrder", 0.5, 0.8),
)

SCENARIOS: dict[str, Callable[[str], Order]] = {
    "happy": lambda oid: Order(oid, HAPPY),
    "declined": lambda oid: Order(oid, (S("payment", "Charge", 0.1, 0.3, error=True),)),
    "uncompensated": lambda oid: Order(
        oid,
        (
            S("payment", "Charge", 0.1, 0.3),
            S("inventory", "Reserve", 0.3, 0.4, events=(("inventory.failed", 0.35),)),
        ),
    ),
    "refunded-late": lambda oid: Order(
        oid,
        (
            S("payment", "Charge", 0.1, 0.3),
            S("inventory", "Reserve", 0.3, 0.4, events=(("inventory.failed", 0.35),)),
        ),
        late=(S("payment", "Refund", 8.0, 9.0),),
    ),
    "double-charge": lambda oid: Order(oid, (*HAPPY, S("payment", "Charge", 0.2, 0.45))),
    "ship-before-pay": lambda oid: Order(
        oid,
        (
            S("shipping", "ShipOrder", 0.05, 0.08),
            S("payment", "Charge", 0.1, 0.3),
            S("inventory", "Reserve", 0.3, 0.4, events=(("inventory.reserved", 0.35),)),
        ),
    ),
    "lost-shipment": lambda oid: Order(oid, HAPPY[:2]),
    "slow-payment": lambda oid: Order(
        oid,
        HAPPY[1:2],
        late=(S("payment", "Charge", 11.0, 12.0), S("shipping", "ShipOrder", 12.5, 12.8)),
    ),
    "shipped-then-refunded": lambda oid: Order(oid, (*HAPPY, S("payment", "Refund", 2.0, 2.5))),
    # the order shipped, but its fulfilment failed; the checkout went on and ended well
    "fulfilment-failed": lambda oid: Order(
        oid,
        (*HAPPY, S("fulfilment", "orders process", 0.85, 0.9, error=True)),
        late=(S("fulfilment", "orders process", 20.0, 20.5),),  # the retry
    ),
}


class Emitter:
    """One TracerProvider per service (as separate services have), all exporting to ``exporter``."""

    def __init__(self, exporter_factory: Callable[[], SpanExporter], id_generator: IdGenerator | None = None) -> None:
        self._factory = exporter_factory
        self._providers: dict[str, TracerProvider] = {}
        self._ids = id_generator

    def tracer(self, service: str) -> trace.Tracer:
        if service not in self._providers:
            provider = TracerProvider(resource=Resource.create({"service.name": service}), id_generator=self._ids)
            provider.add_span_processor(SimpleSpanProcessor(self._factory()))
            self._providers[service] = provider
        return self._providers[service].get_tracer("coordstate-scenarios")

    def emit(self, order: Order, t0_ns: int) -> trace.SpanContext:
        """Send the order's spans (all but the late ones). Returns the root's span context."""
        root = self.tracer("checkout").start_span("PlaceOrder", start_time=t0_ns)
        self._children(order.children, trace.set_span_in_context(root), t0_ns)
        root.set_attribute("app.order.id", order.order_id)
        root.end(end_time=t0_ns + int(order.root_end * SECOND))
        return root.get_span_context()

    def emit_late(self, order: Order, t0_ns: int, root: trace.SpanContext) -> None:
        """Send the order's late spans, children of the same root (same trace)."""
        self._children(order.late, trace.set_span_in_context(trace.NonRecordingSpan(root)), t0_ns)

    def _children(self, spans: tuple[S, ...], ctx: object, t0_ns: int) -> None:
        for s in spans:
            span = self.tracer(s.service).start_span(s.name, context=ctx, start_time=t0_ns + int(s.start * SECOND))  # type: ignore[arg-type]
            for name, at in s.events:
                span.add_event(name, timestamp=t0_ns + int(at * SECOND))
            if s.error:
                span.set_status(Status(StatusCode.ERROR, "failed"))
            span.end(end_time=t0_ns + int(s.end * SECOND))

    def shutdown(self) -> None:
        for provider in self._providers.values():
            provider.shutdown()


class SeededIds(IdGenerator):
    """Trace and span ids from a seeded generator: the same traffic, id for id, on every run."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def generate_span_id(self) -> int:
        return self._rng.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        return self._rng.getrandbits(128) or 1
