"""The demo shop: orders flow checkout → payment → inventory → shipping → (queue) → fulfilment.

Every order is one checkout trace: ``PlaceOrder`` is the root and ends last, and only it carries
``app.order.id`` (and only when the checkout succeeded, as real services do). Callees receive W3C
context in headers; business facts are span events (``inventory.reserved`` / ``inventory.failed``);
the fulfilment consumer runs in its own trace, linked to the ``orders publish`` producer span.

Fault scenarios, each at a configurable rate (the rest of the orders are healthy):

==================  =========================================================  ==================
scenario            what happens                                               shows up as
==================  =========================================================  ==================
declined            the charge fails; nothing else happens; no order id        compensated
uncompensated       charged, then inventory fails; half get a refund later     uncompensated_failure
                                                                              (some heal)
duplicate           a retry charges the card twice                             duplicate_action
out_of_order        shipping starts before the payment completed               out_of_order
lost_step           the payment span is lost                                   missing_step, stalled
slow                the payment arrives after its 10s deadline                 missing_step (heals)
stalled             inventory never answers                                    stalled
conflict            shipped, then refunded                                     conflicting_state
fulfilment_failed   the order shipped, its fulfilment consumer failed; half    failed_step
                    are retried and heal                                       (some heal)
==================  =========================================================  ==================

A declined payment is a clean failure (status ``failed``, no anomaly).
"""

from __future__ import annotations

import heapq
import itertools
import queue
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind

from demo.services import Services, consumer_span, headers_for, otlp_grpc, server_span

SCENARIOS: dict[str, float] = {
    "declined": 0.08,
    "uncompensated": 0.05,
    "duplicate": 0.04,
    "out_of_order": 0.04,
    "lost_step": 0.03,
    "slow": 0.04,
    "stalled": 0.03,
    "conflict": 0.03,
    "fulfilment_failed": 0.03,
}


def trace_context(span: trace.Span) -> Context:
    return trace.set_span_in_context(span)


class DemoError(ValueError):
    """Bad demo settings (unknown scenario, rates above 1, …)."""


class DemoUnreachable(DemoError):
    """Nothing answers OTLP/gRPC at the endpoint: the spans would go nowhere."""


#: how long the demo waits for its endpoint to accept a connection before it gives up
CONNECT_TIMEOUT_S = 5.0


def parse_scenarios(items: list[str]) -> dict[str, float]:
    """``["declined=0.2", "slow=0"]`` over the defaults; rates are shares of all orders."""
    rates = dict(SCENARIOS)
    for item in items:
        name, sep, value = item.partition("=")
        if name not in SCENARIOS:
            raise DemoError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
        try:
            rate = float(value) if sep else -1.0
        except ValueError:
            rate = -1.0
        if not 0 <= rate <= 1:
            raise DemoError(f"--scenario {item!r}: write NAME=RATE with a rate from 0 to 1, e.g. {name}=0.1")
        rates[name] = rate
    if sum(rates.values()) > 1:
        raise DemoError(f"scenario rates add up to {sum(rates.values()):.2f}; they must add up to at most 1")
    return rates


@dataclass
class DemoStats:
    orders: Counter[str] = field(default_factory=Counter)


