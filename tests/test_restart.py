"""Restart and crash safety: what was acknowledged is in the database, whatever happens next."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export import SpanExportResult

from tests.conftest import query
from tests.otel_clients import grpc_exporter, http_exporter, recorded_order
from tests.procs import COORDSTATE, ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def test_sigkill_after_an_acknowledged_export_loses_nothing(db_path: Path) -> None:
    spans, trace_id = recorded_order("order-kill")
    with ServerProcess(db_path) as server:
        assert grpc_exporter(server.grpc).export(spans) == SpanExportResult.SUCCESS
        server.kill()
    assert query(db_path, "SELECT instance_key, status, trace_ids FROM instances") == [
        ("order-kill", "converged", [trace_id])
    ]
    assert query(db_path, "SELECT count(*) FROM transitions") == [(7,)]


def test_buffered_spans_survive_a_crash(db_path: Path) -> None:
    """Children arrive first and wait for the root's key; the server dies; the root arrives later."""
    spans, _ = recorded_order("order-buffered")
    root = [s for s in spans if s.name == "PlaceOrder"]
    children = [s for s in spans if s.name != "PlaceOrder"]
    with ServerProcess(db_path) as server:
        assert grpc_exporter(server.grpc).export(children) == SpanExportResult.SUCCESS
        server.kill()
    assert query(db_path, "SELECT count(*) FROM _pending") == [(3,)]
    with ServerProcess(db_path) as server:
        assert http_exporter(server.http).export(root) == SpanExportResult.SUCCESS
        assert server.terminate() == 0
        assert any("transitions written" in line for line in server.output)
    assert query(db_path, "SELECT instance_key, status FROM instances") == [("order-buffered", "converged")]
    assert query(db_path, "SELECT count(*) FROM _pending") == [(0,)]


def test_sigterm_stops_cleanly_with_exit_zero(db_path: Path) -> None:
    with ServerProcess(db_path) as server:
        spans, _ = recorded_order("order-term")
        assert grpc_exporter(server.grpc).export(spans) == SpanExportResult.SUCCESS
        assert server.terminate() == 0
    assert "coordstate stopped: 4 spans received, 7 transitions written." in server.output


def test_second_process_on_the_same_database_fails_clearly(db_path: Path) -> None:
    with ServerProcess(db_path):
        result = subprocess.run(
            [
                COORDSTATE,
                "serve",
                "--db",
                str(db_path),
                "--otlp-grpc",
                "127.0.0.1:0",
                "--otlp-http",
                "127.0.0.1:0",
                "--api",
                "127.0.0.1:0",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert "cannot open the database" in result.stderr
    assert "Is another coordstate serving it? Stop it, or pass another --db" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_model_fails_fast_with_exit_2(tmp_path: Path) -> None:
    model = tmp_path / "bad.yaml"
    model.write_text('file_format: "1"\nworkflows: []\n')
    result = subprocess.run(
        [COORDSTATE, "serve", "--model", str(model), "--db", str(tmp_path / "x.duckdb")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "workflows: declare at least one workflow" in result.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["--db", "{tmp}/missing/x.duckdb"],
            1,
            "cannot open the database {tmp}/missing/x.duckdb: the directory {tmp}/missing does not exist; "
            "create it, or pass another --db",
        ),
        (
            ["--db", "{tmp}"],
            1,
            "cannot open the database {tmp}: it is a directory; pass a file, e.g. --db {tmp}/coordstate.duckdb",
        ),
        # grpc would bind 99999 - 65536 = 34463 without a word
        (["--otlp-grpc", "127.0.0.1:99999"], 2, "argument --otlp-grpc: expected HOST:PORT with a port from 0 to 65535"),
        (["--otlp-http", "localhost"], 2, "argument --otlp-http: expected HOST:PORT"),
        (["--api", "::1:4329"], 2, "argument --api: expected HOST:PORT"),
    ],
)
def test_bad_serve_arguments_fail_fast_and_say_how_to_fix(
    tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    given = [a.format(tmp=tmp_path) for a in args]
    options = {"--db": str(tmp_path / "x.duckdb"), "--otlp-grpc": "127.0.0.1:0", "--otlp-http": "127.0.0.1:0"}
    options |= {"--api": "127.0.0.1:0", **dict(zip(given[::2], given[1::2], strict=True))}
    argv = [part for option in options.items() for part in option]
    result = subprocess.run([COORDSTATE, "serve", *argv], capture_output=True, text=True, timeout=60)
    assert result.returncode == code
    assert message.format(tmp=tmp_path) in result.stderr
    assert "Traceback" not in result.stderr
