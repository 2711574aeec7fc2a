"""The read-only query API: results in JSON and Arrow, the sandbox, limits, token, health, metrics."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
from opentelemetry.sdk.trace.export import SpanExportResult

from collector.service import ServeConfig, Service
from tests.helpers import ORDERS_MODEL
from tests.otel_clients import grpc_exporter, recorded_order
from tests.procs import COORDSTATE, ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


@pytest.fixture
def api(db_path: Path) -> Iterator[Service]:
    config = ServeConfig(
        api="127.0.0.1:0", model=str(ORDERS_MODEL), db=str(db_path), otlp_grpc="127.0.0.1:0", otlp_http=None,
        query_timeout_s=1.0, query_max_rows=50,
    )  # fmt: skip
    with Service(config) as svc:
        for i in range(3):
            spans, _ = recorded_order(f"order-{i}", fail_payment=i == 2)
            assert grpc_exporter(svc.grpc_endpoint).export(spans) == SpanExportResult.SUCCESS
        yield svc


def post(svc: Service, sql: str, **headers: str) -> httpx.Response:
    return httpx.post(f"{svc.api_url}/api/v1/query", json={"sql": sql}, headers=headers, timeout=30)


def test_json_result(api: Service) -> None:
    response = post(api, "SELECT instance_key, status, steps['payment'] AS payment FROM instances ORDER BY 1")
    assert response.status_code == 200
    body = response.json()
    assert body["columns"] == ["instance_key", "status", "payment"]
    assert body["rows"] == [
        ["order-0", "converged", "completed"],
        ["order-1", "converged", "completed"],
        ["order-2", "failed", "failed"],
    ]
    assert body["truncated"] is False


def test_arrow_result(api: Service) -> None:
    response = post(
        api,
        "SELECT kind FROM anomalies UNION ALL SELECT status FROM instances",
        accept="application/vnd.apache.arrow.stream",
    )
    assert response.headers["content-type"] == "application/vnd.apache.arrow.stream"
    table = pa.ipc.open_stream(response.content).read_all()
    assert table.num_rows == 3
    assert table.column_names == ["kind"]


def test_sql_as_plain_text(api: Service) -> None:
    response = httpx.post(
        f"{api.api_url}/api/v1/query",
        content="SELECT 41 + 1 AS answer",
        headers={"content-type": "text/plain"},
    )
    assert response.json()["rows"] == [[42]]


def test_bad_sql_is_400_with_duckdb_message(api: Service) -> None:
    response = post(api, "SELECT nope FROM instances")
    assert response.status_code == 400
    assert 'Referenced column "nope" not found' in response.json()["error"]["message"]


REFUSED = [
    "INSERT INTO transitions SELECT * FROM transitions",
    "UPDATE instances SET status = 'converged'",
    "DELETE FROM anomalies",
    "CREATE TABLE x AS SELECT 1",
    "DROP TABLE spans",
    "ALTER TABLE spans ADD COLUMN x INT",
    "COPY instances TO '/tmp/out.csv'",
    "ATTACH '/tmp/other.duckdb'",
    "INSTALL httpfs",
    "LOAD httpfs",
    "PRAGMA database_list",
    "SET memory_limit = '1TB'",
    "CALL pragma_version()",
    "EXPORT DATABASE '/tmp/dump'",
    "CHECKPOINT",
    "SELECT 1; SELECT 2",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM read_parquet('http://127.0.0.1:1/x.parquet')",
]


@pytest.mark.parametrize("sql", REFUSED)
def test_everything_but_a_read_only_select_is_refused(api: Service, sql: str) -> None:
    response = post(api, sql)
    assert response.status_code in (400, 403), response.text
    message = response.json()["error"]["message"]
    assert message
    if response.status_code == 400:  # refused by DuckDB itself: no such table, or no file access
        assert any(s in message for s in ("does not exist", "disabled", "Permission")), message
    assert post(api, "SELECT count(*) FROM instances").json()["rows"] == [[3]]  # nothing changed


def test_write_statements_are_403_with_a_clear_message(api: Service) -> None:
    response = post(api, "DELETE FROM anomalies")
    assert response.status_code == 403
    assert response.json()["error"]["message"] == (
        "DELETE statements are refused: the query API is read-only (SELECT and WITH … SELECT only)"
    )


def test_a_long_query_is_cut_by_the_timeout(api: Service) -> None:
    response = post(api, "SELECT count(*) FROM range(1000000) a, range(1000000) b WHERE a.range + b.range = 7")
    assert response.status_code == 408
    assert "ran longer than 1s and was stopped" in response.json()["error"]["message"]
    assert post(api, "SELECT 1").status_code == 200  # the server is fine afterwards


def test_row_cap(api: Service) -> None:
    response = post(api, "SELECT * FROM range(1000)")
    body = response.json()
    assert len(body["rows"]) == 50
    assert body["truncated"] is True
    assert response.headers["x-coordstate-truncated"] == "true"


def test_healthz_and_metrics(api: Service) -> None:
    assert httpx.get(f"{api.api_url}/healthz").json() == {"status": "ok"}
    text = httpx.get(f"{api.api_url}/metrics").text
    assert "coordstate_spans_received_total 10" in text  # 4 + 4 + 2 (the declined order stops at payment)
    assert 'coordstate_spans_rejected_total{reason="end_before_start"} 0' in text
    # every reason the decoder can give is a series, including the two the list once lacked
    assert 'coordstate_spans_rejected_total{reason="invalid_span"} 0' in text
    assert 'coordstate_spans_rejected_total{reason="invalid_attribute"} 0' in text
    assert 'coordstate_instances{status="converged"} 2' in text
    assert 'coordstate_instances{status="failed"} 1' in text
    assert 'coordstate_instances{status="compensated"} 0' in text
    assert 'coordstate_open_anomalies{kind="stalled",severity="warning"} 0' in text
    assert "coordstate_transitions_written_total 18" in text
    assert "# TYPE coordstate_commit_latency_seconds gauge" in text


def test_token_is_enforced_on_the_api(db_path: Path) -> None:
    config = ServeConfig(
        api="127.0.0.1:0",
        model=str(ORDERS_MODEL),
        db=str(db_path),
        otlp_grpc=None,
        otlp_http=None,
        token="t0k",
    )
    with Service(config) as svc:
        assert post(svc, "SELECT 1").status_code == 401
        assert post(svc, "SELECT 1", authorization="Bearer wrong").status_code == 401
        assert post(svc, "SELECT 1", authorization="Bearer t0k").json()["rows"] == [[1]]
        assert httpx.get(f"{svc.api_url}/healthz").status_code == 200  # health stays open for probes


def test_non_loopback_without_token_warns(db_path: Path) -> None:
    config = ServeConfig(
        model=str(ORDERS_MODEL),
        db=str(db_path),
        otlp_grpc="0.0.0.0:4327",
        otlp_http="127.0.0.1:4328",
        api="[::]:4329",
    )
    warnings = Service(config)._exposure_warnings()
    assert len(warnings) == 2
    assert warnings[0].startswith("--otlp-grpc 0.0.0.0:4327 is reachable from the network and no token is set")
    assert (
        Service(
            ServeConfig(model=str(ORDERS_MODEL), db=str(db_path), otlp_grpc="0.0.0.0:1", token="x")
        )._exposure_warnings()
        == []
    )


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([COORDSTATE, "query", *args], capture_output=True, text=True, timeout=60)


def test_coordstate_query_live_then_from_the_file(db_path: Path) -> None:
    with ServerProcess(db_path) as server:
        spans, _ = recorded_order("order-cli")
        assert grpc_exporter(server.grpc).export(spans) == SpanExportResult.SUCCESS
        live = run_cli("--api", server.api, "SELECT kind, count(*) FROM anomalies GROUP BY kind")
        assert live.returncode == 0, live.stderr
        assert live.stdout.splitlines() == ["kind  count_star()", "----  ------------", "(0 rows)"]
        table = run_cli("--api", server.api, "SELECT instance_key, status FROM instances")
        assert table.stdout.splitlines()[2] == "order-cli     converged"
        locked = run_cli("--db", str(db_path), "SELECT 1")
        assert locked.returncode == 1
        assert "is held by a running coordstate server; query it through its API" in locked.stderr
        refused = run_cli("--api", server.api, "DROP TABLE spans")
        assert refused.returncode == 2
        assert "DROP statements are refused" in refused.stderr
        assert server.terminate() == 0
    offline = run_cli("--db", str(db_path), "--format", "csv", "SELECT instance_key, status FROM instances")
    assert offline.stdout.splitlines() == ["instance_key,status", "order-cli,converged"]
    raw = subprocess.run([COORDSTATE, "query", "--db", str(db_path), "--format", "csv", "SELECT instance_key FROM instances"],
                         capture_output=True, timeout=60)  # fmt: skip
    assert raw.stdout == b"instance_key\norder-cli\n"  # LF, as DuckDB's own CLI: CRLF breaks shell pipelines
    as_json = run_cli("--db", str(db_path), "--format", "json", "SELECT instance_key, steps FROM instances")
    assert as_json.stdout.startswith('{"instance_key": "order-cli", "steps": {"checkout": "completed"')


def test_coordstate_query_without_a_server(tmp_path: Path) -> None:
    result = run_cli("--api", "http://127.0.0.1:9", "SELECT 1")
    assert result.returncode == 1
    assert "query API at http://127.0.0.1:9 is not answering" in result.stderr
    assert "is `coordstate serve` running?" in result.stderr


def test_serve_restarts_on_its_ports_right_after_api_queries(db_path: Path) -> None:
    """Closed API connections linger in TIME_WAIT; without SO_REUSEADDR the restart could not bind
    for up to a minute. A port another server listens on must still be refused."""
    with ServerProcess(db_path) as first:
        for _ in range(5):
            assert run_cli("--api", first.api, "SELECT count(*) FROM instances").returncode == 0
        ports = ["--otlp-grpc", first.grpc, "--otlp-http", first.http.removeprefix("http://"),
                 "--api", first.api.removeprefix("http://")]  # fmt: skip
        assert first.terminate() == 0
    with ServerProcess(db_path, *ports) as again:
        assert again.api == first.api
        assert run_cli("--api", again.api, "SELECT count(*) FROM instances").stdout.splitlines()[2].strip() == "0"
        second = subprocess.run(
            [COORDSTATE, "serve", "--db", str(db_path.with_name("other.duckdb")), "--otlp-grpc", "127.0.0.1:0",
             "--otlp-http", "127.0.0.1:0", "--api", again.api.removeprefix("http://")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert second.returncode == 1
        assert f"query API cannot listen on {again.api.removeprefix('http://')}: " in second.stderr
        assert again.terminate() == 0