class Shop:
    def __init__(
        self,
        services: Services,
        *,
        rate: float = 5.0,
        scenarios: dict[str, float] | None = None,
        time_scale: float = 1.0,
        seed: int | None = None,
    ) -> None:
        self.services = services
        self.rate = rate
        self.scenarios = scenarios if scenarios is not None else dict(SCENARIOS)
        self.scale = time_scale
        self.random = random.Random(seed)
        self.stats = DemoStats()
        self._ids = itertools.count(1000)
        self._later: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._queue: queue.Queue[tuple[dict[str, str], int, str | None] | None] = queue.Queue()
        self._consumer = threading.Thread(target=self._consume, name="demo-fulfilment", daemon=True)

    # -- the run loop ---------------------------------------------------------------------
    def run(self, duration_s: float | None, stop: threading.Event) -> DemoStats:
        """Place orders at ``rate``/s until ``duration_s`` passes or ``stop`` is set."""
        self._consumer.start()
        started = time.monotonic()
        next_order = started
        try:
            while not stop.is_set() and (duration_s is None or time.monotonic() - started < duration_s):
                now = time.monotonic()
                if now >= next_order:
                    self.place_order(self.pick())
                    next_order += 1.0 / self.rate
                self._run_due(now)
                stop.wait(max(0.0, min(next_order, self._next_due()) - time.monotonic()))
            # let scheduled late spans of a finished run still happen (bounded)
            deadline = time.monotonic() + 20 * self.scale
            while self._later and time.monotonic() < deadline and not stop.is_set():
                self._run_due(time.monotonic())
                stop.wait(max(0.0, min(deadline, self._next_due()) - time.monotonic()))
        finally:
            self._queue.put(None)
            self._consumer.join(timeout=10)
        return self.stats

    def pick(self) -> str:
        roll = self.random.random()
        for name, share in self.scenarios.items():
            if roll < share:
                return name
            roll -= share
        return "happy"

    def later(self, delay_s: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._later, (time.monotonic() + delay_s * self.scale, next(self._seq), action))

    def _next_due(self) -> float:
        return self._later[0][0] if self._later else time.monotonic() + 0.25

    def _run_due(self, now: float) -> None:
        while self._later and self._later[0][0] <= now:
            _, _, action = heapq.heappop(self._later)
            action()

    def _consume(self) -> None:
        while (item := self._queue.get()) is not None:
            headers, at, error = item
            consumer_span(self.services, headers, at, at + int(120_000_000 * self.scale), error=error)

    # -- one order ------------------------------------------------------------------------
    def place_order(self, scenario: str) -> str:
        order_id = f"order-{next(self._ids)}"
        self.stats.orders[scenario] += 1
        order = _Order(self.services, self.scale)
        keyed = self._flow(scenario, order)
        failing = scenario == "fulfilment_failed"
        order.finish(order_id if keyed else None, self._queue, error="warehouse unavailable" if failing else None)
        if failing and self.random.random() < 0.5:  # the consumer retries the message, and it works
            self.later(3, lambda: self._queue.put((order.headers_of_message, time.time_ns() - order.ms(300), None)))
        return order_id

    def _flow(self, scenario: str, o: _Order) -> bool:
        """Emit the callee spans of one scenario; returns whether the checkout got an order id."""
        if scenario == "declined":
            o.charge(100, 300, error="card declined")
            return False  # a failed checkout never carries an order id: the trace id becomes the key
        if scenario == "out_of_order":
            o.ship(50, 80)
            o.charge(100, 300)
            o.reserve(ok=True)
            return True
        if scenario == "lost_step":
            o.reserve(ok=True)
            return True
        if scenario == "slow":
            o.reserve(ok=True)
            self.later(12, o.late_payment)
            return True
        if scenario == "stalled":
            o.charge(100, 300)
            return True
        o.charge(100, 300)
        if scenario == "duplicate":
            o.charge(320, 480)  # the client timed out and retried: a second charge
        if scenario == "uncompensated":
            o.reserve(ok=False)
            if self.random.random() < 0.5:
                self.later(8 + 4 * self.random.random(), o.refund)  # someone notices and refunds
            return True
        o.reserve(ok=True)
        o.ship(500, 800)
        if scenario == "conflict":
            self.later(2, o.refund)
        return True


