"""`coordstate up --demo` as a user runs it: everything starts, traffic flows, Ctrl-C stops it all."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.procs import COORDSTATE

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def test_up_demo_starts_ingests_and_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [COORDSTATE, "up", "--demo", "--rate", "10", "--db", str(tmp_path / "up.duckdb"),
         "--otlp-grpc", "127.0.0.1:0", "--otlp-http", "127.0.0.1:0", "--api", "127.0.0.1:0", "--ui-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.stdout is not None
    banner = ""
    try:
        for line in proc.stdout:
            banner += line
            if line.startswith("Press Ctrl-C"):
                break
        api = re.search(r"query API\s+(\S+)", banner)
        assert api, banner
        app = re.search(r"app\s+http://127\.0\.0\.1:(\d+)\n", banner)  # --ui-port 0: the port it got
        assert app, banner
        ui_port = int(app.group(1))
        assert ui_port > 0
        deadline = time.monotonic() + 120
        health = instances = None
        while time.monotonic() < deadline and not (health == "ok" and instances):
            try:
                health = httpx.get(f"http://127.0.0.1:{ui_port}/_stcore/health", timeout=2).text
                rows = httpx.post(
                    f"{api.group(1)}/api/v1/query", json={"sql": "SELECT count(*) FROM instances"}
                ).json()["rows"]
                instances = rows[0][0]
            except httpx.HTTPError:
                pass
            time.sleep(0.3)  # polling interval while everything starts
        assert health == "ok"
        assert instances is not None
        assert instances > 0
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, banner + rest
    assert "coordstate: stopped; the database is consistent." in rest
    with socket.socket() as s:  # the app is gone too
        assert s.connect_ex(("127.0.0.1", ui_port)) != 0
