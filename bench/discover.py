"""`coordstate discover` and `fit` on 1M spans of OpenTelemetry Demo traffic: time and peak memory.

    .venv/bin/python -m bench.discover [--spans 1000000]   (from the checkout: it uses tests/oteldemo.py)

Generates OpenTelemetry Demo-shaped traffic (tests/oteldemo.py: 3.x names, every fault flag,
per-service batches) as one length-prefixed protobuf file, then runs each command as a user would
(a fresh process) and prints its wall time and peak RSS. Targets: ≤ 60 s and ≤ 2 GiB each.
"""

from __future__ import annotations

import argparse
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.oteldemo import Naming, Shop, per_service, spans_of
from tests.test_oteldemo import SHARES, T0, write

ROOT = Path(__file__).resolve().parent.parent
COORDSTATE = str(Path(sys.executable).with_name("coordstate"))
MODEL = ROOT / "otel-config" / "models" / "otel-demo.yaml"


def generate(path: Path, spans: int) -> int:
    shop = Shop(Naming("3.x"), seed=1, t0_ns=T0)
    written = 0
    requests = []
    while written < spans:
        orders = shop.orders(2_000, SHARES)
        batch = spans_of(orders)
        written += len(batch)
        requests += per_service(batch, random.Random(written))
    write(requests, path)
    return written


def timed(*args: str) -> tuple[float, float, str]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    done = subprocess.run([COORDSTATE, *args], capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if done.returncode != 0:
        raise SystemExit(f"coordstate {' '.join(args)} failed:\n{done.stderr}")
    return elapsed, max(peak, before) / 1024, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="coordstate-bench-discover-") as tmp:
        capture = Path(tmp) / "demo.binpb"
        started = time.perf_counter()
        n = generate(capture, args.spans)
        print(
            f"generated {n:,} spans ({capture.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - started:.0f} s"
        )
        # RUSAGE_CHILDREN keeps the largest child so far: the smaller command runs first
        seconds, mib, out = timed("fit", "--model", str(MODEL), str(capture))
        print(f"fit      {seconds:6.1f} s  peak RSS {mib:6.0f} MiB   (targets: <= 60 s, <= 2048 MiB)")
        seconds, mib, out = timed("discover", str(capture), "-o", str(Path(tmp) / "proposed.yaml"))
        print(f"discover {seconds:6.1f} s  peak RSS {mib:6.0f} MiB   (targets: <= 60 s, <= 2048 MiB; includes its fit)")
        print(out.splitlines()[0])


if __name__ == "__main__":
    main()
