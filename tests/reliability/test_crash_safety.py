"""Crash safety: SIGKILL the server at a random moment while a retrying client streams orders;
every acknowledged span is in the database afterwards, and the tables equal a clean replay of all
acknowledged requests. 3 trials in `make test`, 20 in `make soak`."""

from __future__ import annotations

import random
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export import SpanExportResult

from tests.conftest import query
from tests.otel_clients import encode, grpc_exporter, recorded_order
from tests.procs import COORDSTATE, ServerProcess
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


class Client(threading.Thread):
    """Streams orders; each export is re-sent until acknowledged (a retrying exporter)."""

    def __init__(self, endpoint: str, trial: int) -> None:
        super().__init__(daemon=True)
        self.exporter = grpc_exporter(endpoint, timeout=20)
        self.rng = random.Random(trial)
        self.trial = trial
        self.stop = threading.Event()
        self.acked: list[bytes] = []
        self.acked_span_ids: set[str] = set()
        self.attempts = 0

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            spans, _ = recorded_order(f"t{self.trial}-order-{i}")
            i += 1
            if self.rng.random() < 0.4:  # children first, root later: exercises the key buffer
                parts = [[s for s in spans if s.name != "PlaceOrder"], [s for s in spans if s.name == "PlaceOrder"]]
            else:
                parts = [spans]
            for part in parts:
                while True:
                    self.attempts += 1
                    if self.exporter.export(part) == SpanExportResult.SUCCESS:
                        break
                self.acked.append(encode(part).SerializeToString())
                self.acked_span_ids |= {f"{s.context.span_id:016x}" for s in part}


@pytest.mark.parametrize("trial", range(TRIALS))
def test_sigkill_loses_no_acknowledged_span(trial: int, tmp_path: Path) -> None:
    db = tmp_path / "live.duckdb"
    ports = ["--otlp-grpc", f"127.0.0.1:{free_port()}"]
    rng = random.Random(1000 + trial)
    server = ServerProcess(db, *ports)
    client = Client(server.grpc, trial)
    client.start()
    try:
        time.sleep(rng.uniform(0.3, 1.5))  # let traffic flow; then crash at a random moment
        server.kill()
        server = ServerProcess(db, *ports)
        time.sleep(0.8)  # traffic continues against the restarted server
    finally:
        client.stop.set()
        client.join(timeout=120)
        assert server.terminate() == 0
    assert not client.is_alive()

    stored = {r[0] for r in query(db, "SELECT span_id FROM spans")}
    lost = client.acked_span_ids - stored
    record("crash", trial=trial, acknowledged=len(client.acked_span_ids), lost=len(lost), attempts=client.attempts)
    assert client.acked_span_ids
    assert lost == set()

    replay_file = tmp_path / "acked.binpb"
    replay_file.write_bytes(b"".join(struct.pack(">I", len(m)) + m for m in client.acked))
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
