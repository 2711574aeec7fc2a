"""The state fold: statuses per docs/architecture.md, and the invariants arrival order and re-delivery."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from processors.fold import fold
from processors.types import InstanceStatus, StepState, Transition
from tests.helpers import SECOND, T0, orders_model, tr

WF = orders_model().workflows[0]  # deadline 30s, grace 5s


HAPPY = [
    tr("checkout", "started", 0),
    tr("payment", "started", 0.1),
    tr("payment", "completed", 0.3),
    tr("inventory", "completed", 0.35),
    tr("shipment", "started", 0.5),
    tr("shipment", "completed", 0.8),
    tr("checkout", "completed", 1.0),
]


def at(seconds: float) -> int:
    return T0 + int(seconds * SECOND)


def test_happy_path_converges_when_the_last_required_step_completes() -> None:
    state = fold(WF, "o-1", HAPPY, at(2))
    assert state.status is InstanceStatus.CONVERGED
    assert state.converged_at_ns == at(1.0)
    assert state.steps["refund"].state is None
    assert state.steps["shipment"].state is StepState.COMPLETED
    assert [s.value for s, _ in state.history] == ["running", "converged"]
    assert state.violations == ()


def test_running_then_stalled_after_the_deadline() -> None:
    partial = HAPPY[:3]
    assert fold(WF, "o-1", partial, at(10)).status is InstanceStatus.RUNNING
    stalled = fold(WF, "o-1", partial, at(31))
    assert stalled.status is InstanceStatus.STALLED
    assert stalled.history[-1] == (InstanceStatus.STALLED, at(30))


def test_declined_payment_is_a_clean_failure_once_nothing_is_in_flight() -> None:
    declined = [
        tr("checkout", "started", 0),
        tr("payment", "started", 0.1),
        tr("payment", "failed", 0.2),
    ]
    # the checkout root is still open: the failure is not the end yet
    assert fold(WF, "o-1", declined, at(1)).status is InstanceStatus.RUNNING
    state = fold(WF, "o-1", [*declined, tr("checkout", "failed", 0.25)], at(60))
    assert state.status is InstanceStatus.FAILED
    assert state.converged_at_ns == at(0.25)
    assert [s.value for s, _ in state.history] == ["running", "failed"]


def test_a_failure_with_nothing_undone_is_never_called_compensated() -> None:
    """Nothing declares a compensation for the completed steps: no compensation ran."""
    declined = [tr("checkout", "started", 0), tr("payment", "failed", 0.2), tr("checkout", "completed", 0.3)]
    state = fold(WF, "o-1", declined, at(60))
    assert state.status is InstanceStatus.FAILED
    assert all(v.state is not StepState.COMPENSATED for v in state.steps.values())


def test_a_process_that_went_past_a_failed_step_is_degraded_until_the_retry() -> None:
    """Every other required step completed after the failure (an optional step here: the
    fulfilment of the shipped order failed): not converged, not compensated, nothing to undo."""
    went_on = [*HAPPY[:-1], tr("fulfilment", "failed", 0.9, span_id="ful-1"), tr("checkout", "completed", 1.0)]
    state = fold(WF, "o-1", went_on, at(60))
    assert state.status is InstanceStatus.DEGRADED
    assert state.converged_at_ns is None
    retried = fold(WF, "o-1", [*went_on, tr("fulfilment", "completed", 20, span_id="ful-2")], at(60))
    assert retried.status is InstanceStatus.CONVERGED
    assert [s.value for s, _ in retried.history] == ["running", "degraded", "converged"]


def test_a_failed_step_after_a_charge_is_degraded_not_uncompensated_when_the_process_went_on() -> None:
    """The charge declares a refund, but the order was shipped after the failure: nothing to undo."""
    failed_then_shipped = [
        tr("checkout", "started", 0),
        tr("payment", "completed", 0.3),
        tr("inventory", "failed", 0.35),
        tr("inventory", "started", 0.3),
        tr("shipment", "completed", 0.8),
        tr("checkout", "completed", 1.0),
    ]
    assert fold(WF, "o-1", failed_then_shipped, at(60)).status is InstanceStatus.DEGRADED


def test_failure_after_payment_diverges_after_grace_and_heals_with_the_refund() -> None:
    """The paper's case: payment completed, inventory failed, no refund within grace."""
    base = [
        tr("checkout", "started", 0),
        tr("payment", "started", 0.1),
        tr("payment", "completed", 0.3),
        tr("inventory", "failed", 0.4),
    ]
    assert fold(WF, "o-1", base, at(3)).status is InstanceStatus.RUNNING
    diverged = fold(WF, "o-1", base, at(6))
    assert diverged.status is InstanceStatus.DIVERGED
    assert diverged.history[-1] == (InstanceStatus.DIVERGED, at(5.4))
    healed = fold(WF, "o-1", [*base, tr("refund", "started", 8), tr("refund", "completed", 9)], at(20))
    assert healed.status is InstanceStatus.COMPENSATED
    assert healed.steps["payment"].state is StepState.COMPENSATED
    assert [s.value for s, _ in healed.history] == ["running", "diverged", "compensated"]
    assert healed.converged_at_ns == at(9)


