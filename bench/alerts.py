"""Alert delivery never slows ingest: the ingest benchmark's traffic (with 5% of orders charged
twice, a duplicate_action each) through `coordstate serve`, in one run:

  1. without an alert target;
  2. with --alertmanager pointing at a port where nothing listens (Alertmanager down) for the
     whole half-load phase (60 s by default), then Alertmanager started there: how long until it
     holds every open anomaly;
  3. the same with a target that accepts connections and never answers (a hung Alertmanager:
     every request waits for its 10 s timeout);
  4. phase 1 again: the machine's own noise between runs, to read the ratios against.

    .venv/bin/python -m bench.alerts [--seconds 10] [--half-load-seconds 60] [--clients 10]

Prints, per phase, the maximum committed spans/s and p50/p99 export latency at half of phase 1's
maximum rate, and their ratios to phase 1. The same payloads and rate in every phase.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.ingest import ROOT, build_request, drive
from tests.alerting import AlertmanagerProcess

DOUBLE_CHARGES = 0.05


def serve(db: Path, model: Path, *extra: str) -> tuple[subprocess.Popen[str], str, str]:
    coordstate = str(Path(sys.executable).with_name("coordstate"))
    proc = subprocess.Popen(
        [coordstate, "serve", "--model", str(model), "--db", str(db), "--otlp-grpc", "127.0.0.1:0",
         "--otlp-http", "127.0.0.1:0", "--api", "127.0.0.1:0", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.stdout is not None
    grpc_endpoint = api = ""
    for line in proc.stdout:
        if found := re.search(r"OTLP/gRPC\s+(\S+)", line):
            grpc_endpoint = found.group(1)
        if found := re.search(r"query API\s+(http://\S+)", line):
            api = found.group(1)
            break
    if not (grpc_endpoint and api):
        raise SystemExit("coordstate serve did not start")
    return proc, grpc_endpoint, api


def open_anomalies(api: str) -> int:
    response = httpx.post(
        f"{api}/api/v1/query", json={"sql": "SELECT count(*) FROM anomalies WHERE resolved_at IS NULL"}
    )
    return int(response.json()["rows"][0][0])


def load_options(parser: argparse.ArgumentParser, half_load_s: float = 30.0, half_help: str | None = None) -> None:
    """The options every benchmark that drives ``measure`` takes."""
    parser.add_argument("--seconds", type=float, default=10.0, help="unpaced phase: the maximum rate")
    parser.add_argument("--half-load-seconds", type=float, default=half_load_s, help=half_help or "paced phase")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--spans-per-request", type=int, default=1000)


def measure(endpoint: str, args: argparse.Namespace, payloads: list[bytes], rate: float | None) -> Figures:
    """Warm-up, the maximum rate (unpaced), then latency at ``rate`` (half the maximum if None)."""
    drive(endpoint, payloads, args.spans_per_request, args.clients, 2.0, None)
    before = cpu_ticks()
    max_rate, _, _ = drive(endpoint, payloads, args.spans_per_request, args.clients, args.seconds, None)
    between = cpu_ticks()
    paced = rate or max_rate / 2
    _, lat, _ = drive(endpoint, payloads, args.spans_per_request, args.clients, args.half_load_seconds, paced)
    after = cpu_ticks()
    lat.sort()
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
    steal = (stolen(before, between), stolen(between, after))
    return Figures(max_rate, paced, statistics.median(lat) * 1000, p99, len(lat), steal)


def cpu_ticks() -> list[int] | None:
    """The machine's CPU time so far, by kind (the first line of /proc/stat); None off Linux."""
    try:
        with open("/proc/stat") as stat:
            return [int(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def stolen(before: list[int] | None, after: list[int] | None) -> float | None:
    """The share of CPU time the hypervisor gave other guests between two readings, in %: a
    figure taken while it is high measures the host as much as coordstate."""
    if before is None or after is None or len(before) < 8 or len(after) < 8:
        return None
    spent = [b - a for a, b in zip(before[:8], after[:8], strict=True)]  # guest time is in user's
    return 100 * spent[7] / sum(spent) if sum(spent) else 0.0


@dataclass(frozen=True)
class Figures:
    max_rate: float
    paced: float
    p50: float
    p99: float
    exports: int
    #: host steal time (%) while the maximum, then the paced latency, were measured
    steal: tuple[float | None, float | None] = (None, None)

    def show(self, name: str, open_now: int | None = None) -> None:
        anomalies = "" if open_now is None else f"; {open_now:,} anomalies open"
        steal = " / ".join("n/a" if s is None else f"{s:.1f} %" for s in self.steal)
        print(f"{name:34} {self.max_rate:10,.0f} spans/s max; at {self.paced:,.0f} spans/s: p50 {self.p50:6.1f} ms, "
              f"p99 {self.p99:6.1f} ms ({self.exports:,} exports){anomalies}; host steal {steal}")  # fmt: skip


def phase(name: str, args: argparse.Namespace, payloads: list[bytes], rate: float | None, model: Path,
          *extra: str, then: Callable[[str, int], None] | None = None) -> Figures:  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        proc, endpoint, api = serve(Path(tmp) / "bench.duckdb", model, *extra)
        try:
            figures = measure(endpoint, args, payloads, rate)
            open_now = open_anomalies(api)
            figures.show(name, open_now)
            if then is not None:
                then(api, open_now)
            return figures
        finally:
            proc.terminate()
            proc.wait(timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    load_options(parser, 60.0, "how long Alertmanager stays away")
    args = parser.parse_args()
    payloads = [build_request(seed, args.spans_per_request, DOUBLE_CHARGES) for seed in range(24)]
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "orders.yaml"  # the payloads' event times stand still: judge at once
        model.write_text((ROOT / "otel-config/models/orders.yaml").read_text() + "watermark: {lateness: 0s}\n")
        base = phase("no alert target", args, payloads, None, model)
        with AlertmanagerProcess(Path(tmp) / "probe") as probe:
            port = probe.port  # a port Alertmanager can listen on; nothing listens there now

        def comes_back(api: str, expected: int) -> None:
            started = time.monotonic()
            with AlertmanagerProcess(Path(tmp) / "am", port=port) as am:
                while len(am.alerts()) < expected:
                    if time.monotonic() - started > 300:
                        raise SystemExit(f"Alertmanager holds {len(am.alerts())} of {expected} after 300 s")
                    time.sleep(0.2)  # polling
                print(f"{'  then Alertmanager started':34} all {expected:,} alerts held "
                      f"{time.monotonic() - started:.1f} s later (retries back off up to 30 s apart)")  # fmt: skip

        down = phase("Alertmanager down (refused)", args, payloads, base.paced, model,
                     "--alertmanager", f"http://127.0.0.1:{port}", then=comes_back)  # fmt: skip
        hung = socket.socket()
        hung.bind(("127.0.0.1", 0))
        hung.listen(1024)  # connections complete in the kernel; nothing ever answers
        try:
            stuck = phase("Alertmanager hung (never answers)", args, payloads, base.paced, model,
                          "--alertmanager", f"http://127.0.0.1:{hung.getsockname()[1]}")  # fmt: skip
        finally:
            hung.close()
        again = phase("no alert target, again (noise)", args, payloads, base.paced, model)
    for name, f in (("down", down), ("hung", stuck), ("again", again)):
        print(f"ratio {name} / none:  max rate {f.max_rate / base.max_rate:.2f}, p50 {f.p50 / base.p50:.2f}, "
              f"p99 {f.p99 / base.p99:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
