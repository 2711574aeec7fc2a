"""Reconciliation webhooks and OTLP log records: real HTTP and gRPC peers, real server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from collector.service import ServeConfig, Service, StartError
from processors.clock import ManualClock
from tests.alerting import LogsReceiver, WebhookReceiver, attributes, wait_until
from tests.conftest import query_live
from tests.helpers import ORDERS_MODEL
from tests.otel_clients import grpc_exporter
from tests.scenarios import SCENARIOS, SECOND, Emitter, Order, S

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

T0 = 1_760_000_000 * SECOND


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    hooks = WebhookReceiver()
    yield hooks
    hooks.stop()


def model_with_webhook(tmp_path: Path, url: str, after: str = "5s") -> Path:
    model = tmp_path / "orders-actions.yaml"
    text = ORDERS_MODEL.read_text().replace(
        "        compensated_by: refund\n",
        "        compensated_by: refund\n"
        "        actions:\n"
        f"          duplicate_action: {{text: 'refund the second charge of {{key}}', webhook: '{url}',"
        f" after: {after}, max_attempts: 5}}\n",
        1,
    )
    model.write_text(text)
    return model


def config(tmp_path: Path, model: Path, **kw: object) -> ServeConfig:
    return ServeConfig(model=str(model), db=str(tmp_path / "actions.duckdb"), otlp_grpc="127.0.0.1:0", otlp_http=None,
                       api="127.0.0.1:0", tick_interval_s=3600, delivery_backoff_s=0.05,
                       app_url="http://ui:8501", **kw)  # type: ignore[arg-type]  # fmt: skip


def double_charge(service: Service, clock: ManualClock, key: str = "o-twice") -> None:
    emitter = Emitter(lambda: grpc_exporter(service.grpc_endpoint))
    emitter.emit(SCENARIOS["double-charge"](key), T0)
    emitter.shutdown()
    clock.set(T0 + 20 * SECOND)  # the duplicate is judged, then stays open 5 s (after) and more
    service.store.tick_now()


def deliveries(service: Service) -> list[tuple[object, ...]]:
    return query_live(service.store, "SELECT attempt, outcome, final, response_code FROM action_deliveries "
                                     "ORDER BY attempted_at, attempt")  # fmt: skip


def test_a_webhook_failing_twice_is_called_three_times_with_one_key_and_never_again(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    receiver.codes = [503, 503]
    model = model_with_webhook(tmp_path, receiver.url)
    clock = ManualClock(T0)
    with Service(config(tmp_path, model), clock=clock) as service:
        double_charge(service, clock)
        wait_until(lambda: len(deliveries(service)) == 3, what="three attempts recorded")
        [(aid, action)] = query_live(service.store, "SELECT anomaly_id, suggested_action FROM anomalies "
                                                    "WHERE kind = 'duplicate_action'")  # fmt: skip
        assert deliveries(service) == [(1, "failed", False, 503), (2, "failed", False, 503), (3, "sent", True, 200)]
        metrics = httpx.get(f"{service.api_url}/metrics").text
        assert 'coordstate_action_requests_total{outcome="failed"} 2' in metrics
        assert 'coordstate_action_requests_total{outcome="sent"} 1' in metrics
    assert [r.headers["idempotency-key"] for r in receiver.requests] == [aid] * 3
    assert [r.headers["x-coordstate-attempt"] for r in receiver.requests] == ["1", "2", "3"]
    body = receiver.requests[-1].body
    assert body["anomaly"]["id"] == aid
    assert body["anomaly"]["kind"] == "duplicate_action"
    assert body["anomaly"]["step"] == "payment"
    assert body["action"] == action == "refund the second charge of o-twice"
    assert body["instance"]["key"] == "o-twice"
    assert body["instance"]["status"] == "converged"
    assert body["instance"]["steps"]["payment"] == "completed"
    assert len(body["evidence"]) == 2
    assert body["links"]["instance"] == "http://ui:8501/instance?key=o-twice"

    clock = ManualClock(T0 + 30 * SECOND)  # a restart: the 2xx is remembered
    with Service(config(tmp_path, model), clock=clock) as service:
        assert service.actions is not None
        service.actions.wait_passes(3)
        assert len(deliveries(service)) == 3
    assert len(receiver.requests) == 3


def test_a_4xx_is_final_and_a_dry_run_sends_nothing(tmp_path: Path, receiver: WebhookReceiver) -> None:
    receiver.codes = [422]
    model = model_with_webhook(tmp_path, receiver.url)
    clock = ManualClock(T0)
    with Service(config(tmp_path, model), clock=clock) as service:
        double_charge(service, clock)
        wait_until(lambda: deliveries(service), what="the refused attempt recorded")
        assert service.actions is not None
        service.actions.wait_passes(3)
        assert deliveries(service) == [(1, "rejected", True, 422)]
        [(error,)] = query_live(service.store, "SELECT error FROM action_deliveries")
        assert error == "HTTP 422: the receiver refused the request; not retried"
    assert len(receiver.requests) == 1

    dry = tmp_path / "dry"
    dry.mkdir()
    clock = ManualClock(T0)
    with Service(config(dry, model, dry_run_actions=True), clock=clock) as service:
        double_charge(service, clock, "o-dry")
        wait_until(lambda: deliveries(service), what="the dry run recorded")
        assert deliveries(service) == [(0, "dry_run", True, None)]
    assert len(receiver.requests) == 1


def test_no_request_before_the_anomaly_stayed_open_after(tmp_path: Path, receiver: WebhookReceiver) -> None:
    model = model_with_webhook(tmp_path, receiver.url, after="1m")
    clock = ManualClock(T0)
    with Service(config(tmp_path, model), clock=clock) as service:
        double_charge(service, clock)
        assert service.actions is not None
        service.actions.wait_passes(3)
        assert receiver.requests == []
        clock.set(T0 + 61 * SECOND)
        wait_until(lambda: receiver.requests, what="the request once open a minute")
        assert len(receiver.requests) == 1


def test_a_bad_webhook_url_is_a_model_error_with_its_path(tmp_path: Path) -> None:
    model = model_with_webhook(tmp_path, "ftp://reconciler/refund")
    with pytest.raises(StartError) as err:
        Service(config(tmp_path, model))
    assert "workflows[0].steps[1].actions.duplicate_action" in str(err.value)
    assert "is not an http(s) URL" in str(err.value)


def test_anomalies_are_exported_as_otlp_log_records_linked_to_their_trace(tmp_path: Path) -> None:
    logs = LogsReceiver()
    try:
        clock = ManualClock(T0)
        cfg = config(tmp_path, ORDERS_MODEL, otlp_logs=logs.endpoint)
        with Service(cfg, clock=clock) as service:
            emitter = Emitter(lambda: grpc_exporter(service.grpc_endpoint))
            root = emitter.emit(SCENARIOS["lost-shipment"]("o-lost"), T0)
            clock.set(T0 + 40 * SECOND)  # past the 30 s deadline: the shipment is missing
            service.store.tick_now()
            opened = wait_until(lambda: [r for r in logs.records if attributes(r)["event.name"].endswith("opened")],
                                what="log records of the opened anomalies")  # fmt: skip
            emitter.emit_late(Order("o-lost", (), late=(S("shipping", "ShipOrder", 45.0, 45.5),)), T0, root)
            clock.set(T0 + 50 * SECOND)
            service.store.tick_now()
            resolved = wait_until(lambda: [r for r in logs.records if attributes(r)["event.name"].endswith("resolved")],
                                  what="log records of the resolutions")  # fmt: skip
            emitter.shutdown()
            stored = query_live(service.store, "SELECT anomaly_id, kind, evidence[1].trace_id FROM anomalies")
    finally:
        logs.stop()
    assert {attributes(r)["coordstate.anomaly.id"] for r in opened} == {aid for aid, _, _ in stored}
    assert {attributes(r)["coordstate.anomaly.id"] for r in resolved} == {aid for aid, _, _ in stored}
    first = next(r for r in opened if attributes(r)["coordstate.anomaly.kind"] == "missing_step")
    a = attributes(first)
    assert (a["coordstate.workflow"], a["coordstate.instance.key"], a["coordstate.step"]) == (
        "order",
        "o-lost",
        "shipment",
    )
    assert a["coordstate.suggested_action"]
    assert first.severity_text == "WARNING"
    assert first.body.string_value.startswith("order o-lost")
    assert first.trace_id.hex() == next(t for aid, k, t in stored if k == "missing_step")
    assert len(first.span_id) == 8
    assert set(logs.services) == {"coordstate"}
