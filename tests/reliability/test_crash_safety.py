"""Crash safety: SIGKILL the server at a random moment while a retrying client streams orders;
every acknowledged span is in the database afterwards, and the tables equal a clean replay of all
acknowledged requests. 3 trials in `make test`, 20 in `make soak`."""

from __future__ import annotations

import random
import struct
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import query
from tests.procs import COORDSTATE, ServerProcess
from tests.reliability.clients import RetryingOrders
from tests.reliability.report import SOAK, record
from tests.test_browser import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

TRIALS = 20 if SOAK else 3
COMPARE = {
    "transitions": "SELECT * EXCLUDE (observed_at) FROM transitions ORDER BY ALL",
    "instances": "SELECT * FROM instances ORDER BY ALL",
    "instance_history": "SELECT * FROM instance_history ORDER BY ALL",
    "spans": "SELECT * EXCLUDE (observed_at) FROM spans ORDER BY ALL",
}


@pytest.mark.parametrize("trial", range(TRIALS))
def test_sigkill_loses_no_acknowledged_span(trial: int, tmp_path: Path) -> None:
    db = tmp_path / "live.duckdb"
    ports = ["--otlp-grpc", f"127.0.0.1:{free_port()}"]
    rng = random.Random(1000 + trial)
    server = ServerProcess(db, *ports)
    client = RetryingOrders(server.grpc, f"t{trial}-order", split=0.4, seed=trial, timeout=20)
    client.start()
    try:
        time.sleep(rng.uniform(0.3, 1.5))  # let traffic flow; then crash at a random moment
        server.kill()
        server = ServerProcess(db, *ports)
        time.sleep(0.8)  # traffic continues against the restarted server
    finally:
        client.finish()
        assert server.terminate() == 0

    stored = {r[0] for r in query(db, "SELECT span_id FROM spans")}
    lost = client.acked_span_ids - stored
    record("crash", trial=trial, acknowledged=len(client.acked_span_ids), lost=len(lost), attempts=client.attempts)
    assert client.acked_span_ids
    assert lost == set()

    replay_file = tmp_path / "acked.binpb"
    replay_file.write_bytes(b"".join(struct.pack(">I", len(m)) + m for m in client.acked_requests))
    clean = tmp_path / "replay.duckdb"
    result = subprocess.run(
        [COORDSTATE, "replay", "--quiet", "--db", str(clean), str(replay_file)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for name, sql in COMPARE.items():
        assert query(db, sql) == query(clean, sql), f"{name} differs from a clean replay"
