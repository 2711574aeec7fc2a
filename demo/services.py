"""The demo's services: each its own TracerProvider, ``service.name`` and OTLP/gRPC exporter.

Calls between services carry W3C trace context in a header dict, as HTTP or gRPC metadata would;
the fulfilment consumer reads from a queue and starts a *new* trace linked to the producer's span.
"""

from __future__ import annotations

from collections.abc import Callable

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

SERVICES = ("frontend", "checkout", "payment", "inventory", "shipping", "fulfilment")
PROPAGATOR = TraceContextTextMapPropagator()


def otlp_grpc(endpoint: str) -> Callable[[], SpanExporter]:
    return lambda: OTLPSpanExporter(endpoint=endpoint, insecure=True)


class Services:
    def __init__(self, exporter: Callable[[], SpanExporter]) -> None:
        self.providers: dict[str, TracerProvider] = {}
        for name in SERVICES:
            provider = TracerProvider(
                resource=Resource.create(
                    {"service.name": name, "service.namespace": "coordstate-demo", "deployment.environment": "demo"}
                )
            )
            provider.add_span_processor(BatchSpanProcessor(exporter(), schedule_delay_millis=200))
            self.providers[name] = provider

    def tracer(self, service: str) -> trace.Tracer:
        return self.providers[service].get_tracer(f"demo.{service}", "1.0")

    def shutdown(self) -> None:
        for provider in self.providers.values():
            provider.force_flush()
            provider.shutdown()


def headers_for(span: Span) -> dict[str, str]:
    """What a client puts on the wire: ``traceparent`` (and ``tracestate``)."""
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier


def context_from(headers: dict[str, str]) -> Context:
    """What a server reads from the wire."""
    return PROPAGATOR.extract(headers)


def server_span(
    services: Services, service: str, name: str, headers: dict[str, str], start: int, end: int,
    *, error: str | None = None, events: tuple[tuple[str, int, dict[str, str]], ...] = (),
    attributes: dict[str, str | int] | None = None,
) -> Span:  # fmt: skip
    span = services.tracer(service).start_span(
        name, context=context_from(headers), kind=SpanKind.SERVER, start_time=start, attributes=attributes or {}
    )
    for event_name, at, attrs in events:
        span.add_event(event_name, attrs, timestamp=at)
    if error:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end(end_time=end)
    return span


def consumer_span(
    services: Services, message_headers: dict[str, str], start: int, end: int, *, error: str | None = None
) -> Span:
    """The fulfilment consumer: a new trace, linked to the span that published the message."""
    producer = trace.get_current_span(context_from(message_headers)).get_span_context()
    span = services.tracer("fulfilment").start_span(
        "orders process",
        context=Context(),  # a new trace
        kind=SpanKind.CONSUMER,
        links=[Link(producer, {"messaging.operation": "process"})],
        start_time=start,
        attributes={"messaging.system": "inmemory", "messaging.destination.name": "orders"},
    )
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end(end_time=end)
    return span
