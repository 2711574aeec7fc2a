"""coordstate on OpenTelemetry Demo traffic (tests/oteldemo.py): both releases' span names, with
and without the 3.x collector's renames, every checkout fault flag, delivered as real services
deliver it — per-service batches on their own schedules, and a collector's backlog after an outage.
"""

from __future__ import annotations

import random
import struct
import time
from collections import Counter
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from analytics.write.store import Store
from collector.decode import decode_request
from collector.replay import replay
from collector.service import ServeConfig, Service, load_compiled
from processors.clock import EventTimeClock
from tests.conftest import query_live
from tests.helpers import ROOT
from tests.otel_clients import grpc_exporter
from tests.oteldemo import (
    FAULTS,
    NAMINGS,
    SECOND,
    DemoOrder,
    Naming,
    Request,
    Shop,
    backlog,
    ordered,
    per_service,
    spans_of,
)

MODEL = ROOT / "otel-config" / "models" / "otel-demo.yaml"
T0 = 1_760_000_000 * SECOND
SHARES = {"paymentFailure": 0.1, "paymentUnreachable": 0.1, "cartFailure": 0.1, "kafkaQueueProblems": 0.1}

#: fault flag → (status, anomaly kinds by step) every such order must show
EXPECTED: dict[str | None, tuple[str, frozenset[tuple[str, str]]]] = {
    None: ("converged", frozenset()),
    "paymentFailure": ("failed", frozenset()),
    "paymentUnreachable": ("failed", frozenset()),
    "cartFailure": ("degraded", frozenset({("failed_step", "empty-cart")})),
    "kafkaQueueProblems": ("converged", frozenset({("duplicate_action", "accounting"), ("duplicate_action", "fraud-check")})),
}  # fmt: skip


def write(requests: list[Request], path: Path) -> Path:
    """The requests as the collector's file exporter writes them (length-prefixed protobuf)."""
    frames = [encode_spans(list(r.spans)).SerializeToString() for r in requests]
    path.write_bytes(b"".join(struct.pack(">I", len(f)) + f for f in frames))
    return path


