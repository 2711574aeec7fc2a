"""Overload: a load generator at 3× the measured capacity (10 s in `make test`, 60 s in `make soak`).
Memory stays under the bound, the server answers UNAVAILABLE+RetryInfo / 429+Retry-After, never
dies, and a retrying client loses nothing."""

from __future__ import annotations

import importlib.util
import re
import threading
from pathlib import Path

import httpx
import pytest

from tests.conftest import query
from tests.helpers import ROOT
from tests.procs import ServerProcess
from tests.reliability.clients import RetryingOrders
from tests.reliability.loadgen import closed_loop, open_loop
from tests.reliability.report import SOAK, record

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

SECONDS = 60 if SOAK else 10
INFLIGHT_MB = 8
MEMORY_LIMIT_MB = 256
RSS_BOUND_MB = 900  # DuckDB's limit + Python, gRPC and Arrow runtime + decode buffers of the in-flight bound


def bench() -> object:
    spec = importlib.util.spec_from_file_location("bench_ingest", ROOT / "bench" / "ingest.py")
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def measure_capacity(endpoint: str, payloads: list[bytes], seconds: float = 3.0) -> float:
    """Committed spans/s with closed-loop senders (each waits for its answer)."""
    answers = closed_loop(endpoint, payloads, seconds)
    return answers["ok"] * 1000 / seconds


def rss_mb(pid: int, field: str = "VmHWM") -> float:
    found = re.search(rf"{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    assert found
    return int(found.group(1)) / 1024


def test_three_times_capacity(tmp_path: Path) -> None:
    b = bench()
    payloads = [b.build_request(seed, 1000) for seed in range(12)]  # type: ignore[attr-defined]
    db = tmp_path / "overload.duckdb"
    server = ServerProcess(db, "--max-inflight-mb", str(INFLIGHT_MB), "--memory-limit", f"{MEMORY_LIMIT_MB}MB")
    careful = RetryingOrders(server.grpc, "careful")  # a retrying client that must lose nothing
    stop = threading.Event()

    try:
        warm = open_loop(server.grpc, payloads, 20, 3.0, processes=1)  # warm-up
        assert warm["ok"] > 0
        capacity = measure_capacity(server.grpc, payloads)
        careful.start()
        http_codes: dict[int, int] = {}

        def http_probe() -> None:
            body = payloads[0]
            while not stop.is_set():
                r = httpx.post(
                    f"{server.http}/v1/traces",
                    content=body,
                    headers={"Content-Type": "application/x-protobuf"},
                    timeout=60,
                )
                http_codes[r.status_code] = http_codes.get(r.status_code, 0) + 1
                if r.status_code == 429:
                    assert r.headers["retry-after"] == "1"

        probe = threading.Thread(target=http_probe, daemon=True)
        probe.start()
        answers = open_loop(server.grpc, payloads, 3 * capacity / 1000, float(SECONDS))
        refused = answers["UNAVAILABLE+RetryInfo"]
        offered = answers["ok"] * 1000 / SECONDS
        stop.set()
        careful.finish()
        probe.join(timeout=120)
        peak = rss_mb(server.proc.pid)
        alive = server.proc.poll() is None
        code = server.terminate()
    finally:
        stop.set()
        careful.stop.set()
        if server.proc.poll() is None:
            server.kill()
    stored = {r[0] for r in query(db, "SELECT instance_key FROM instances WHERE instance_key LIKE 'careful-%'")}
    record(
        "overload",
        seconds=SECONDS,
        capacity_spans_s=round(capacity),
        offered_spans_s=round(3 * capacity),
        accepted_spans_s=round(offered),
        answers=dict(answers),
        http=http_codes,
        peak_rss_mb=round(peak),
        bound_mb=RSS_BOUND_MB,
        careful_orders=len(careful.acked_keys),
        lost=len(set(careful.acked_keys) - stored),
    )
    assert alive
    assert code == 0
    assert refused > 0  # the generator was told to back off (UNAVAILABLE + RetryInfo)
    assert set(answers) <= {"ok", "UNAVAILABLE+RetryInfo"}  # no other error, never an UNAVAILABLE without RetryInfo
    assert http_codes.get(429, 0) + http_codes.get(200, 0) == sum(http_codes.values())
    assert peak < RSS_BOUND_MB
    assert careful.acked_keys
    assert set(careful.acked_keys) <= stored
