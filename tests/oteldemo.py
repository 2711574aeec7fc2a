"""OpenTelemetry Demo-shaped traffic (the astronomy shop's checkout), seeded, for the tests.

Written by us from the demo's own source, releases 2.2 and 3.x (``src/checkout/main.go``,
``src/payment``, ``src/cart``, ``src/shipping``, ``src/email``, ``src/accounting``,
``src/fraud-detection``, ``src/otel-collector/otelcol-config.yml``): no recorded blobs.

One order, as the services instrument it:

- ``frontend`` (Next.js): ``POST /api/checkout`` → client ``grpc.oteldemo.CheckoutService/PlaceOrder``.
- ``checkout`` (Go, otelgrpc): server span ``oteldemo.CheckoutService/PlaceOrder``, the root of the
  order's work, with the events ``prepared``, ``charged`` and ``shipped``; the order id
  (``app.order.id`` in 2.2, ``demo.order.id`` in 3.x) is set on it at the very end, and only when
  the checkout succeeded. Its children: ``prepareOrderItemsAndShippingQuoteFromCart`` (GetCart,
  GetProduct and Convert per cart item, the shipping quote and its conversion), the client calls
  to payment, shipping (HTTP, otelhttp), cart ``EmptyCart`` and email, and the Kafka producer
  span ``orders publish``.
- ``payment`` (Node gRPC instrumentation): ``grpc.oteldemo.PaymentService/Charge``, child ``charge``.
- ``shipping`` (Rust actix-web, HTTP since 2.x): ``/ship-order`` (2.2), ``POST /ship-order`` (3.x).
- ``cart`` (.NET, ASP.NET Core gRPC): ``oteldemo.CartService/EmptyCart`` (2.2),
  ``POST /oteldemo.CartService/EmptyCart`` (3.x).
- ``email`` (Ruby Sinatra): ``POST /send_order_confirmation`` with the order id, child ``send_email``.
- ``accounting`` (.NET, Kafka auto-instrumentation): its own trace, ``order-consumed`` →
  consumer ``orders receive``, *linked* to the producer span. The receive span starts when the
  consumer began waiting in ``Consume()`` — before the message was even published.
- ``fraud-detection`` (Kotlin, Java agent): its own trace, consumer ``orders process`` linked to
  the producer span.

The 3.x collector renames spans to their semantic-convention names (``set_semconv_span_name``):
``orders publish`` → ``publish orders``, ``grpc.oteldemo.PaymentService/Charge`` →
``oteldemo.PaymentService/Charge``, ``/ship-order`` → ``POST /ship-order``, and so on.

Fault flags (flagd): ``paymentFailure`` (the payment server span fails, so does the checkout),
``paymentUnreachable`` (the checkout's client call fails; no payment span at all),
``cartFailure`` (``EmptyCart`` fails; the checkout logs it and goes on), ``kafkaQueueProblems``
(the producer sends the same message again: both consumers consume it more than once).

Delivery (:func:`per_service`, :func:`backlog`): every service's SDK exports its own batches on
its own schedule (``BatchSpanProcessor``: every 5 s), each batch reaching coordstate up to 5 s
later; a collector outage holds everything and then flushes it in the order it was received.
"""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

MS = 1_000_000
SECOND = 1_000 * MS
FAULTS = ("paymentFailure", "paymentUnreachable", "cartFailure", "kafkaQueueProblems")
LANGUAGE = {
    "frontend": "nodejs", "checkout": "go", "payment": "nodejs", "shipping": "rust", "cart": "dotnet",
    "email": "ruby", "accounting": "dotnet", "fraud-detection": "java", "product-catalog": "go", "currency": "cpp",
}  # fmt: skip


@dataclass(frozen=True)
class Naming:
    """A demo release, and whether its spans went through the 3.x collector's renames."""

    release: str  # "2.2" | "3.x"
    renamed: bool = False

    @property
    def prefix(self) -> str:
        return "app" if self.release == "2.2" else "demo"

    def name(self, raw_22: str, raw_3x: str, semconv: str) -> str:
        if self.renamed:
            return semconv
        return raw_22 if self.release == "2.2" else raw_3x

    def __str__(self) -> str:
        return f"{self.release}{' + collector renames' if self.renamed else ''}"


