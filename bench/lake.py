"""Lake mode, one node, against the embedded file: the ingest benchmark's payloads through
`coordstate serve` in each mode, in one run, on a throwaway PostgreSQL cluster (tests/pg.py).

    .venv/bin/python -m bench.lake [--seconds 10] [--half-load-seconds 30] [--clients 10]
                                   [--seed-transitions N]   # both start on an aged database

Prints, per mode: the maximum committed spans/s, p50/p99 export latency at half of the embedded
maximum, the time a restart takes to answer again, the overview query's latency through the
query API (with the app's client), and the lake's Parquet files; then the lake/embedded ratios.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from analytics.common.lake import Lake
from analytics.common.lake import connect as lake_connect
from analytics.read import queries
from analytics.read.client import query_api
from analytics.write.schema import migrate
from bench.alerts import load_options, measure, serve
from bench.ingest import ROOT, build_request, mark_folded, seed_database
from bench.queries import SEED
from tests.pg import Postgres

#: the Overview page's query (from instance_counts), and the same counts grouped from every row
OVERVIEW = queries.OVERVIEW_STATUS
GROUPED = "SELECT workflow, status, count(*) FROM instances GROUP BY ALL ORDER BY ALL"


def run(name: str, args: argparse.Namespace, payloads: list[bytes], rate: float | None, *where: str) -> float:
    """One mode: ingest figures (bench/alerts.py's measure), the overview query, a restart."""
    model = ROOT / "otel-config/models/orders.yaml"
    proc, endpoint, api = start(model, where)
    try:
        figures = measure(endpoint, args, payloads, rate)
        query: dict[str, list[float]] = {OVERVIEW: [], GROUPED: []}
        for _ in range(20):
            for sql, took in query.items():
                t = time.perf_counter()
                query_api(api, sql, timeout_s=60)  # the app's own client (an httpx request adds ~40 ms here)
                took.append((time.perf_counter() - t) * 1000)
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    started = time.perf_counter()
    proc, endpoint, api = start(model, where)  # a restart: the banner prints once it answers
    restart = time.perf_counter() - started
    proc.terminate()
    proc.wait(timeout=120)
    figures.show(name)
    print(
        f"{'':34} restart {restart:.1f} s; overview query median {statistics.median(query[OVERVIEW]):.1f} ms "
        f"(grouping every instance row: {statistics.median(query[GROUPED]):.1f} ms)"
    )
    return figures.max_rate


def start(model: Path, where: tuple[str, ...]) -> tuple[subprocess.Popen[str], str, str]:
    """``where``: ``("--db", PATH)`` or ``("--lake", CATALOG, "--lake-data", PATH)``."""
    if where[0] == "--db":
        return serve(Path(where[1]), model)
    return serve(Path("unused-in-lake-mode.duckdb"), model, *where)


def seed_lake(where: Lake, transitions: int) -> None:
    """The lake as a node finds it after a day of traffic: the query benchmark's seed, written
    through DuckLake (as bench/ingest.py seeds the embedded file)."""
    started = time.perf_counter()
    con = lake_connect(where)
    try:
        migrate(con)
        con.execute(SEED.format(instances=transitions // 7))
        mark_folded(con)
    finally:
        con.close()
    files = list(Path(where.data_path).rglob("*.parquet"))
    size = sum(f.stat().st_size for f in files) / 2**20
    print(f"seeded lake:                 {transitions:12,} transitions, {len(files):,} Parquet files, {size:,.0f} MiB "
          f"({time.perf_counter() - started:.0f} s)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    load_options(parser)
    parser.add_argument("--seed-transitions", type=int, default=0, help="start both on a database this old")
    args = parser.parse_args()
    payloads = [build_request(seed, args.spans_per_request) for seed in range(24)]
    pg = Postgres()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp) / "bench.duckdb"
            data = Path(tmp) / "lake"
            if args.seed_transitions:
                seed_database(db, args.seed_transitions)
                seed_lake(Lake(pg.catalog(), str(data)), args.seed_transitions)
            embedded = run("embedded", args, payloads, None, "--db", str(db))
            lake = run("lake", args, payloads, embedded / 2, "--lake", pg.catalog(), "--lake-data", str(data))
            files = list(data.rglob("*.parquet"))
            size = sum(f.stat().st_size for f in files) / 2**20
            print(f"lake data: {len(files):,} Parquet files, {size:,.0f} MiB")
            print(f"ratio lake / embedded: max rate {lake / embedded:.2f} (target >= 0.7)")
    finally:
        pg.close()


if __name__ == "__main__":
    main()
