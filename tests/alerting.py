"""Real peers for the alerting tests: Debian's Alertmanager on a free port, a webhook receiver
that fails on demand, and an OTLP logs receiver built on the proto's LogsService."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import httpx
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.logs.v1 import logs_pb2

ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
#: CI must run the alerting tests (make test installs Alertmanager): there, a missing one fails
MISSING = (
    None if ALERTMANAGER or os.environ.get("CI") else "prometheus-alertmanager is not installed (make test installs it)"
)
CONFIG = """
route:
  receiver: nobody
  group_wait: 1s
receivers:
  - name: nobody
"""


def wait_until(check: Callable[[], Any], timeout_s: float = 30.0, what: str = "the condition") -> Any:
    """Poll ``check`` until it returns something truthy (and return it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout_s} s (last: {found!r})")
        time.sleep(0.05)


class AlertmanagerProcess:
    """``prometheus-alertmanager`` with clustering off, on a free port (or the given one)."""

    def __init__(self, workdir: Path, port: int = 0) -> None:
        assert ALERTMANAGER, "prometheus-alertmanager is not installed (make test installs it)"
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "alertmanager.yml").write_text(CONFIG)
        self.log = workdir / "alertmanager.log"
        self._log = self.log.open("ab")
        self.proc = subprocess.Popen(
            [ALERTMANAGER, f"--config.file={workdir / 'alertmanager.yml'}", f"--storage.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
            stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.port = int(wait_until(self._listening, what="Alertmanager listening"))
        self.url = f"http://127.0.0.1:{self.port}"
        wait_until(self._ready, what="Alertmanager ready")

    def _listening(self) -> str | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"Alertmanager exited:\n{self.log.read_text()}")
        found = re.findall(r'msg="Listening on" address=127\.0\.0\.1:(\d+)', self.log.read_text())
        return found[-1] if found else None

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts Alertmanager holds as active (resolved ones are not listed)."""
        response = httpx.get(f"{self.url}/api/v2/alerts", timeout=5)
        response.raise_for_status()
        found: list[dict[str, Any]] = response.json()
        return found

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self._log.close()

    def __enter__(self) -> AlertmanagerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Hook:
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class WebhookReceiver:
    """Answers each request with the next status of ``codes`` (then 200), recording them all."""

    codes: list[int] = field(default_factory=list)
    requests: list[Hook] = field(default_factory=list)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.requests.append(Hook({k.lower(): v for k, v in self.headers.items()}, body))
                code = receiver.codes.pop(0) if receiver.codes else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/reconcile"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()


class LogsReceiver(logs_service_pb2_grpc.LogsServiceServicer):
    """An OTLP/gRPC logs receiver that keeps every record (with its resource's service.name)."""

    def __init__(self) -> None:
        self.records: list[logs_pb2.LogRecord] = []
        self.services: list[str] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(self, self.server)  # type: ignore[no-untyped-call]
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"127.0.0.1:{self.port}"
        self.server.start()

    def Export(self, request: Any, context: Any) -> logs_service_pb2.ExportLogsServiceResponse:
        for rl in request.resource_logs:
            service = next((a.value.string_value for a in rl.resource.attributes if a.key == "service.name"), "")
            for sl in rl.scope_logs:
                self.records.extend(sl.log_records)
                self.services.extend([service] * len(sl.log_records))
        return logs_service_pb2.ExportLogsServiceResponse()

    def stop(self) -> None:
        self.server.stop(grace=None).wait()


def attributes(record: logs_pb2.LogRecord) -> dict[str, str]:
    return {a.key: a.value.string_value for a in record.attributes}