NAMINGS = (Naming("2.2"), Naming("3.x"), Naming("3.x", renamed=True), Naming("2.2", renamed=True))


@dataclass
class DemoOrder:
    fault: str | None
    trace_id: str
    order_id: str | None  # None: the checkout failed and never set one
    spans: list[ReadableSpan] = field(default_factory=list)

    @property
    def key(self) -> str:
        """The instance key coordstate should find: the order id, else (fallback) the trace id."""
        return self.order_id or self.trace_id


@dataclass(frozen=True)
class Request:
    """One export request as it reaches coordstate: when, and the spans in it."""

    arrival_ns: int
    spans: tuple[ReadableSpan, ...]


class _Trace:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.trace_id = rng.getrandbits(128) or 1

    def ctx(self) -> SpanContext:
        return SpanContext(self.trace_id, self.rng.getrandbits(64) or 1, is_remote=False, trace_flags=TraceFlags(1))


class Shop:
    """Places demo orders; ``orders(...)`` returns them with every span of every service."""

    def __init__(self, naming: Naming, seed: int, t0_ns: int) -> None:
        self.n = naming
        self.rng = random.Random(seed)
        self.t = t0_ns
        self._resources = {
            s: Resource({"service.name": s, "service.namespace": "opentelemetry-demo", "telemetry.sdk.language": lang})
            for s, lang in LANGUAGE.items()
        }
        self._consumer_free = {"accounting": t0_ns, "fraud-detection": t0_ns}

    def orders(self, count: int, shares: dict[str, float]) -> list[DemoOrder]:
        out = []
        for _ in range(count):
            roll, fault = self.rng.random(), None
            for name, share in shares.items():
                if roll < share:
                    fault = name
                    break
                roll -= share
            out.append(self.order(fault))
            self.t += int(self.rng.uniform(0.3, 1.7) * SECOND)  # the load generator's pace
        return out

    # -- one order ----------------------------------------------------------------------------
    def span(
        self,
        order: DemoOrder,
        tr: _Trace,
        service: str,
        name: str,
        kind: SpanKind,
        start: int,
        end: int,
        parent: SpanContext | None,
        *,
        attributes: dict[str, object] | None = None,
        events: Sequence[Event] = (),
        links: Sequence[Link] = (),
        error: str | None = None,
    ) -> SpanContext:
        ctx = tr.ctx()
        order.spans.append(
            ReadableSpan(
                name=name,
                context=ctx,
                parent=parent,
                resource=self._resources[service],
                attributes=attributes or {},  # type: ignore[arg-type]
                events=events,
                links=links,
                kind=kind,
                status=Status(StatusCode.ERROR, error) if error else Status(StatusCode.UNSET),
                start_time=start,
                end_time=end,
                instrumentation_scope=InstrumentationScope(f"{LANGUAGE[service]}-instrumentation", "1.0.0"),
            )
        )
        return ctx

    def call(
        self, order: DemoOrder, tr: _Trace, parent: SpanContext, client: str, server: tuple[str, str] | None,
        start: int, dur: int, *, error: str | None = None, server_error: str | None = None,
        attributes: dict[str, object] | None = None,
    ) -> SpanContext | None:  # fmt: skip
        """A client span in checkout and (unless ``server`` is None) the callee's server span."""
        cctx = self.span(order, tr, "checkout", client, SpanKind.CLIENT, start, start + dur, parent, error=error)
        if server is None:
            return None
        service, name = server
        margin = dur // 10  # the server's span lies within the client's
        return self.span(order, tr, service, name, SpanKind.SERVER, start + margin, start + dur - margin, cctx,
                         attributes=attributes, error=server_error)  # fmt: skip

    def order(self, fault: str | None) -> DemoOrder:
        n, rng, p = self.n, self.rng, self.n.prefix
        tr = _Trace(rng)
        order_id = str(uuid.UUID(int=rng.getrandbits(128), version=1))
        order = DemoOrder(fault, f"{tr.trace_id:032x}", None)
        t = self.t
        ms = lambda a, b: int(rng.uniform(a, b) * MS)  # noqa: E731
        fe, fe_client = tr.ctx(), tr.ctx()  # the frontend's spans end after the checkout: see _end
        root = SpanContext(tr.trace_id, rng.getrandbits(64) or 1, is_remote=False, trace_flags=TraceFlags(1))
        events: list[Event] = []
        http_post = n.name("HTTP POST", "POST", "POST")
        # prepareOrderItemsAndShippingQuoteFromCart
        c = t + ms(1, 3)
        prep = self.span(
            order, tr, "checkout", "prepareOrderItemsAndShippingQuoteFromCart", SpanKind.INTERNAL, c, c + 40 * MS, root
        )
        self.call(order, tr, prep, "oteldemo.CartService/GetCart",
                  ("cart", n.name("oteldemo.CartService/GetCart", "POST /oteldemo.CartService/GetCart", "oteldemo.CartService/GetCart")), c + MS, ms(3, 6))  # fmt: skip
        # prepOrderItems: per cart item, the product and its price in the user's currency; then
        # the shipping quote, and its price converted too (Convert runs items + 1 times)
        for i in range(1 + int(order_id[:8], 16) % 4):  # 1-4 items, from the order id: no extra draw
            self.call(order, tr, prep, "oteldemo.ProductCatalogService/GetProduct", ("product-catalog", "oteldemo.ProductCatalogService/GetProduct"), c + (8 + 4 * i) * MS, ms(1, 2))  # fmt: skip
            self.call(order, tr, prep, "oteldemo.CurrencyService/Convert", ("currency", "Convert"), c + (10 + 4 * i) * MS, ms(1, 2))  # fmt: skip
        self.call(order, tr, prep, http_post, ("shipping", n.name("/get-quote", "POST /get-quote", "POST /get-quote")), c + 26 * MS, ms(5, 10))  # fmt: skip
        self.call(order, tr, prep, "oteldemo.CurrencyService/Convert", ("currency", "Convert"), c + 37 * MS, ms(1, 2))
        c += 41 * MS
        events.append(Event("prepared", timestamp=c))
        # the charge
        c += ms(1, 3)
        dur = ms(15, 60)
        charge = n.name("grpc.oteldemo.PaymentService/Charge", "grpc.oteldemo.PaymentService/Charge", "oteldemo.PaymentService/Charge")  # fmt: skip
        if fault == "paymentUnreachable":
            self.call(order, tr, root, "oteldemo.PaymentService/Charge", None, c, ms(2, 10),
                      error="connection error: dial tcp: lookup badAddress: no such host")  # fmt: skip
            return self._end(order, tr, fe, fe_client, root, t, c + 12 * MS, events, error="could not charge the card")
        failing = "Payment request failed. Invalid token. app.loyalty.level=gold" if fault == "paymentFailure" else None
        server = self.call(order, tr, root, "oteldemo.PaymentService/Charge", ("payment", charge), c, dur,
                           error=failing, server_error=failing, attributes={f"{p}.payment.amount": 42.5})  # fmt: skip
        assert server is not None
        self.span(order, tr, "payment", "charge", SpanKind.INTERNAL, c + 2 * MS, c + dur - 3 * MS, server)
        c += dur
        if failing:
            return self._end(order, tr, fe, fe_client, root, t, c + 2 * MS, events, error="failed to charge card")
        events.append(Event("charged", {f"{p}.payment.transaction.id": str(uuid.UUID(int=rng.getrandbits(128), version=4))}, timestamp=c + MS))  # fmt: skip
        # shipping, the cart, the confirmation email
        c += ms(1, 3)
        dur = ms(5, 20)
        ship = n.name("/ship-order", "POST /ship-order", "POST /ship-order")
        self.call(order, tr, root, http_post, ("shipping", ship), c, dur, attributes={"http.request.method": "POST", "http.route": "/ship-order"})  # fmt: skip
        c += dur
        tracking = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        events.append(Event("shipped", {f"{p}.shipping.tracking.id": tracking}, timestamp=c + MS))
        c += ms(1, 3)
        dur = ms(3, 8)
        empty = n.name("oteldemo.CartService/EmptyCart", "POST /oteldemo.CartService/EmptyCart", "oteldemo.CartService/EmptyCart")  # fmt: skip
        broken = "Wasn't able to connect to redis" if fault == "cartFailure" else None
        self.call(order, tr, root, "oteldemo.CartService/EmptyCart", ("cart", empty), c, dur, error=broken, server_error=broken)  # fmt: skip
        c += dur + ms(1, 2)
        dur = ms(10, 30)
        mail = self.call(order, tr, root, http_post, ("email", "POST /send_order_confirmation"), c, dur,
                         attributes={f"{p}.order.id": order_id})  # fmt: skip
        assert mail is not None
        self.span(order, tr, "email", "send_email", SpanKind.INTERNAL, c + 3 * MS, c + dur - 3 * MS, mail, attributes={f"{p}.order.id": order_id})  # fmt: skip
        c += dur + ms(1, 2)
        # the order goes to Kafka; both consumers pick it up in traces of their own
        dur = ms(2, 8)
        producer = self.span(order, tr, "checkout", n.name("orders publish", "orders publish", "publish orders"), SpanKind.PRODUCER, c, c + dur, root,
                             attributes={"messaging.system": "kafka", "messaging.destination.name": "orders", "messaging.operation": "publish"})  # fmt: skip
        c += dur
        copies = 1 + (rng.randint(1, 3) if fault == "kafkaQueueProblems" else 0)
        self._consume(order, producer, c, copies)
        order.order_id = order_id
        return self._end(order, tr, fe, fe_client, root, t, c + MS, events, order_id=order_id, tracking=tracking)

    def _consume(self, order: DemoOrder, producer: SpanContext, published: int, copies: int) -> None:
        rng = self.rng
        link = [Link(producer)]
        for _ in range(copies):
            # accounting: waiting in Consume() since its last message; the receive span starts then
            waited = min(self._consumer_free["accounting"], published - 50 * MS)
            got = max(published, self._consumer_free["accounting"]) + int(rng.uniform(2, 30) * MS)
            acc = _Trace(rng)
            outer = self.span(
                order, acc, "accounting", "order-consumed", SpanKind.INTERNAL, waited, got + 20 * MS, None
            )
            self.span(order, acc, "accounting", self.n.name("orders receive", "orders receive", "receive orders"), SpanKind.CONSUMER,
                      waited, got, outer, links=link, attributes={"messaging.system": "kafka", "messaging.destination.name": "orders"})  # fmt: skip
            self._consumer_free["accounting"] = got + 20 * MS
            # fraud-detection: sleeps a second per record while kafkaQueueProblems is on
            start = max(published, self._consumer_free["fraud-detection"]) + int(rng.uniform(5, 90) * MS)
            end = start + (SECOND if copies > 1 else 0) + int(rng.uniform(1, 5) * MS)
            fraud = _Trace(rng)
            self.span(order, fraud, "fraud-detection", self.n.name("orders process", "orders process", "process orders"), SpanKind.CONSUMER,
                      start, end, None, links=link, attributes={"messaging.system": "kafka", "messaging.destination.name": "orders"})  # fmt: skip
            self._consumer_free["fraud-detection"] = end

    def _end(
        self, order: DemoOrder, tr: _Trace, fe: SpanContext, fe_client: SpanContext, root: SpanContext, t: int,
        end: int, events: list[Event], *, error: str | None = None, order_id: str | None = None, tracking: str = "",
    ) -> DemoOrder:  # fmt: skip
        p = self.n.prefix
        attrs: dict[str, object] = {"rpc.system": "grpc", "rpc.service": "oteldemo.CheckoutService", "rpc.method": "PlaceOrder",
                                    ("app.user.id" if p == "app" else "user.id"): f"user-{self.rng.randint(1, 500)}"}  # fmt: skip
        if order_id is not None:
            attrs |= {f"{p}.order.id": order_id, f"{p}.shipping.tracking.id": tracking, f"{p}.order.items.count": 2}
        order.spans.append(
            ReadableSpan(
                name="oteldemo.CheckoutService/PlaceOrder", context=root, parent=fe_client,
                resource=self._resources["checkout"], attributes=attrs, events=events, kind=SpanKind.SERVER,  # type: ignore[arg-type]
                status=Status(StatusCode.ERROR, error) if error else Status(StatusCode.UNSET),
                start_time=t, end_time=end,
                instrumentation_scope=InstrumentationScope("go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc", "0.60.0"),
            )
        )  # fmt: skip
        status = Status(StatusCode.ERROR, error) if error else Status(StatusCode.UNSET)
        order.spans.append(
            ReadableSpan(
                name="POST /api/checkout", context=fe, parent=None, resource=self._resources["frontend"],
                kind=SpanKind.SERVER, status=status, start_time=t - 25 * MS, end_time=end + 3 * MS,
                attributes={"http.request.method": "POST", "http.route": "/api/checkout"},
            )
        )  # fmt: skip
        client = self.n.name("grpc.oteldemo.CheckoutService/PlaceOrder", "grpc.oteldemo.CheckoutService/PlaceOrder", "oteldemo.CheckoutService/PlaceOrder")  # fmt: skip
        order.spans.append(
            ReadableSpan(
                name=client, context=fe_client, parent=fe, resource=self._resources["frontend"], kind=SpanKind.CLIENT,
                status=Status(StatusCode.ERROR, error) if error else Status(StatusCode.UNSET),
                start_time=t - 5 * MS, end_time=end + MS,
            )
        )  # fmt: skip
        return order


