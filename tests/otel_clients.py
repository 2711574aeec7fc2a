"""Real OpenTelemetry SDK clients for the end-to-end tests (no hand-built requests)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import grpc
from opentelemetry.exporter.otlp.json.http.trace_exporter import (
    OTLPSpanExporter as JsonHttpExporter,
)
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import TraceServiceStub
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


def place_order(exporters: dict[str, SpanExporter], order_id: str, *, fail_payment: bool = False) -> str:
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


def recorded_order(order_id: str, *, fail_payment: bool = False) -> tuple[list[ReadableSpan], str]:
    """Record one order's spans (as the SDK finished them) without sending anything."""
    rec = Recording()
    trace_id = place_order(
        dict.fromkeys(("checkout", "payment", "inventory", "shipping"), rec),
        order_id,
        fail_payment=fail_payment,
    )
    return rec.spans, trace_id


def encode(spans: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
    """The SDK's own OTLP protobuf encoder."""
    return encode_spans(spans)


def grpc_export(
    endpoint: str, request: ExportTraceServiceRequest, *, timeout: float = 10, **kw: object
) -> ExportTraceServiceResponse:
    """Send one raw request with a plain gRPC stub (to read the response and status details)."""
    with grpc.insecure_channel(endpoint) as channel:
        stub = TraceServiceStub(channel)
        return stub.Export(request, timeout=timeout, **kw)  # type: ignore[no-any-return]
