"""Decoder processes: requests are decoded outside the server process, a decoder that dies
costs a retry and never a span, and bad settings fail at start-up with a clear message."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from collector.service import ServeConfig, Service, StartError
from tests.conftest import query
from tests.helpers import ORDERS_MODEL
from tests.otel_clients import encode, grpc_export, recorded_order

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def pooled(db_path: Path) -> Iterator[Service]:
    svc = Service(
        ServeConfig(model=str(ORDERS_MODEL), db=str(db_path), otlp_grpc="127.0.0.1:0", otlp_http=None, decode_workers=2)
    )
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()


def export_until_accepted(endpoint: str, key: str, deadline_s: float = 30.0) -> int:
    """Export one order, retrying UNAVAILABLE as an OTLP client does; return the retries."""
    request = encode(recorded_order(key)[0])
    retries = 0
    give_up = time.monotonic() + deadline_s
    while True:
        try:
            grpc_export(endpoint, request)
            return retries
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > give_up:
                raise
            retries += 1


def test_requests_are_decoded_in_worker_processes(pooled: Service, db_path: Path) -> None:
    pids = pooled.decoders.worker_pids()
    assert len(pids) == 2
    assert os.getpid() not in pids
    assert export_until_accepted(pooled.grpc_endpoint, "order-pooled") == 0
    pooled.stop()
    rows = query(db_path, "SELECT status, steps['shipment'] FROM instances WHERE instance_key = 'order-pooled'")
    assert rows == [("converged", "completed")]


def test_a_decoder_that_dies_costs_a_retry_not_a_span(pooled: Service, db_path: Path) -> None:
    assert export_until_accepted(pooled.grpc_endpoint, "order-before") == 0
    victims = pooled.decoders.worker_pids()
    os.kill(victims[0], signal.SIGKILL)
    # the pool notices the death on its own thread: a request may still finish on the survivor
    # before it does, so the retry falls on this export or the next one (seen under load)
    retries = export_until_accepted(pooled.grpc_endpoint, "order-after")
    retries += export_until_accepted(pooled.grpc_endpoint, "order-later")
    assert retries <= 2
    survivors = pooled.decoders.worker_pids()  # a new pool, started on demand
    assert survivors
    assert victims[0] not in survivors
    pooled.stop()
    rows = query(db_path, "SELECT instance_key, status FROM instances ORDER BY instance_key")
    assert rows == [("order-after", "converged"), ("order-before", "converged"), ("order-later", "converged")]


def test_negative_decode_workers_is_refused_with_the_fix(db_path: Path) -> None:
    with pytest.raises(StartError, match=r"--decode-workers -1: give 0 or more processes"):
        Service(ServeConfig(model=str(ORDERS_MODEL), db=str(db_path), decode_workers=-1))


def test_a_decoder_started_after_its_server_died_leaves_at_once(tmp_path: Path) -> None:
    """A pool may start a worker late; if the server was killed meanwhile, the worker's parent is
    already init. It must leave, not wait for init to die while holding the server's stdout."""
    with subprocess.Popen([sys.executable, "-c", "pass"]) as gone:  # a pid that is no longer anyone
        gone.wait()
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c",
         "import sys, time\n"
         "from collector.decoders import _init_worker\n"
         f"_init_worker(open(sys.argv[1]).read(), sys.argv[1], {gone.pid})\n"
         "time.sleep(60)\n"
         "print('still here')",
         str(ORDERS_MODEL)],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "still here" not in done.stdout
    assert time.monotonic() - started < 30  # left within its poll interval, not after the sleep
