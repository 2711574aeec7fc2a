"""Security: TLS and bearer tokens on every listener, the query sandbox's limits, the attribute
allowlist (nothing the model does not read is ever stored), loopback by default."""

from __future__ import annotations

import ssl
from pathlib import Path

import duckdb
import grpc
import httpx
import pytest
import trustme
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from collector.service import ServeConfig, Service
from tests.helpers import ORDERS_MODEL
from tests.otel_clients import Recording, encode, grpc_export, http_exporter, recorded_order
from tests.reliability.report import record

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

SECRETS = {"user.email": "alice@example.com", "app.payment.card_number": "4111111111111111"}


def config(db: Path, **kw: object) -> ServeConfig:
    base = {
        "model": str(ORDERS_MODEL),
        "db": str(db),
        "otlp_grpc": "127.0.0.1:0",
        "otlp_http": "127.0.0.1:0",
        "api": "127.0.0.1:0",
    }
    return ServeConfig(**{**base, **kw})  # type: ignore[arg-type]


@pytest.fixture
def tls(tmp_path: Path) -> tuple[Path, Path, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = (tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem")
    ca.cert_pem.write_to_path(str(paths[0]))
    cert.private_key_and_cert_chain_pem.write_to_path(str(paths[1]))
    cert.private_key_pem.write_to_path(str(paths[2]))
    return paths


def test_tls_on_grpc_http_and_the_api(tmp_path: Path, tls: tuple[Path, Path, Path]) -> None:
    ca, cert, key = tls
    with Service(config(tmp_path / "tls.duckdb", tls_cert=str(cert), tls_key=str(key))) as svc:
        creds = grpc.ssl_channel_credentials(ca.read_bytes())
        spans, _ = recorded_order("order-tls")
        assert OTLPSpanExporter(endpoint=svc.grpc_endpoint, credentials=creds).export(spans) == SpanExportResult.SUCCESS
        with pytest.raises(grpc.RpcError):  # plaintext is refused
            grpc_export(svc.grpc_endpoint, encode(spans), timeout=3)
        assert svc.http_endpoint.startswith("https://")
        r = httpx.post(
            f"{svc.http_endpoint}/v1/traces",
            content=encode(spans).SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
            verify=ssl.create_default_context(cafile=str(ca)),
        )
        assert r.status_code == 200
        q = httpx.post(
            f"{svc.api_url}/api/v1/query",
            json={"sql": "SELECT status FROM instances"},
            verify=ssl.create_default_context(cafile=str(ca)),
        )
        assert q.json()["rows"] == [["converged"]]
        with pytest.raises(httpx.ConnectError):  # an untrusted certificate is refused by clients
            httpx.get(f"{svc.api_url}/healthz")


def test_bearer_token_on_otlp_http(tmp_path: Path) -> None:
    with Service(config(tmp_path / "t.duckdb", token="s3cret")) as svc:
        spans, _ = recorded_order("order-tok")
        body = encode(spans).SerializeToString()
        ctype = {"Content-Type": "application/x-protobuf"}
        assert httpx.post(f"{svc.http_endpoint}/v1/traces", content=body, headers=ctype).status_code == 401
        ok = httpx.post(
            f"{svc.http_endpoint}/v1/traces", content=body, headers={**ctype, "Authorization": "Bearer s3cret"}
        )
        assert ok.status_code == 200
        assert (
            http_exporter(svc.http_endpoint, headers={"authorization": "Bearer s3cret"}).export(spans)
            == SpanExportResult.SUCCESS
        )


def leaky_order(order_id: str, *, with_root: bool = True) -> list[object]:
    """An order whose every span — and every resource — carries personal data."""
    from opentelemetry import trace as otel_trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    rec = Recording()
    providers = {}
    for service in ("checkout", "payment"):
        providers[service] = TracerProvider(resource=Resource.create({"service.name": service, **SECRETS}))
        providers[service].add_span_processor(SimpleSpanProcessor(rec))
    root = providers["checkout"].get_tracer("t").start_span("PlaceOrder", attributes=SECRETS)
    charge = (
        providers["payment"]
        .get_tracer("t")
        .start_span("Charge", context=otel_trace.set_span_in_context(root), attributes=SECRETS)
    )
    charge.add_event("charged", SECRETS)
    charge.end()
    root.set_attribute("app.order.id", order_id)
    root.end()
    for p in providers.values():
        p.shutdown()
    return [s for s in rec.spans if with_root or s.name != "PlaceOrder"]


def test_attributes_the_model_does_not_read_never_reach_the_database(tmp_path: Path) -> None:
    db = tmp_path / "pii.duckdb"
    with Service(config(db)) as svc:
        assert not grpc_export(svc.grpc_endpoint, encode(leaky_order("order-pii"))).HasField("partial_success")  # type: ignore[arg-type]
        grpc_export(svc.grpc_endpoint, encode(leaky_order("order-pii-2", with_root=False)))  # type: ignore[arg-type]
        assert svc.store.pending_count == 1  # a span waiting for its key is persisted too
    con = duckdb.connect(str(db), read_only=True)
    try:
        tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
        dump = "".join(str(con.execute(f'SELECT * FROM "{t}"').fetchall()) for t in tables)
        keys = con.execute("SELECT DISTINCT unnest(map_keys(attributes)) FROM spans").fetchall()
    finally:
        con.close()
    assert "_pending" in tables
    assert "order-pii" in dump
    for name, value in SECRETS.items():
        assert value not in dump, f"{name} reached the database"
    assert keys == [("app.order.id",)]
    raw = db.read_bytes()
    assert all(v.encode() not in raw for v in SECRETS.values())
    record("allowlist", secrets_sent=len(SECRETS), secrets_stored=0)


def test_query_memory_limit(tmp_path: Path) -> None:
    with Service(config(tmp_path / "m.duckdb", memory_limit="64MB")) as svc:
        r = httpx.post(
            f"{svc.api_url}/api/v1/query", json={"sql": "SELECT list(range) FROM range(200000000)"}, timeout=60
        )
        assert r.status_code == 422, r.text
        assert "needs more memory than coordstate allows" in r.json()["error"]["message"]
        spans, _ = recorded_order("order-after-oom")  # ingest is fine afterwards
        assert not grpc_export(svc.grpc_endpoint, encode(spans)).HasField("partial_success")
        ok = httpx.post(f"{svc.api_url}/api/v1/query", json={"sql": "SELECT count(*) FROM instances"})
        assert ok.json()["rows"] == [[1]]


def test_every_listener_binds_loopback_by_default() -> None:
    defaults = ServeConfig()
    for address in (defaults.otlp_grpc, defaults.otlp_http, defaults.api):
        assert address is not None
        assert address.startswith("127.0.0.1:")
    record("loopback", listeners=3, default="127.0.0.1")