def outcome(db: Path) -> tuple[dict[str, str], list[tuple[object, ...]], list[tuple[object, ...]]]:
    """Statuses by key, every anomaly ever opened, and the status history."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        statuses = dict(con.execute("SELECT instance_key, status FROM instances").fetchall())
        anomalies = con.execute(
            "SELECT instance_key, kind, step, severity, opened_at, resolved_at, message, suggested_action "
            "FROM anomalies ORDER BY ALL"
        ).fetchall()
        history = con.execute("SELECT * FROM instance_history ORDER BY ALL").fetchall()
    finally:
        con.close()
    return statuses, anomalies, history


def replayed(requests: list[Request], tmp: Path, name: str) -> tuple[dict[str, str], list[tuple[object, ...]], list[tuple[object, ...]]]:  # fmt: skip
    db = tmp / f"{name}.duckdb"
    summary = replay([write(requests, tmp / f"{name}.binpb")], load_compiled(str(MODEL)), db, progress=False)
    assert (summary.rejected, summary.skipped) == (0, ())  # the fixture is valid OTLP, every span of it
    return outcome(db)


def table(naming: Naming, orders: list[DemoOrder], statuses: dict[str, str], anomalies: list[tuple[object, ...]]) -> tuple[str, list[str]]:  # fmt: skip
    """The expected → actual table (one row per fault flag), and every order that disagrees."""
    kinds: dict[str, set[tuple[str, str]]] = {}
    for key, kind, step, *_ in anomalies:
        kinds.setdefault(str(key), set()).add((str(kind), str(step)))
    rows: Counter[tuple[str, str, str, str]] = Counter()
    wrong = []
    for o in orders:
        status, expected_kinds = EXPECTED[o.fault]
        got_status, got_kinds = statuses.get(o.key, "(no instance)"), kinds.get(o.key, set())
        show = lambda ks: ", ".join(sorted(f"{k} on {s}" for k, s in ks)) or "no anomaly"  # noqa: E731
        rows[(o.fault or "healthy", f"{status}, {show(expected_kinds)}", f"{got_status}, {show(got_kinds)}", "")] += 1
        if (got_status, got_kinds) != (status, set(expected_kinds)):
            wrong.append(f"{o.fault or 'healthy'} order {o.key}: expected {status} {sorted(expected_kinds)}, got {got_status} {sorted(got_kinds)}")  # fmt: skip
    lines = [f"OpenTelemetry Demo {naming}:", "| flag | orders | expected | actual |", "|---|---|---|---|"]
    lines += [f"| {flag} | {n} | {exp} | {act} |" for (flag, exp, act, _), n in sorted(rows.items())]
    return "\n".join(lines), wrong


@pytest.mark.parametrize("naming", NAMINGS, ids=str)
def test_every_fault_flag_gives_its_status_and_action(naming: Naming, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    orders = Shop(naming, seed=14, t0_ns=T0).orders(60, SHARES)
    assert {o.fault for o in orders} == {None, *FAULTS}
    statuses, anomalies, _ = replayed(per_service(spans_of(orders), random.Random(1)), tmp_path, "demo")
    text, wrong = table(naming, orders, statuses, anomalies)
    with capsys.disabled():
        print("\n" + text)
    assert wrong == []
    assert len(statuses) == len(orders)  # nothing else became an instance
    healthy = {o.key for o in orders if o.fault is None}
    assert not [a for a in anomalies if a[0] in healthy], "an anomaly was opened for a healthy order"
    for o in orders:
        actions = [str(a[7]) for a in anomalies if a[0] == o.key]
        if o.fault == "cartFailure":
            assert actions == [
                f"empty the cart of order {o.key}: empty-cart failed at {actions[0].split(' failed at ')[1]}"
            ]
        if o.fault == "kafkaQueueProblems":
            assert any(a.startswith(f"order {o.key} was booked more than once by accounting") for a in actions)
    assert {a[3] for a in anomalies if a[1] == "duplicate_action"} == {"critical"}


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), naming=st.sampled_from(NAMINGS), outage_at=st.integers(5, 40))
def test_delivery_never_changes_statuses_or_the_anomaly_history(
    seed: int, naming: Naming, outage_at: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Per-service batches (each span up to 10 s after it ended) and a 5-minute collector backlog
    give exactly what an ordered delivery gives: statuses, status history and anomalies."""
    tmp = tmp_path_factory.mktemp("delivery")
    orders = Shop(naming, seed=seed, t0_ns=T0).orders(40, SHARES)
    spans = spans_of(orders)
    rng = random.Random(seed)
    batches = per_service(spans, rng)
    reference = replayed(ordered(spans), tmp, "ordered")
    assert replayed(batches, tmp, "per-service") == reference
    assert replayed(backlog(batches, T0 + outage_at * SECOND), tmp, "backlog") == reference
    statuses, anomalies, _ = reference
    assert {statuses[o.key] for o in orders if o.fault is None} == {"converged"}
    assert not [a for a in anomalies if a[0] in {o.key for o in orders if o.fault is None}]


def heartbeat(at_ns: int) -> ReadableSpan:
    """A page view the shop serves meanwhile (no step matches it): time goes on."""
    ctx = SpanContext(random.getrandbits(128), random.getrandbits(64), is_remote=False, trace_flags=TraceFlags(1))
    return ReadableSpan(
        name="GET /api/products", context=ctx, resource=Resource({"service.name": "frontend"}),
        kind=SpanKind.SERVER, start_time=at_ns - 5_000_000, end_time=at_ns,
    )  # fmt: skip


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_live_server_on_per_service_batches_from_the_sdk(db_path: Path) -> None:
    """The real server on its real (event-time) clock, each batch sent by the OpenTelemetry SDK's
    OTLP/gRPC exporter in the order the services' schedules deliver them."""
    naming = Naming("3.x", renamed=True)
    start = time.time_ns() - 240 * SECOND
    orders = Shop(naming, seed=3, t0_ns=start).orders(40, SHARES)
    batches = per_service(spans_of(orders), random.Random(3))
    config = ServeConfig(model=str(MODEL), db=str(db_path), otlp_grpc="127.0.0.1:0", otlp_http=None, api=None)
    with Service(config) as service:
        exporter = grpc_exporter(service.grpc_endpoint)
        for request in batches:
            assert exporter.export(list(request.spans)) == SpanExportResult.SUCCESS
        # the shop goes on serving pages: the watermark passes the last order's key wait
        assert exporter.export([heartbeat(time.time_ns())]) == SpanExportResult.SUCCESS
        service.store.tick_now()
        statuses = dict(query_live(service.store, "SELECT instance_key, status FROM instances"))
        anomalies = query_live(service.store, "SELECT instance_key, kind, step FROM anomalies ORDER BY ALL")
        exporter.shutdown()
    _, wrong = table(naming, orders, statuses, [(*a, None, None, None, None, None) for a in anomalies])
    assert wrong == []
    assert len(statuses) == len(orders)


