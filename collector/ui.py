"""Starting the Streamlit app as a child process (``coordstate ui`` and ``coordstate up``).

The app is a separate process that reads only through the query API (or a read-only file);
this module just builds its command line and environment.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

DEFAULT_UI_PORT = 8501


def app_main() -> Path:
    spec = find_spec("app")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the coordstate app package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "main.py"


def ui_env(api: str | None, db: str | None, token: str | None, trace_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COORDSTATE_")}
    if db:
        env["COORDSTATE_DB"] = db
    else:
        env["COORDSTATE_API"] = api or "http://127.0.0.1:4329"
    token = token or os.environ.get("COORDSTATE_TOKEN")
    if token:
        env["COORDSTATE_TOKEN"] = token
    trace_url = trace_url or os.environ.get("COORDSTATE_TRACE_URL")
    if trace_url:
        env["COORDSTATE_TRACE_URL"] = trace_url
    return env


def app_port(port: int, address: str) -> int:
    """``port``, or for 0 a port free on ``address`` now (Streamlit cannot report the one it binds)."""
    if port:
        return port
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def start_ui(port: int, env: dict[str, str], *, address: str = "127.0.0.1") -> subprocess.Popen[bytes]:
    """Start the app on ``port`` (not 0: see :func:`app_port`)."""
    command = [
        sys.executable, "-m", "streamlit", "run", str(app_main()),
        "--server.port", str(port),
        "--server.address", address,
        "--server.headless", "true",
        "--server.fileWatcherType", "none",
        "--server.runOnSave", "false",
        "--browser.gatherUsageStats", "false",
        "--client.showErrorDetails", "none",
        "--client.toolbarMode", "viewer",
        "--theme.base", "light",
    ]  # fmt: skip
    return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)


def stop_ui(proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
