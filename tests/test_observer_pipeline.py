"""Every anomaly kind through the real pipeline: SDK → OTLP/gRPC receiver → DuckDB, with an
injected clock so deadlines and grace periods pass without waiting."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.service import ServeConfig, Service
from processors.clock import ManualClock
from tests.conftest import query_live
from tests.helpers import ORDERS_MODEL
from tests.otel_clients import grpc_exporter
from tests.scenarios import SCENARIOS, SECOND, Emitter

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

T0 = 1_760_000_000 * SECOND  # 2025-10-09 08:53:20 UTC


class Run:
    def __init__(self, service: Service, clock: ManualClock) -> None:
        self.service = service
        self.clock = clock
        self.emitter = Emitter(lambda: grpc_exporter(service.grpc_endpoint))

    def at(self, seconds: float) -> None:
        """Move the clock and let the observer tick at that time."""
        self.clock.set(T0 + int(seconds * SECOND))
        self.service.store.tick_now()

    def anomalies(self, key: str) -> list[tuple[object, ...]]:
        return query_live(
            self.service.store,
            f"SELECT kind, step, severity, opened_at, resolved_at, message, suggested_action, evidence FROM anomalies WHERE instance_key = '{key}' ORDER BY opened_at, kind",
        )

    def status(self, key: str) -> str:
        return str(query_live(self.service.store, f"SELECT status FROM instances WHERE instance_key = '{key}'")[0][0])


@pytest.fixture
def run(db_path: Path) -> Iterator[Run]:
    clock = ManualClock(T0)
    config = ServeConfig(
        model=str(ORDERS_MODEL),
        db=str(db_path),
        otlp_grpc="127.0.0.1:0",
        otlp_http=None,
        tick_interval_s=3600,
    )
    with Service(config, clock=clock) as service:
        r = Run(service, clock)
        yield r
        r.emitter.shutdown()


def test_paper_case_uncompensated_failure_then_refund_heals(run: Run) -> None:
    order = SCENARIOS["refunded-late"]("order-1042")
    root = run.emitter.emit(order, T0)
    trace_id = f"{root.trace_id:032x}"
    run.at(3)
    assert run.status("order-1042") == "running"
    assert run.anomalies("order-1042") == []
    run.at(6)  # failure at 0.35 + grace 5s
    assert run.status("order-1042") == "diverged"
    [(kind, step, severity, opened, resolved, message, action, evidence)] = run.anomalies("order-1042")
    assert (kind, step, severity, resolved) == (
        "uncompensated_failure",
        "payment",
        "critical",
        None,
    )
    assert str(opened) == "2025-10-09 08:53:25.350000"
    assert message == (
        "order order-1042: payment completed at 08:53:20.300 (span "
        f"{evidence[0]['span_id'][:8]}…) but inventory failed and no refund ran within 5s."
    )
    assert action.startswith("refund the charge of order-1042: payment completed at 08:53:20.300")  # model override
    assert [e["what"] for e in evidence] == ["payment completed", "inventory failed"]
    assert {e["trace_id"] for e in evidence} == {trace_id}
    run.clock.set(T0 + 10 * SECOND)
    run.emitter.emit_late(order, T0, root)
    assert run.status("order-1042") == "compensated"
    [(_, _, _, _, resolved, *_)] = run.anomalies("order-1042")
    assert str(resolved) == "2025-10-09 08:53:29"  # when the refund completed (event time), not when it arrived
    assert query_live(run.service.store, "SELECT steps['payment'] FROM instances") == [("compensated",)]


def test_duplicate_action_names_both_spans(run: Run) -> None:
    run.emitter.emit(SCENARIOS["double-charge"]("o-dup"), T0)
    run.at(2)
    rows = run.anomalies("o-dup")
    assert [(r[0], r[1], r[2]) for r in rows] == [("duplicate_action", "payment", "critical")]
    evidence = rows[0][7]
    assert [e["what"] for e in evidence] == ["payment completed", "payment completed again"]
    assert rows[0][6].startswith("run refund for the second payment of o-dup (span")


def test_out_of_order_is_kept_even_when_the_order_converged_in_the_same_batch(run: Run) -> None:
    order = SCENARIOS["ship-before-pay"]("o-ooo")
    run.emitter.emit(order, T0)
    assert run.status("o-ooo") == "converged"
    rows = run.anomalies("o-ooo")
    assert [(r[0], r[1], str(r[3]), str(r[4])) for r in rows] == [
        ("out_of_order", "shipment", "2025-10-09 08:53:20.050000", "2025-10-09 08:53:21")
    ]
    run.at(5)  # refolds and ticks never duplicate it
    assert len(run.anomalies("o-ooo")) == 1


def test_arrival_order_alone_never_raises_out_of_order(run: Run) -> None:
    """The shipping service exports before the inventory service: no anomaly, the order is fine."""
    from tests.scenarios import HAPPY, Order

    order = Order("o-arrival", (HAPPY[0], HAPPY[2]), late=(HAPPY[1],))
    root = run.emitter.emit(order, T0)
    run.at(1.5)
    run.emitter.emit_late(order, T0, root)
    run.at(10)
    assert run.status("o-arrival") == "converged"
    assert run.anomalies("o-arrival") == []


def test_out_of_order_opens_while_the_precondition_is_missing(run: Run) -> None:
    from tests.scenarios import Order, S

    order = Order(
        "o-ooo2",
        (S("shipping", "ShipOrder", 0.05, 0.08),),
        late=(
            S("payment", "Charge", 0.1, 0.3),
            S("inventory", "Reserve", 0.3, 0.4, events=(("inventory.reserved", 0.35),)),
        ),
    )
    root = run.emitter.emit(order, T0)
    # payment may simply not have *arrived* yet: nothing is raised within grace (5s) of the start
    assert run.anomalies("o-ooo2") == []
    run.at(5.2)
    rows = run.anomalies("o-ooo2")
    assert [(r[0], r[1]) for r in rows] == [("out_of_order", "shipment")]
    assert "shipment started at 08:53:20.050 before payment.completed held" in rows[0][5]
    assert rows[0][6].startswith("hold shipment of o-ooo2 and verify payment.completed")
    run.clock.set(T0 + 6 * SECOND)
    run.emitter.emit_late(order, T0, root)
    assert run.status("o-ooo2") == "converged"
    assert run.anomalies("o-ooo2")[0][4] is not None  # resolved


def test_missing_step_that_arrives_late_heals(run: Run) -> None:
    order = SCENARIOS["slow-payment"]("o-slow")
    root = run.emitter.emit(order, T0)
    run.at(9)
    assert run.anomalies("o-slow") == []
    run.at(10.5)  # the payment step's own deadline is 10s
    rows = run.anomalies("o-slow")
    assert [(r[0], r[1], r[2], str(r[3]), r[4]) for r in rows] == [
        ("missing_step", "payment", "warning", "2025-10-09 08:53:30", None)
    ]
    assert rows[0][6] == "re-drive payment of o-slow: payment never seen within 10s of 08:53:20.000"
    run.clock.set(T0 + 13 * SECOND)
    run.emitter.emit_late(order, T0, root)  # the payment (and then the shipment) arrives late
    assert run.status("o-slow") == "converged"
    rows = run.anomalies("o-slow")
    assert str(rows[0][4]) == "2025-10-09 08:53:32"  # the payment completed at 12 s (event time)
    healed = query_live(
        run.service.store,
        "SELECT epoch(resolved_at - opened_at) FROM anomalies WHERE instance_key = 'o-slow'",
    )
    assert healed == [(2.0,)]


def test_lost_step_stalls_the_order(run: Run) -> None:
    run.emitter.emit(SCENARIOS["lost-shipment"]("o-lost"), T0)
    run.at(29)
    assert run.status("o-lost") == "running"
    run.at(31)
    assert run.status("o-lost") == "stalled"
    rows = run.anomalies("o-lost")
    assert sorted((r[0], r[1]) for r in rows) == [
        ("missing_step", "shipment"),
        ("stalled", "shipment"),
    ]
    stalled = next(r for r in rows if r[0] == "stalled")
    assert (
        stalled[6]
        == "re-drive o-lost from shipment: no coherent end within 30s of 08:53:20.000; first incomplete step: shipment"
    )


def test_conflict_shipped_then_refunded(run: Run) -> None:
    run.emitter.emit(SCENARIOS["shipped-then-refunded"]("o-conf"), T0)
    run.at(3)
    assert run.status("o-conf") == "diverged"
    rows = run.anomalies("o-conf")
    assert [(r[0], r[1], r[2]) for r in rows] == [("conflicting_state", "shipment", "critical")]
    assert "shipment.completed and payment.compensated both hold" in rows[0][5]
    assert [e["what"] for e in rows[0][7]] == ["shipment.completed", "payment.compensated"]


def test_declined_payment_is_a_clean_failure_without_anomaly(run: Run) -> None:
    run.emitter.emit(SCENARIOS["declined"]("o-declined"), T0)
    run.at(60)
    assert run.status("o-declined") == "failed"
    assert run.anomalies("o-declined") == []


def test_a_failed_step_the_order_went_past_stays_open_until_its_retry(run: Run) -> None:
    order = SCENARIOS["fulfilment-failed"]("o-deg")
    root = run.emitter.emit(order, T0)
    run.at(10)
    assert run.status("o-deg") == "degraded"
    (anomaly,) = run.anomalies("o-deg")
    assert anomaly[:3] == ("failed_step", "fulfilment", "warning")
    assert anomaly[4] is None
    assert anomaly[6].startswith("retry fulfilment of o-deg: fulfilment failed at ")
    assert [e["what"] for e in anomaly[7]] == ["fulfilment failed"]
    run.emitter.emit_late(order, T0, root)
    run.at(30)
    assert run.status("o-deg") == "converged"
    (healed,) = run.anomalies("o-deg")
    assert healed[0] == "failed_step"
    assert str(healed[4]) == "2025-10-09 08:53:40.500000"  # when the retry completed (event time)


def test_no_duplicate_open_anomalies(run: Run) -> None:
    run.emitter.emit(SCENARIOS["lost-shipment"]("o-once"), T0)
    for t in (31, 32, 40, 50):
        run.at(t)
    counts = query_live(
        run.service.store,
        "SELECT kind, count(*) FROM anomalies WHERE instance_key = 'o-once' GROUP BY ALL ORDER BY 1",
    )
    assert counts == [("missing_step", 1), ("stalled", 1)]
    assert query_live(run.service.store, "SELECT open_anomalies FROM instances WHERE instance_key = 'o-once'") == [(2,)]


def test_a_late_step_that_arrived_before_its_deadline_was_judged_is_still_recorded(run: Run) -> None:
    """The payment completed at 12 s, after its 10 s deadline, but its span arrived while the clock
    (the watermark) was at 5 s: the re-fold due at 10 s records the lateness as history."""
    order = SCENARIOS["slow-payment"]("o-early")
    run.clock.set(T0 + 5 * SECOND)
    root = run.emitter.emit(order, T0)
    run.emitter.emit_late(order, T0, root)  # everything is in before the deadline is judged
    run.service.store.tick_now()
    assert run.anomalies("o-early") == []
    assert run.status("o-early") == "converged"
    run.at(11)
    rows = run.anomalies("o-early")
    assert [(r[0], r[1], str(r[3]), str(r[4])) for r in rows] == [
        ("missing_step", "payment", "2025-10-09 08:53:30", "2025-10-09 08:53:32")
    ]