def test_a_lost_payment_span_is_still_flagged_once_the_watermark_passes_its_deadline(tmp_path: Path) -> None:
    """Lateness delays judgement by the allowed lateness, never suppresses it: an order whose
    payment span never arrives is flagged when the traffic's event time passes its deadline
    (5 s) plus the lateness (15 s)."""
    orders = Shop(Naming("3.x"), seed=8, t0_ns=T0).orders(40, {})
    lost = orders[5]
    charge = next(s for s in lost.spans if s.name == "grpc.oteldemo.PaymentService/Charge")
    lost.spans.remove(charge)
    db = tmp_path / "lost.duckdb"
    # delivered as a live server receives traffic in real time: every request committed, the
    # watermark moved, and a tick, before the next one arrives
    model = load_compiled(str(MODEL))
    clock = EventTimeClock(model.model.watermark.lateness)
    with Store(db, model, clock, tick_interval_s=None) as store:
        for request in per_service(spans_of(orders), random.Random(8)):
            decoded = decode_request(encode_spans(list(request.spans)), model)
            if decoded.records:
                store.submit(decoded.records).result()
            store.observe(decoded.max_time_ns)
            store.tick_now()
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute(
            "SELECT a.instance_key, a.kind, a.step, epoch(a.opened_at - i.started_at), epoch(a.detected_at - a.opened_at) "
            "FROM anomalies a JOIN instances i USING (workflow, instance_key) ORDER BY ALL"
        ).fetchall()
    finally:
        con.close()
    assert {(k, kind, step) for k, kind, step, _, _ in rows} >= {(lost.key, "missing_step", "charge")}
    assert {k for k, *_ in rows} == {lost.key}  # no other order
    [(_, _, _, after_start, judged_after)] = [r for r in rows if r[1:3] == ("missing_step", "charge")]
    assert after_start == 5.0
    assert 0 <= judged_after < 5  # the first tick after the watermark (event time − 15 s) passed it


def test_span_status_is_kept_as_sent_unset_included(tmp_path: Path) -> None:
    """UNSET (what most instrumentation leaves on a success) is not OK: it is stored as `unset`."""
    orders = Shop(Naming("2.2"), seed=2, t0_ns=T0).orders(3, {})
    orders[0].spans = [
        ReadableSpan(name=s.name, context=s.context, parent=s.parent, resource=s.resource, attributes=s.attributes,
                     events=s.events, kind=s.kind, status=Status(StatusCode.OK), start_time=s.start_time, end_time=s.end_time)
        if s.name == "oteldemo.CheckoutService/PlaceOrder" else s
        for s in orders[0].spans
    ]  # fmt: skip
    orders.append(Shop(Naming("2.2"), seed=5, t0_ns=T0 + 9 * SECOND).order("paymentFailure"))
    db = tmp_path / "status.duckdb"
    replay([write(ordered(spans_of(orders)), tmp_path / "s.binpb")], load_compiled(str(MODEL)), db, progress=False)
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = dict(con.execute("SELECT name || ' ' || instance_key, status FROM spans WHERE service IN ('checkout', 'payment')").fetchall())  # fmt: skip
    finally:
        con.close()
    assert rows[f"oteldemo.CheckoutService/PlaceOrder {orders[0].key}"] == "ok"
    assert rows[f"oteldemo.CheckoutService/PlaceOrder {orders[1].key}"] == "unset"
    assert rows[f"grpc.oteldemo.PaymentService/Charge {orders[-1].key}"] == "error"
