"""Hostile input never crashes or hangs anything: every decoder, the model loader and the query
sandbox answer bad input with their own clear error, and nothing already accepted is lost."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import duckdb
import grpc
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from analytics.read.sandbox import QueryError, run_query
from analytics.write.schema import migrate
from collector import wire
from collector.decode import PayloadError, decode_request, parse_json, parse_protobuf, to_json
from collector.service import Service
from processors.model import ModelError, parse_model
from tests.conftest import query
from tests.helpers import ORDERS_MODEL, compiled_orders
from tests.otel_clients import encode, grpc_export, recorded_order
from tests.reliability.report import SOAK, record

MODEL = compiled_orders()
EXAMPLES = 400 if SOAK else 60
VALID = encode(recorded_order("order-valid")[0]).SerializeToString()
VALID_JSON = json.dumps(to_json(ExportTraceServiceRequest.FromString(VALID)))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(parse: Callable[[bytes], ExportTraceServiceRequest], payload: bytes) -> str:
    """``refused`` (the decoder's own PayloadError, with its message) or ``decoded`` (every span
    counted as kept, rejected or unmatched) — any other exception fails the test."""
    try:
        request = parse(payload)
    except PayloadError as exc:
        assert str(exc)  # a message that says what is wrong
        return "refused"
    decoded = decode_request(request, MODEL)
    assert decoded.received == len(decoded.records) + decoded.rejected_count + decoded.unmatched
    return "decoded"


mutation = st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=12)


@SETTINGS
@given(mutation, st.integers(0, len(VALID)))
def test_mutated_protobuf(flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(VALID)
    for pos, value in flips:
        data[pos] = value
    assert outcome(parse_protobuf, bytes(data[:cut])) in {"refused", "decoded"}


@SETTINGS
@given(st.binary(max_size=2048))
def test_random_bytes_as_protobuf(payload: bytes) -> None:
    assert outcome(parse_protobuf, payload) in {"refused", "decoded"}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=30,
)


@SETTINGS
@given(json_values)
def test_random_json(value: object) -> None:
    assert outcome(parse_json, json.dumps(value).encode()) in {"refused", "decoded"}


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, len(VALID_JSON) - 1), st.characters()), max_size=8))
def test_mutated_json(edits: list[tuple[int, str]]) -> None:
    text = list(VALID_JSON)
    for pos, ch in edits:
        text[pos] = ch
    assert outcome(parse_json, "".join(text).encode("utf-8", errors="surrogatepass")) in {"refused", "decoded"}


def test_invalid_utf8_and_non_hex_ids_are_refused() -> None:
    with pytest.raises(PayloadError):
        parse_json(b'{"resourceSpans": [\xff\xfe]}')
    bad = VALID_JSON.replace('"traceId": "', '"traceId": "zz', 1)
    decoded = decode_request(parse_json(bad), MODEL)
    assert decoded.rejected == {"invalid_trace_id": 1}


def test_deep_nesting_is_never_recursed_into() -> None:
    """Attributes stay encoded until the model reads them, and a nested value (kvlist, array) is
    never parsed at all: a 300-deep value is neither a crash nor a reason to refuse the request."""
    value = AnyValue(string_value="leaf")
    for _ in range(300):
        outer = AnyValue()
        kv = outer.kvlist_value.values.add()
        kv.key = "k"
        kv.value.CopyFrom(value)
        value = outer
    request = ExportTraceServiceRequest.FromString(VALID)
    expected = decode_request(request, MODEL)
    for name in ("deep", "app.order.id"):
        attr = request.resource_spans[0].scope_spans[0].spans[0].attributes.add()
        attr.key = name
        attr.value.CopyFrom(value)
    assert outcome(parse_protobuf, request.SerializeToString()) == "decoded"
    decoded = decode_request(parse_protobuf(request.SerializeToString()), MODEL)
    assert [r.span_id for r in decoded.records] == [r.span_id for r in expected.records]
    assert decoded.rejected_count == 0


def test_a_malformed_projected_attribute_rejects_its_span_only() -> None:
    request = ExportTraceServiceRequest.FromString(VALID)
    expected = decode_request(request, MODEL)
    lean = wire.Request.FromString(VALID)
    scope = wire.ScopeSpans.FromString(lean.resource_spans[0].scope_spans[0])
    victim = scope.spans[0]
    # app.order.id whose string value is not UTF-8: only parsed because the model reads that key
    victim.attributes.append(wire.key_prefix("app.order.id") + b"\x12\x03\x0a\x01\xff")
    lean.resource_spans[0].scope_spans[0] = scope.SerializeToString()
    decoded = decode_request(parse_protobuf(lean.SerializeToString()), MODEL)
    assert decoded.rejected == {"invalid_attribute": 1}
    assert f"span {victim.name!r}: an attribute is not a valid KeyValue" in decoded.error_message()
    assert len(decoded.records) == len(expected.records) - 1


def test_timestamps_at_zero_and_the_top_of_uint64() -> None:
    request = ExportTraceServiceRequest.FromString(VALID)
    spans = request.resource_spans[0].scope_spans[0].spans
    spans[0].start_time_unix_nano = 0
    spans[0].end_time_unix_nano = 2**64 - 1
    decoded = decode_request(request, MODEL)
    assert decoded.rejected == {"missing_start_time": 1}
    spans[0].start_time_unix_nano = 1
    decoded = decode_request(request, MODEL)
    assert decoded.rejected == {"time_out_of_range": 1}


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.text(max_size=600))
def test_random_model_text(text: str) -> None:
    try:
        parse_model(text, "fuzz.yaml")
    except ModelError as exc:
        assert exc.problems
        assert all(str(p) for p in exc.problems)


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2000), st.characters(blacklist_categories=("Cs",))), max_size=6))
def test_mutated_model_yaml(edits: list[tuple[int, str]]) -> None:
    text = list(ORDERS_MODEL.read_text())
    for pos, ch in edits:
        text[pos % len(text)] = ch
    try:
        parse_model("".join(text), "fuzz.yaml")
    except ModelError as exc:
        assert exc.problems


@pytest.fixture(scope="module")
def sandbox_db(tmp_path_factory: pytest.TempPathFactory) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(tmp_path_factory.mktemp("sql") / "s.duckdb"))
    migrate(con)
    con.execute(
        "INSERT INTO instances VALUES ('order', 'o-1', 'converged', MAP {}, now()::TIMESTAMP, now()::TIMESTAMP, NULL, 0, [], NULL)"
    )
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


SQL_WORDS = ["SELECT", "*", "FROM", "instances", "DROP", "TABLE", "COPY", "TO", "'/tmp/x'", ";", "ATTACH", "read_csv('/etc/passwd')", "INSERT", "INTO", "VALUES", "(1)", "PRAGMA", "SET", "threads=1", "WITH", "x", "AS", "(SELECT 1)", "--", "/*", "*/", "UNION", "ALL", "range(10)", "CALL", "INSTALL", "httpfs"]  # fmt: skip


@SETTINGS
@given(st.lists(st.sampled_from(SQL_WORDS), min_size=1, max_size=10) | st.text(max_size=80).map(lambda t: [t]))
def test_hostile_sql_is_refused_or_read_only(sandbox_db: duckdb.DuckDBPyConnection, words: list[str]) -> None:
    try:
        run_query(sandbox_db.cursor, " ".join(words), timeout_s=2)
    except QueryError as exc:
        assert str(exc)
    assert sandbox_db.execute("SELECT count(*) FROM instances").fetchall() == [(1,)]


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_live_server_survives_hostile_requests(service: Service, db_path: Path) -> None:
    spans, _ = recorded_order("order-before")
    assert not grpc_export(service.grpc_endpoint, encode(spans)).HasField("partial_success")
    statuses: dict[str, int] = {}
    huge = ExportTraceServiceRequest.FromString(VALID)
    sp = huge.resource_spans[0].scope_spans[0].spans[0]
    sp.name = "x" * (8 * 1024 * 1024)
    for i in range(100_000):
        kv = sp.attributes.add()
        kv.key = f"a{i}"
        kv.value.int_value = i
    payloads = [bytes(b ^ 0x5A for b in VALID[:300]), VALID[:-7], huge.SerializeToString(), b"\x0a" * 1000]
    for payload in payloads:
        try:
            with grpc.insecure_channel(
                service.grpc_endpoint, options=[("grpc.max_send_message_length", 64 << 20)]
            ) as ch:
                ch.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")(payload, timeout=30)
            statuses["grpc ok"] = statuses.get("grpc ok", 0) + 1
        except grpc.RpcError as exc:
            assert exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), exc
            statuses[exc.code().name] = statuses.get(exc.code().name, 0) + 1
        r = httpx.post(
            f"{service.http_endpoint}/v1/traces",
            content=payload,
            headers={"Content-Type": "application/x-protobuf"},
            timeout=60,
        )
        assert r.status_code in (200, 400, 413), r.text
        statuses[f"http {r.status_code}"] = statuses.get(f"http {r.status_code}", 0) + 1
    after, _ = recorded_order("order-after")
    assert not grpc_export(service.grpc_endpoint, encode(after)).HasField("partial_success")
    service.stop()
    rows = dict(query(db_path, "SELECT instance_key, status FROM instances"))
    assert rows["order-before"] == "converged"  # accepted before the attack: still there
    assert rows["order-after"] == "converged"  # and the server still works after it
    assert statuses.get("http 400", 0) >= 2
    record("hostile", payloads=len(payloads), crashes=0, statuses=statuses)


def test_a_key_attribute_is_found_whatever_the_field_order() -> None:
    """Encoders write a KeyValue's key first; one that writes the value first still has its
    business key found, on a span that matches no step (its trace's other spans need the key)."""
    lean = wire.Request.FromString(VALID)
    scope = wire.ScopeSpans.FromString(lean.resource_spans[0].scope_spans[0])
    carrier = scope.spans.add()
    carrier.CopyFrom(scope.spans[0])
    carrier.span_id = bytes.fromhex("00000000000000aa")
    carrier.name = "not a step"
    del carrier.attributes[:]
    value_first = b"\x12\x0b\x0a\x09order-vf1" + wire.key_prefix("app.order.id")
    carrier.attributes.append(value_first)
    lean.resource_spans[0].scope_spans[0] = scope.SerializeToString()
    decoded = decode_request(parse_protobuf(lean.SerializeToString()), MODEL)
    found = [r for r in decoded.records if r.span_id == "00000000000000aa"]
    assert [r.attributes for r in found] == [{"app.order.id": "order-vf1"}]
