"""Starting the Streamlit app as a child process (``coordstate ui`` and ``coordstate up``).

The app is a separate process that reads only through the query API (or a read-only file);
this module builds its command line and environment, and is the app process's entry point
(``python -m collector.ui``): Streamlit's own command line, plus a watch that stops the app
when the process that started it is gone — killed outright, it cannot stop the app itself, and
an orphaned app would keep its port and show a server that no longer exists.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from importlib.util import find_spec
from pathlib import Path

DEFAULT_UI_PORT = 8501
PARENT_POLL_S = 0.5


class AppPortError(RuntimeError):
    """The app's port cannot be bound (checked before anything starts)."""


def app_main() -> Path:
    spec = find_spec("app")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the coordstate app package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "main.py"


def ui_env(
    api: str | None, db: str | None, token: str | None, trace_url: str | None,
    lake: str | None = None, lake_data: str | None = None,
) -> dict[str, str]:  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("COORDSTATE_")}
    if lake:
        env["COORDSTATE_LAKE"] = lake
        env["COORDSTATE_LAKE_DATA"] = lake_data or ""
    elif db:
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


def app_port(port: int, address: str, flag: str = "--ui-port") -> int:
    """``port`` if the app can listen there now, or for 0 a free one (Streamlit cannot report the
    one it binds). Raises :class:`AppPortError` naming the address and ``flag``."""
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the app's server binds
        try:
            s.bind((address, port))
        except OSError as exc:
            raise AppPortError(
                f"the app cannot listen on {address}:{port}: {exc.strerror or exc}. "
                f"Stop the process using it (another coordstate app?) or choose another {flag} PORT"
            ) from exc
        return int(s.getsockname()[1])


def start_ui(port: int, env: dict[str, str], *, address: str = "127.0.0.1") -> subprocess.Popen[bytes]:
    """Start the app on ``port`` (not 0: see :func:`app_port`)."""
    command = [
        # -P: the working directory is not put on sys.path, so a package of the user's that is
        # also called `collector` (or `streamlit`) cannot stand in for ours
        sys.executable, "-P", "-m", "collector.ui", "run", str(app_main()),
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


def _stop_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)  # nothing to wait on: the kernel only re-parents us
    os.kill(os.getpid(), signal.SIGTERM)  # Streamlit stops as it does on SIGTERM from its parent


def _app_process(argv: list[str]) -> None:
    """The app process: Streamlit's command line (``streamlit run …``), watched by its parent."""
    from streamlit.web import cli

    threading.Thread(target=_stop_with_parent, args=(os.getppid(),), name="parent-watch", daemon=True).start()
    sys.argv = ["streamlit", *argv]
    cli.main(prog_name="streamlit")


if __name__ == "__main__":
    _app_process(sys.argv[1:])
