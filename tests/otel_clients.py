"""Real OpenTelemetry SDK clients for the end-to-end tests (no hand-built requests)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from opentelemetry.exporter.otlp.json.http.trace_exporter import (
    OTLPSpanExporter as JsonHttpExporter,
)
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Status, StatusCode, Tracer


def grpc_exporter(endpoint: str, **kw: object) -> GrpcExporter:
    return GrpcExporter(endpoint=endpoint, insecure=True, **kw)  # type: ignore[arg-type]


def http_exporter(base_url: str, **kw: object) -> HttpExporter:
    return HttpExporter(endpoint=f"{base_url}/v1/traces", **kw)  # type: ignore[arg-type]


def json_exporter(base_url: str) -> JsonHttpExporter:
    return JsonHttpExporter(endpoint=f"{base_url}/v1/traces")


class Recording(SpanExporter):
    """Collects finished spans so a test can export them, in any order and as often as it likes."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


@contextmanager
def tracer(service: str, exporter: SpanExporter) -> Iterator[Tracer]:
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        yield provider.get_tracer("coordstate-tests")
    finally:
        provider.shutdown()


def place_order(
    exporters: dict[str, SpanExporter], order_id: str, *, fail_payment: bool = False
) -> str:
    """One order across four services, as instrumented services emit it: W3C context passed from
    checkout to its callees, the order id only on the checkout root span (which ends last).
    Returns the trace id (hex)."""
    from opentelemetry import context as otel_context
    from opentelemetry import propagate

    with (
        tracer("checkout", exporters["checkout"]) as checkout,
        checkout.start_as_current_span("PlaceOrder") as root,
    ):
        # the W3C traceparent crosses the "network" as a header would
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        token = otel_context.attach(propagate.extract(carrier))
        try:
            with (
                tracer("payment", exporters["payment"]) as payment,
                payment.start_as_current_span("Charge") as charge,
            ):
                if fail_payment:
                    charge.set_status(Status(StatusCode.ERROR, "card declined"))
            if not fail_payment:
                with (
                    tracer("inventory", exporters["inventory"]) as inv,
                    inv.start_as_current_span("Reserve") as res,
                ):
                    res.add_event("inventory.reserved", {"sku": "SKU-1"})
                with (
                    tracer("shipping", exporters["shipping"]) as ship,
                    ship.start_as_current_span("ShipOrder"),
                ):
                    pass
        finally:
            otel_context.detach(token)
        root.set_attribute("app.order.id", order_id)
        return f"{root.get_span_context().trace_id:032x}"
