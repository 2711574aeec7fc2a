"""Matching and key correlation: span records in, exact transitions out."""

from __future__ import annotations

from processors.correlate import Processor
from processors.matching import CompiledModel
from processors.model import parse_model
from processors.types import DropReason, StepState, Transition
from tests.helpers import SECOND, T0, compiled_orders, order_spans, span, trace_id


def rows(transitions: list[Transition]) -> list[tuple[str, str, str, int]]:
    return sorted((t.instance_key, t.step, t.state.value, (t.event_time_ns - T0) // 1_000_000) for t in transitions)


def test_span_and_event_matching_yield_exact_transitions() -> None:
    proc = Processor(compiled_orders())
    out = proc.process(order_spans(1, "order-1"), now_ns=T0 + 2 * SECOND)
    assert rows(out.transitions) == [
        ("order-1", "checkout", "completed", 1000),
        ("order-1", "checkout", "started", 0),
        ("order-1", "inventory", "completed", 350),
        ("order-1", "payment", "completed", 300),
        ("order-1", "payment", "started", 100),
        ("order-1", "shipment", "completed", 800),
        ("order-1", "shipment", "started", 500),
    ]
    sources = {(t.step, t.source) for t in out.transitions}
    assert ("inventory", "event:inventory.reserved") in sources
    assert ("payment", "span") in sources
    assert out.dropped == {}


def test_failed_span_yields_failed_state() -> None:
    proc = Processor(compiled_orders())
    spans = [
        span(1, "checkout", "PlaceOrder", 0, 1, attrs={"app.order.id": "o-9"}),
        span(1, "payment", "Charge", 0.1, 0.2, error=True),
    ]
    out = proc.process(spans, now_ns=T0)
    assert ("o-9", "payment", "failed", 200) in rows(out.transitions)


def test_key_inherited_from_root_that_arrives_last() -> None:
    """The demo's shape: the order id sits on PlaceOrder, which ends and arrives last."""
    proc = Processor(compiled_orders())
    root, *children = order_spans(7, "order-7")
    first = proc.process(children, now_ns=T0 + SECOND)
    assert first.transitions == []
    assert proc.pending_count == 3
    assert len(first.pending_added) == 3
    second = proc.process([root], now_ns=T0 + 2 * SECOND)
    assert {t.instance_key for t in second.transitions} == {"order-7"}
    assert len(second.transitions) == 7
    assert proc.pending_count == 0
    delete, insert = proc.pending_delta(second)
    assert delete == {p.ident for p in first.pending_added}
    assert insert == []
    assert [(k.trace_id, k.instance_key) for k in second.learned_keys] == [(trace_id(7), "order-7")]


def test_key_inherited_through_a_span_link() -> None:
    """A queue consumer runs in its own trace, linked to the producer's span."""
    proc = Processor(compiled_orders())
    proc.process(order_spans(1, "order-1"), now_ns=T0 + SECOND)
    consumer = span(2, "fulfilment", "orders process", 2, 3, links=((1, "00000000000000aa"),))
    out = proc.process([consumer], now_ns=T0 + 3 * SECOND)
    assert rows(out.transitions) == [
        ("order-1", "fulfilment", "completed", 3000),
        ("order-1", "fulfilment", "started", 2000),
    ]


def test_linked_span_waits_for_the_linked_trace_key() -> None:
    proc = Processor(compiled_orders())
    consumer = span(2, "fulfilment", "orders process", 2, 3, links=((1, "00000000000000aa"),))
    assert proc.process([consumer], now_ns=T0).transitions == []
    out = proc.process(order_spans(1, "order-1"), now_ns=T0 + SECOND)
    assert ("order-1", "fulfilment", "started", 2000) in rows(out.transitions)
    assert proc.pending_count == 0


def test_resource_attribute_carries_the_key() -> None:
    proc = Processor(compiled_orders())
    root = span(3, "checkout", "PlaceOrder", 0, 1)._replace(resource_attributes={"demo.order.id": "r-1"})
    out = proc.process([root], now_ns=T0)
    assert {t.instance_key for t in out.transitions} == {"r-1"}


def test_span_attribute_wins_over_resource_attribute() -> None:
    proc = Processor(compiled_orders())
    root = span(3, "checkout", "PlaceOrder", 0, 1, attrs={"app.order.id": "span-key"})._replace(
        resource_attributes={"app.order.id": "resource-key"}
    )
    assert {t.instance_key for t in proc.process([root], now_ns=T0).transitions} == {"span-key"}


def test_unkeyed_spans_fall_back_to_trace_id_after_key_wait() -> None:
    """A checkout whose payment failed may never carry an order id: it must not vanish."""
    proc = Processor(compiled_orders())
    spans = [
        span(5, "checkout", "PlaceOrder", 0, 1),
        span(5, "payment", "Charge", 0.1, 0.2, error=True),
    ]
    assert proc.process(spans, now_ns=T0).transitions == []
    # the wait counts from the span's own end (1 s) when the clock is behind it (event time)
    assert proc.tick(T0 + 10 * SECOND).transitions == []
    out = proc.tick(T0 + 11 * SECOND)
    assert {t.instance_key for t in out.transitions} == {trace_id(5)}
    assert ("payment", StepState.FAILED) in {(t.step, t.state) for t in out.transitions}
    assert proc.pending_count == 0


MODEL_NO_FALLBACK = """
file_format: "1"
workflows:
  - name: order
    key: {attributes: [app.order.id], wait: 2s}
    steps:
      - {name: checkout, match: {service: checkout, span: PlaceOrder}}
      - {name: payment, match: {service: payment, span: Charge}}
"""


def test_unkeyed_spans_are_counted_when_no_fallback() -> None:
    proc = Processor(CompiledModel(parse_model(MODEL_NO_FALLBACK)))
    proc.process([span(5, "payment", "Charge", 0, 1)], now_ns=T0)
    out = proc.tick(T0 + 3 * SECOND)  # 2 s after the span ended
    assert out.dropped[DropReason.UNKEYED] == 1
    assert [(s.disposition, s.steps) for s in out.spans] == [("unkeyed", ("payment",))]


def test_keyed_span_without_start_step_becomes_orphan() -> None:
    """A shipping quote fetched by a cart page carries an order id but no checkout ever ran."""
    proc = Processor(compiled_orders())
    quote = span(6, "shipping", "ShipOrder", 0, 1, attrs={"app.order.id": "cart-quote"})
    assert proc.process([quote], now_ns=T0).transitions == []
    out = proc.tick(T0 + 11 * SECOND)  # 10 s after the span ended
    assert out.dropped[DropReason.ORPHAN] == 1
    assert [(s.instance_key, s.disposition) for s in out.spans] == [("cart-quote", "orphan")]
    assert len(proc.table) == 0


def test_pending_buffer_is_bounded_and_eviction_is_counted() -> None:
    proc = Processor(CompiledModel(parse_model(MODEL_NO_FALLBACK)), max_pending=3)
    spans = [span(100 + i, "payment", "Charge", i, i + 0.5) for i in range(5)]
    out = proc.process(spans, now_ns=T0)
    assert proc.pending_count == 3
    assert out.dropped[DropReason.UNKEYED] == 2


def test_unmatched_spans_are_counted_not_kept() -> None:
    proc = Processor(compiled_orders())
    out = proc.process([span(9, "frontend", "GET /", 0, 1), span(9, "cart", "GetCart", 0, 1)], now_ns=T0)
    assert out.dropped[DropReason.UNMATCHED] == 2
    assert out.spans == []


def test_redelivery_is_counted_as_duplicate_and_changes_nothing() -> None:
    proc = Processor(compiled_orders())
    spans = order_spans(1, "order-1")
    first = proc.process(spans, now_ns=T0)
    again = proc.process(spans, now_ns=T0)
    assert len(first.transitions) == 7
    assert again.transitions == []
    assert again.dropped[DropReason.DUPLICATE] == 7


def test_trace_id_workflow_uses_the_trace_as_instance() -> None:
    model = parse_model(
        """
file_format: "1"
workflows:
  - name: login
    key: {trace_id: true}
    steps:
      - {name: auth, match: {service: "auth*", span: "Login*"}}
"""
    )
    proc = Processor(CompiledModel(model))
    out = proc.process([span(42, "auth-svc", "LoginUser", 0, 1)], now_ns=T0)
    assert {t.instance_key for t in out.transitions} == {trace_id(42)}


def test_attribute_filters_restrict_matches() -> None:
    model = parse_model(
        """
file_format: "1"
workflows:
  - name: order
    key: {attributes: [order.id]}
    steps:
      - {name: checkout, match: {span: Checkout, attributes: {region: eu}}}
"""
    )
    compiled = CompiledModel(model)
    assert "region" in compiled.projection
    proc = Processor(compiled)
    eu = span(1, "s", "Checkout", 0, 1, attrs={"order.id": "a", "region": "eu"})
    us = span(2, "s", "Checkout", 0, 1, attrs={"order.id": "b", "region": "us"})
    out = proc.process([eu, us], now_ns=T0)
    assert {t.instance_key for t in out.transitions} == {"a"}


def test_projection_is_only_what_the_model_reads() -> None:
    assert compiled_orders().projection == frozenset({"app.order.id", "demo.order.id"})


def test_link_index_is_released_with_the_spans_that_waited() -> None:
    proc = Processor(
        CompiledModel(
            parse_model(
                MODEL_NO_FALLBACK.replace(
                    "payment, span: Charge",
                    "payment, span: Charge}}\n      - {name: fulfilment, match: {service: fulfilment, span: consume",
                )
            )
        )
    )
    waiting = span(2, "fulfilment", "consume", 0, 1, links=((1, "00000000000000aa"),))
    proc.process([waiting], now_ns=T0)
    corr = proc._wf["order"]
    assert corr.by_link == {trace_id(1): {trace_id(2)}}
    out = proc.tick(T0 + 3 * SECOND)  # the linked trace never revealed a key within 2 s of its end
    assert out.dropped[DropReason.UNKEYED] == 1
    assert corr.by_link == {}
    assert corr.by_trace == {}
