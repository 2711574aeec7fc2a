"""Storage faults: a commit that fails (an injected fault at the store boundary, or a really full
disk on a tiny tmpfs) turns into retryable errors for the senders, loses nothing acknowledged, and
the server recovers by itself when space returns."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.sdk.trace.export import SpanExportResult

from collector.service import Service
from tests.conftest import query
from tests.otel_clients import encode, grpc_export, grpc_exporter, recorded_order
from tests.procs import ServerProcess
from tests.reliability.clients import RetryingOrders
from tests.reliability.report import record

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def disk_full() -> None:
    raise OSError(28, "No space left on device")


def test_injected_commit_failure_is_retryable_and_recovers(service: Service, db_path: Path) -> None:
    before, _ = recorded_order("order-before")
    assert grpc_exporter(service.grpc_endpoint).export(before) == SpanExportResult.SUCCESS
    service.store.fault = disk_full
    spans, _ = recorded_order("order-during")
    with pytest.raises(grpc.RpcError) as exc:
        grpc_export(service.grpc_endpoint, encode(spans))
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    status = status_pb2.Status.FromString(dict(exc.value.trailing_metadata())["grpc-status-details-bin"])
    assert status.details[0].Is(error_details_pb2.RetryInfo.DESCRIPTOR)
    r = httpx.post(
        f"{service.http_endpoint}/v1/traces",
        content=encode(spans).SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
    )
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    assert status_pb2.Status.FromString(r.content).code == code_pb2.UNAVAILABLE
    result: list[SpanExportResult] = []
    retrying = threading.Thread(
        target=lambda: result.append(grpc_exporter(service.grpc_endpoint, timeout=30).export(spans))
    )
    retrying.start()
    deadline = time.monotonic() + 30
    while service.telemetry.snapshot().counters.get("commit_failures", 0) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)  # polling: let the retrying client hit the fault again
    service.store.fault = None  # space returns
    retrying.join(timeout=60)
    assert result == [SpanExportResult.SUCCESS]
    failures = service.telemetry.snapshot().counters["commit_failures"]
    service.stop()
    assert query(db_path, "SELECT instance_key, status FROM instances ORDER BY 1") == [
        ("order-before", "converged"),
        ("order-during", "converged"),
    ]
    record("storage_fault_injected", commit_failures=failures, lost=0, recovered=True)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny"
    mount.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)], capture_output=True
        ).returncode
    ):
        pytest.skip("needs root to mount a tmpfs (the injected-fault test covers the same path)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_turns_into_retries_and_recovers(tiny_disk: Path) -> None:
    db = tiny_disk / "coordstate.duckdb"
    server = ServerProcess(db)
    client = RetryingOrders(server.grpc, "disk")
    filler = tiny_disk / "filler"
    try:
        client.start()
        time.sleep(1.0)  # traffic flows
        stat = os.statvfs(tiny_disk)
        filler.write_bytes(b"\0" * max(0, stat.f_bavail * stat.f_frsize - 64 * 1024))  # the disk fills up
        failures = 0.0
        deadline = time.monotonic() + 60
        while failures < 2 and time.monotonic() < deadline:
            metrics = httpx.get(f"{server.api}/metrics").text
            failures = float(
                next(
                    line.split()[-1]
                    for line in metrics.splitlines()
                    if line.startswith("coordstate_commit_failures_total")
                )
            )
            time.sleep(0.2)  # polling
        assert failures >= 2, "the full disk never failed a commit"
        acked_while_full = len(client.acked_keys)
        filler.unlink()  # space returns
        deadline = time.monotonic() + 60
        while len(client.acked_keys) < acked_while_full + 5 and time.monotonic() < deadline:
            time.sleep(0.1)  # polling: the server recovers by itself
        assert len(client.acked_keys) >= acked_while_full + 5
        client.finish()
        assert server.terminate() == 0
    finally:
        client.stop.set()
        if server.proc.poll() is None:
            server.kill()
    stored = {r[0] for r in query(db, "SELECT instance_key FROM instances")}
    record(
        "storage_fault_disk_full",
        commit_failures=int(failures),
        acknowledged_orders=len(client.acked_keys),
        lost=len(set(client.acked_keys) - stored),
        recovered=True,
    )
    assert set(client.acked_keys) <= stored
