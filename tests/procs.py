"""Run `coordstate` as a user would: a real subprocess, with its output read line by line."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.helpers import ORDERS_MODEL

COORDSTATE = str(Path(sys.executable).with_name("coordstate"))


class ServerProcess:
    """``coordstate serve`` on free ports; ``.grpc`` / ``.http`` are read from its banner."""

    def __init__(self, db: Path, *extra: str, model: Path = ORDERS_MODEL) -> None:
        self.args = [
            COORDSTATE, "serve", "--model", str(model), "--db", str(db),
            "--otlp-grpc", "127.0.0.1:0", "--otlp-http", "127.0.0.1:0", "--api", "127.0.0.1:0", *extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            self.args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.grpc = self.wait_for(r"OTLP/gRPC\s+(\S+)")
        self.http = self.wait_for(r"OTLP/HTTP\s+(http://\S+)/v1/traces")
        self.api = self.wait_for(r"query API\s+(http://\S+)")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            self.output.append(line)
            found = re.search(pattern, line)
            if found:
                return found.group(1) if found.groups() else line
        raise AssertionError(f"{pattern!r} not printed by {self.args}; output so far:\n" + "\n".join(self.output))

    def query(self, sql: str) -> list[tuple[object, ...]]:
        """Rows of ``sql`` through the server's query API."""
        response = httpx.post(f"{self.api}/api/v1/query", json={"sql": sql}, timeout=30)
        response.raise_for_status()
        return [tuple(r) for r in response.json()["rows"]]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self._finish()

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self._finish()

    def _finish(self) -> int:
        code = self.proc.wait(timeout=60)
        self._reader.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        while not self.lines.empty():
            self.output.append(self.lines.get())
        return code

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None or (self.proc.stdout is not None and not self.proc.stdout.closed):
            self.kill()