class _Order:
    """One checkout trace: the root span opens first and is ended (with the key) last."""

    def __init__(self, services: Services, scale: float) -> None:
        self.services = services
        self.scale = scale
        self.t0 = time.time_ns() - self.ms(1500)  # the order just finished: its spans end in the past
        frontend = services.tracer("frontend").start_span(
            "GET /api/cart", context=Context(), kind=SpanKind.SERVER, start_time=self.at(-200)
        )
        frontend.end(end_time=self.at(-150))
        self.root = services.tracer("checkout").start_span(
            "PlaceOrder",
            context=Context(),
            kind=SpanKind.SERVER,
            start_time=self.at(0),
            attributes={"app.user.id": "u-42"},
        )
        self.headers = headers_for(self.root)
        self.headers_of_message: dict[str, str] = {}

    def ms(self, ms: float) -> int:
        return int(ms * 1_000_000 * self.scale)

    def at(self, ms: float) -> int:
        return self.t0 + self.ms(ms)

    def charge(self, start: float, end: float, *, error: str | None = None) -> None:
        server_span(self.services, "payment", "Charge", self.headers, self.at(start), self.at(end), error=error, attributes={"app.payment.amount": 4200})  # fmt: skip

    def reserve(self, *, ok: bool) -> None:
        event = ("inventory.reserved" if ok else "inventory.failed", self.at(350), {"sku": "SKU-1"})
        server_span(self.services, "inventory", "Reserve", self.headers, self.at(300), self.at(400), events=(event,), error=None if ok else "out of stock")  # fmt: skip

    def ship(self, start: float, end: float) -> None:
        server_span(self.services, "shipping", "ShipOrder", self.headers, self.at(start), self.at(end))

    def refund(self) -> None:
        now = time.time_ns()
        server_span(self.services, "payment", "Refund", self.headers, now - self.ms(200), now - self.ms(100))

    def late_payment(self) -> None:
        """A slow payment: its span arrives after the step deadline, then the shipment."""
        elapsed = 12_000 + 1500
        self.charge(elapsed - 400, elapsed - 300)
        self.ship(elapsed - 250, elapsed - 100)

    def finish(
        self,
        order_id: str | None,
        fulfilment: queue.Queue[tuple[dict[str, str], int, str | None] | None],
        *,
        error: str | None = None,
    ) -> None:
        if order_id is not None:
            producer = self.services.tracer("checkout").start_span(
                "orders publish", context=trace_context(self.root), kind=SpanKind.PRODUCER, start_time=self.at(900),
                attributes={"messaging.system": "inmemory", "messaging.destination.name": "orders"},
            )  # fmt: skip
            self.headers_of_message = headers_for(producer)
            producer.end(end_time=self.at(910))
            self.root.set_attribute("app.order.id", order_id)
            fulfilment.put((self.headers_of_message, self.at(1200), error))
        self.root.end(end_time=self.at(1000))


def _check_reachable(endpoint: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail within seconds, saying where, instead of placing orders whose every export is lost."""
    channel = grpc.insecure_channel(endpoint)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
    except grpc.FutureTimeoutError:
        raise DemoUnreachable(
            f"nothing answers OTLP/gRPC at {endpoint} (waited {timeout_s:g} s): start `coordstate serve` "
            "(or `coordstate up`) there, or pass --endpoint HOST:PORT"
        ) from None
    finally:
        channel.close()


def run_demo(
    endpoint: str,
    *,
    rate: float = 5.0,
    duration_s: float | None = None,
    scenarios: dict[str, float] | None = None,
    stop: threading.Event | None = None,
    time_scale: float = 1.0,
    seed: int | None = None,
) -> DemoStats:
    """Run the shop against an OTLP/gRPC endpoint until ``duration_s`` or ``stop``; flush; return counts."""
    if rate <= 0:
        raise DemoError("--rate must be above 0 (orders per second)")
    _check_reachable(endpoint)
    services = Services(otlp_grpc(endpoint))
    try:
        shop = Shop(services, rate=rate, scenarios=scenarios, time_scale=time_scale, seed=seed)
        return shop.run(duration_s, stop or threading.Event())
    finally:
        services.shutdown()