def test_conflict_diverges() -> None:
    refunded_after_ship = [*HAPPY, tr("refund", "completed", 2)]
    state = fold(WF, "o-1", refunded_after_ship, at(3))
    assert state.status is InstanceStatus.DIVERGED
    assert state.conflicts == (("shipment.completed", "payment.compensated"),)


def test_out_of_order_start_is_recorded_with_evidence() -> None:
    early_ship = [
        tr("checkout", "started", 0),
        tr("shipment", "started", 0.1, span_id="ship-1"),
        tr("payment", "completed", 0.3),
    ]
    state = fold(WF, "o-1", early_ship, at(1))
    assert [(v.step, v.requirement, v.at.span_id) for v in state.violations] == [
        ("shipment", "payment.completed", "ship-1"),
        ("shipment", "inventory.completed", "ship-1"),
    ]


def test_two_completions_with_different_evidence_are_both_kept() -> None:
    twice = [*HAPPY, tr("payment", "completed", 0.5, span_id="charge-2")]
    state = fold(WF, "o-1", twice, at(2))
    assert sorted(e.span_id for e in state.steps["payment"].completions) == [
        "charge-2",
        "payment-span",
    ]


# -- invariants (hypothesis) ----------------------------------------------------------------
STEPS = [s.name for s in WF.steps]
transitions = st.builds(
    tr,
    st.sampled_from(STEPS),
    st.sampled_from([s.value for s in StepState if s is not StepState.COMPENSATED]),
    st.integers(min_value=0, max_value=40).map(lambda n: n / 2),
    st.sampled_from(["a", "b", "c"]),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(transitions, min_size=1, max_size=12),
    st.randoms(use_true_random=False),
    st.integers(0, 3),
    st.integers(0, 60),
)
def test_arrival_order_and_redelivery_never_change_the_state(
    items: list[Transition], rnd: object, copies: int, now: int
) -> None:
    reference = fold(WF, "o-1", items, at(now))
    shuffled = list(items) * (copies + 1)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    again = fold(WF, "o-1", shuffled, at(now))
    assert again == reference


@settings(max_examples=200, deadline=None)
@given(st.lists(transitions, min_size=1, max_size=12), st.integers(0, 60))
def test_status_history_is_time_ordered_and_ends_in_the_status(items: list[Transition], now: int) -> None:
    state = fold(WF, "o-1", items, at(now))
    times = [t for _, t in state.history]
    assert times == sorted(times)
    assert state.history[-1][0] is state.status
    assert all(a[0] is not b[0] for a, b in zip(state.history, state.history[1:], strict=False))
