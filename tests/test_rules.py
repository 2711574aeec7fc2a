"""The observer's rules, pure: a folded state in, findings out (no DuckDB, no clock)."""

from __future__ import annotations

from processors.fold import fold
from processors.model import parse_model
from processors.rules import findings
from processors.types import AnomalyKind, StepState, Transition
from tests.helpers import SECOND, T0, orders_model, tr

WF = orders_model().workflows[0]


def kinds(transitions: list[Transition], now: float, wf=WF) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    state = fold(wf, "o-1", transitions, T0 + int(now * SECOND))
    return sorted((f.kind.value, f.step) for f in findings(wf, state, T0 + int(now * SECOND)))


def test_healthy_instance_has_no_findings() -> None:
    happy = [tr("checkout", "started", 0), tr("payment", "completed", 0.3), tr("inventory", "completed", 0.4),
             tr("shipment", "started", 0.5), tr("shipment", "completed", 0.8), tr("checkout", "completed", 1)]  # fmt: skip
    assert kinds(happy, 100) == []


def test_missing_step_only_after_its_deadline() -> None:
    started = [tr("checkout", "started", 0)]
    assert kinds(started, 9.9) == []
    assert kinds(started, 10) == [("missing_step", "payment")]
    assert kinds(started, 31) == [
        ("missing_step", "checkout"),
        ("missing_step", "payment"),
        ("stalled", "checkout"),
    ]


def test_uncompensated_failure_waits_for_grace() -> None:
    failed = [
        tr("checkout", "started", 0),
        tr("payment", "completed", 0.3),
        tr("inventory", "failed", 0.4),
    ]
    assert kinds(failed, 5.3) == []
    assert kinds(failed, 5.4) == [("uncompensated_failure", "payment")]
    # refunded after grace: the condition held from 5.4 s to 6 s, and stays as history
    healed = fold(WF, "o-1", [*failed, tr("refund", "completed", 6)], T0 + 7 * SECOND)
    [finding] = findings(WF, healed, T0 + 7 * SECOND)
    assert (finding.kind, finding.since_ns, finding.resolved_ns) == (
        AnomalyKind.UNCOMPENSATED_FAILURE,
        T0 + int(5.4 * SECOND),
        T0 + 6 * SECOND,
    )
    # refunded within grace: nothing to report
    assert kinds([*failed, tr("refund", "completed", 5)], 7) == []


def test_a_step_that_completed_after_its_deadline_was_missing_until_then() -> None:
    """Judged from the transitions alone: the same whether the payment arrived before or after
    the watermark passed its deadline."""
    late = [tr("checkout", "started", 0), tr("payment", "completed", 12), tr("inventory", "completed", 12.5),
            tr("shipment", "completed", 13), tr("checkout", "completed", 14)]  # fmt: skip
    state = fold(WF, "o-1", late, T0 + 20 * SECOND)
    [finding] = findings(WF, state, T0 + 20 * SECOND)
    assert (finding.kind, finding.step) == (AnomalyKind.MISSING_STEP, "payment")
    assert (finding.since_ns, finding.resolved_ns) == (T0 + 10 * SECOND, T0 + 12 * SECOND)
    assert "payment completed only at " in finding.message
    # before the watermark reaches the deadline, nothing is judged
    assert findings(WF, state, T0 + 9 * SECOND) == []


def test_action_override_per_step_wins_over_workflow() -> None:
    model = parse_model(
        """
file_format: "1"
workflows:
  - name: order
    key: {attributes: [id]}
    steps:
      - {name: checkout, match: {span: A}}
      - name: payment
        match: {span: B}
        deadline: 1s
        actions: {missing_step: "page payments on-call about {key} ({step}): {detail}"}
    actions: {missing_step: "workflow-level text"}
"""
    )
    wf = model.workflows[0]
    state = fold(
        wf,
        "o-9",
        [Transition("order", "o-9", "checkout", StepState.STARTED, T0, "t", "s", "svc", "span")],
        T0 + 2 * SECOND,
    )
    [f] = findings(wf, state, T0 + 2 * SECOND)
    assert f.kind is AnomalyKind.MISSING_STEP
    assert f.action == "page payments on-call about o-9 (payment): payment never seen within 1s of 22:13:20.000"


def test_a_retried_failed_step_is_history_resolved_when_the_retry_completed() -> None:
    """The same history whether the retry's span came before or after the degraded state was seen."""
    went_on = [tr("checkout", "started", 0), tr("payment", "completed", 0.3), tr("inventory", "completed", 0.4),
               tr("shipment", "completed", 0.8), tr("fulfilment", "failed", 0.9, span_id="ful-1"),
               tr("checkout", "completed", 1.0)]  # fmt: skip
    open_now = findings(WF, fold(WF, "o-1", went_on, T0 + 5 * SECOND), T0 + 5 * SECOND)
    assert [(f.kind, f.step, f.since_ns, f.resolved_ns) for f in open_now] == [
        (AnomalyKind.FAILED_STEP, "fulfilment", T0 + int(0.9 * SECOND), None)
    ]
    retried = [*went_on, tr("fulfilment", "completed", 20, span_id="ful-2")]
    later = findings(WF, fold(WF, "o-1", retried, T0 + 30 * SECOND), T0 + 30 * SECOND)
    assert [(f.kind, f.since_ns, f.resolved_ns) for f in later] == [
        (AnomalyKind.FAILED_STEP, T0 + int(0.9 * SECOND), T0 + 20 * SECOND)
    ]
    # a failure retried before the process went past it never degraded anything
    quick = [*went_on[:4], tr("fulfilment", "failed", 0.5, span_id="f1"), tr("fulfilment", "completed", 0.6, span_id="f2"),
             tr("checkout", "completed", 1.0)]  # fmt: skip
    assert findings(WF, fold(WF, "o-1", quick, T0 + 30 * SECOND), T0 + 30 * SECOND) == []


def test_a_refunded_duplicate_charge_is_history_resolved_at_the_refund() -> None:
    twice = [tr("checkout", "started", 0), tr("payment", "completed", 0.3), tr("payment", "completed", 0.5, span_id="charge-2"),
             tr("inventory", "completed", 0.6), tr("refund", "completed", 3)]  # fmt: skip
    state = fold(WF, "o-1", twice, T0 + 10 * SECOND)
    [dup] = [f for f in findings(WF, state, T0 + 10 * SECOND) if f.kind is AnomalyKind.DUPLICATE_ACTION]
    assert (dup.step, dup.since_ns, dup.resolved_ns) == ("payment", T0 + int(0.5 * SECOND), T0 + 3 * SECOND)