# -- delivery ---------------------------------------------------------------------------------
def spans_of(orders: Iterable[DemoOrder]) -> list[ReadableSpan]:
    return [s for o in orders for s in o.spans]


def ordered(spans: Sequence[ReadableSpan], window_ns: int = SECOND) -> list[Request]:
    """Every span as soon as it ends, in end-time order, one request per ``window_ns``."""
    windows: dict[int, list[ReadableSpan]] = defaultdict(list)
    for s in sorted(spans, key=lambda s: (s.end_time or 0, s.context.span_id if s.context else 0)):
        windows[(s.end_time or 0) // window_ns].append(s)
    return [Request((w + 1) * window_ns, tuple(batch)) for w, batch in sorted(windows.items())]


def per_service(
    spans: Sequence[ReadableSpan], rng: random.Random, *, schedule_ns: int = 5 * SECOND, max_delay_ns: int = 5 * SECOND
) -> list[Request]:
    """Each service's SDK exports what ended since its last export, every ``schedule_ns`` on its
    own phase; each batch arrives up to ``max_delay_ns`` later. A span arrives at most
    ``schedule_ns + max_delay_ns`` (10 s) after it ended."""
    by_service: dict[str, list[ReadableSpan]] = defaultdict(list)
    for s in spans:
        by_service[str(s.resource.attributes["service.name"])].append(s)
    out: list[Request] = []
    for service in sorted(by_service):
        phase = rng.randrange(schedule_ns)
        batches: dict[int, list[ReadableSpan]] = defaultdict(list)
        for s in by_service[service]:
            end = s.end_time or 0
            batches[-(-(end - phase) // schedule_ns) * schedule_ns + phase].append(s)
        out.extend(Request(at + rng.randrange(max_delay_ns), tuple(b)) for at, b in batches.items())
    return sorted(out, key=lambda r: r.arrival_ns)


def backlog(
    requests: Sequence[Request], outage_start_ns: int, *, outage_ns: int = 300 * SECOND, max_spans: int = 512
) -> list[Request]:
    """A collector down for ``outage_ns``: what reached it meanwhile is flushed when it returns, in
    the order received, merged into requests of up to ``max_spans`` spans."""
    end = outage_start_ns + outage_ns
    held = [r for r in requests if outage_start_ns <= r.arrival_ns < end]
    flushed: list[Request] = []
    batch: list[ReadableSpan] = []
    for r in held:
        for s in r.spans:
            batch.append(s)
            if len(batch) >= max_spans:
                flushed.append(Request(end, tuple(batch)))
                batch = []
    if batch:
        flushed.append(Request(end, tuple(batch)))
    before = [r for r in requests if r.arrival_ns < outage_start_ns]
    after = [r for r in requests if r.arrival_ns >= end]
    return [*before, *flushed, *after]
