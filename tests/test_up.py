"""`coordstate up --demo` as a user runs it: everything starts, traffic flows, Ctrl-C stops it all."""

from __future__ import annotations

import os
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


def test_up_refuses_a_taken_app_port_before_starting_anything(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [COORDSTATE, "up", "--db", str(tmp_path / "up.duckdb"), "--otlp-grpc", "127.0.0.1:0",
             "--otlp-http", "127.0.0.1:0", "--api", "127.0.0.1:0", "--ui-port", str(port)],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip
    assert done.returncode == 1
    assert f"the app cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "choose another --ui-port PORT" in done.stderr
    assert "coordstate is up" not in done.stdout
    assert not (tmp_path / "up.duckdb").exists()  # the server never started


def _app_child(parent: int) -> int:
    """The pid of ``parent``'s app process (``python -m collector.ui``), read from /proc."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:  # a process that ended while we looked
            continue
        if int(fields[1]) == parent and b"collector.ui" in cmdline:
            return int(stat.parent.name)
    raise AssertionError(f"no app process under {parent}")


def _start_ui(tmp_path: Path) -> tuple[subprocess.Popen[str], int]:
    # run from a directory holding a package of the user's own that is also called `collector`
    (tmp_path / "collector").mkdir()
    (tmp_path / "collector" / "__init__.py").write_text("raise ImportError('the user’s collector package')\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [COORDSTATE, "ui", "--api", "http://127.0.0.1:9", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
    )  # fmt: skip
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, "coordstate ui exited early"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).text == "ok":
                return proc, port
        except httpx.HTTPError:
            pass
        time.sleep(0.2)  # polling interval while the app starts
    proc.terminate()
    proc.communicate(timeout=30)
    raise AssertionError("the app never answered its health check")


def test_the_app_leaves_when_its_launcher_is_killed_outright(tmp_path: Path) -> None:
    proc, port = _start_ui(tmp_path)
    try:
        app = _app_child(proc.pid)
    finally:
        proc.kill()  # SIGKILL: the launcher cannot stop the app itself
        proc.communicate(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and Path(f"/proc/{app}").exists():
        time.sleep(0.1)  # polling until the orphaned app notices
    if Path(f"/proc/{app}").exists():
        os.kill(app, signal.SIGKILL)
        raise AssertionError("the app outlived its launcher by 30 s")
    with socket.socket() as s:  # and its port is free again
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_ui_says_so_and_exits_1_when_the_app_stops_by_itself(tmp_path: Path) -> None:
    proc, _ = _start_ui(tmp_path)
    try:
        os.kill(_app_child(proc.pid), signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1
    assert "coordstate: the app stopped by itself (exit status -9)" in out
