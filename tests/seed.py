"""A database seeded through the real pipeline (SDK → OTLP/gRPC → DuckDB) with every scenario,
on an injected clock pinned to 2025-10-09 08:53:20 UTC, so queries over it are deterministic."""

from __future__ import annotations

from pathlib import Path

import duckdb

from collector.service import ServeConfig, Service
from processors.clock import ManualClock
from tests.helpers import ORDERS_MODEL
from tests.otel_clients import grpc_exporter
from tests.scenarios import SCENARIOS, SECOND, Emitter, Order, S

T0 = 1_760_000_000 * SECOND  # 2025-10-09 08:53:20 UTC
SEED_NOW = T0 + 2 * 3600 * SECOND  # the seed's "now": 10:53:20

PLAN: list[tuple[str, str, int]] = [  # (order id, scenario, start offset in seconds)
    ("order-1042", "refunded-late", 0),
    ("order-1043", "happy", 5),
    ("order-1044", "happy", 12),
    ("order-1045", "declined", 15),
    ("order-1046", "double-charge", 20),
    ("order-1047", "ship-before-pay", 25),
    ("order-1048", "lost-shipment", 30),
    ("order-1049", "slow-payment", 35),
    ("order-1050", "shipped-then-refunded", 40),
    ("order-1051", "uncompensated", 45),
    ("order-2001", "happy", 3700),  # the next hour
]


def seed(db: Path) -> None:
    clock = ManualClock(T0)
    config = ServeConfig(
        api=None, model=str(ORDERS_MODEL), db=str(db), otlp_grpc="127.0.0.1:0", otlp_http=None, tick_interval_s=3600
    )
    with Service(config, clock=clock) as service:
        emitter = Emitter(lambda: grpc_exporter(service.grpc_endpoint))
        late: list[tuple[int, Order, int, object]] = []
        for order_id, scenario, offset in PLAN:
            start = T0 + offset * SECOND
            clock.set(start + 2 * SECOND)
            order = SCENARIOS[scenario](order_id)
            root = emitter.emit(order, start)
            if order.late:
                late.append((start + int(max(s.end for s in order.late) * SECOND) + SECOND, order, start, root))
            service.store.tick_now()
        for due, order, start, root in sorted(late, key=lambda x: x[0]):
            clock.set(due)
            emitter.emit_late(order, start, root)  # type: ignore[arg-type]
        # a shipping quote for a cart that never checked out: an orphan
        quote = Order("cart-quote-7", (S("shipping", "ShipOrder", 0.1, 0.2),))
        emitter.tracer("shipping")  # same providers
        _orphan(emitter, quote, T0 + 50 * SECOND)
        for t in range(60, 7200 + 1, 30):
            clock.set(T0 + t * SECOND)
            service.store.tick_now()
        clock.set(SEED_NOW)
        service.store.tick_now()
        emitter.shutdown()
    _deliveries(db)


def _deliveries(db: Path) -> None:
    """What an Alertmanager and a webhook receiver that failed once would have left for the open
    uncompensated failure of order-1051 (the notifiers' own tests run the real peers)."""
    con = duckdb.connect(str(db))
    try:
        [(aid,)] = con.execute(
            "SELECT anomaly_id FROM anomalies WHERE instance_key = 'order-1051' AND kind = 'uncompensated_failure'"
        ).fetchall()
        at = "TIMESTAMP '2025-10-09 10:00:00'"
        con.execute(
            f"INSERT INTO alert_deliveries VALUES (?, 'order', 'order-1051', 'alertmanager http://am:9093', "
            f"'opened', 1, {at})",
            [aid],
        )
        for attempt, outcome, code in ((1, "failed", 503), (2, "sent", 200)):
            con.execute(
                "INSERT INTO action_deliveries VALUES (?, 'order', 'order-1051', 'uncompensated_failure', 'payment', "
                f"'http://reconciler/refund', ?, ?, ?, ?, '', {at} + INTERVAL (?) SECOND)",
                [aid, attempt, outcome, outcome == "sent", code, attempt],
            )
    finally:
        con.close()


def _orphan(emitter: Emitter, order: Order, start: int) -> None:
    span = emitter.tracer("shipping").start_span("ShipOrder", start_time=start)
    span.set_attribute("app.order.id", order.order_id)
    span.end(end_time=start + SECOND // 10)
