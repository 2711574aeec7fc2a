"""Lake mode with roles, per node: what one ingest node and one fold node each do on this
machine, and the lake's own commit ceiling — the figures the README's N-node arithmetic uses.

    .venv/bin/python -m bench.lake_roles [--seconds 10] [--half-load-seconds 30] [--clients 10]

On a throwaway PostgreSQL cluster (tests/pg.py), with the ingest benchmark's payloads:

1. one ``--role ingest`` node alone: maximum committed spans/s and p50/p99 at half of it (its
   hand-offs pile up in the lake: nobody folds them yet);
2. one ``--role fold`` node owning every partition, started on that backlog: spans folded per
   second until it caught up;
3. both at once (two processes on these two cores): the ingest node's maximum rate while the fold
   node follows (p50/p99 at half of that), and how far behind the fold node was when ingest stopped;
4. the lake's commit ceiling: two processes committing one-row appends as fast as they can, then
   5,000-row appends.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import re
import tempfile
import time
from pathlib import Path

import duckdb
import httpx

from analytics.common import lake as lakes
from analytics.write import shards
from bench.alerts import load_options, measure, serve
from bench.ingest import ROOT, build_request
from tests.pg import Postgres

PARTITIONS = 4
MODEL = ROOT / "otel-config/models/orders.yaml"


def role(where: tuple[str, ...], *args: str) -> tuple[object, str, str]:
    return serve(Path("unused-in-lake-mode.duckdb"), MODEL, *where, "--partitions", str(PARTITIONS), *args)


def reader(where: lakes.Lake) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    lakes.attach(con, where, read_only=True)
    return con


def handed_off(con: duckdb.DuckDBPyConnection) -> int:
    return int(con.execute("SELECT count(*) FROM lake.main._handoff").fetchone()[0])  # type: ignore[index]


def catch_up(con: duckdb.DuckDBPyConnection, timeout_s: float = 1800) -> float:
    """Seconds until no hand-off is left unfolded."""
    started = time.perf_counter()
    while shards.backlog(con) > 0:
        if time.perf_counter() - started > timeout_s:
            raise SystemExit("the fold node did not catch up")
        time.sleep(0.2)
    return time.perf_counter() - started


def _committer(catalog: str, data: str, table: str, rows: int, seconds: float, out: mp.Queue) -> None:  # type: ignore[type-arg]
    con = lakes.connect(lakes.Lake(catalog, data))
    batch = con.execute(f"SELECT range AS n, repeat('x', 64) AS payload FROM range({rows})").fetch_arrow_table()
    commits = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        con.from_arrow(batch).insert_into(table)
        commits += 1
    con.close()
    out.put(commits)


def commit_ceiling(where: lakes.Lake, rows: int, seconds: float = 10.0) -> float:
    con = lakes.connect(where)
    table = f"ceiling_{rows}"
    con.execute(f"CREATE TABLE {table} (n BIGINT, payload VARCHAR)")
    con.close()
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [
        ctx.Process(target=_committer, args=(where.catalog, where.data_path, table, rows, seconds, out)) for _ in (0, 1)
    ]
    for p in procs:
        p.start()
    total = sum(out.get(timeout=seconds + 120) for _ in procs)
    for p in procs:
        p.join()
    return total / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    load_options(parser)
    args = parser.parse_args()
    payloads = [build_request(seed, args.spans_per_request) for seed in range(24)]
    pg = Postgres()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            pg.create("roles")
            where = lakes.Lake(pg.catalog("roles"), str(Path(tmp) / "lake"))
            flags = ("--lake", where.catalog, "--lake-data", where.data_path)

            ingest, endpoint, api = role(flags, "--role", "ingest", "--node", "bench")
            try:
                alone = measure(endpoint, args, payloads, None)
                metrics = httpx.get(f"{api}/metrics", timeout=60).text
                counts = {
                    m.group(1): float(m.group(2)) for m in re.finditer(r"^coordstate_(\w+)_total (\S+)$", metrics, re.M)
                }
                share = counts["spans_handed_off"] / counts["spans_received"]
            finally:
                ingest.terminate()  # type: ignore[attr-defined]
                ingest.wait(timeout=120)  # type: ignore[attr-defined]
            alone.show("ingest node alone")
            print(f"{'':34} {counts['commits']:,.0f} lake commits for {counts['spans_received']:,.0f} spans "
                  f"({counts['spans_received'] / counts['commits']:,.0f} spans, "
                  f"{counts['spans_handed_off'] / counts['commits']:,.0f} hand-offs per commit)")  # fmt: skip
            con = reader(where)
            handed = handed_off(con)
            fold, _, fold_api = role(flags, "--role", "fold", "--owns", ",".join(map(str, range(PARTITIONS))))
            try:
                took = catch_up(con)
                folds = int(
                    re.search(r"^coordstate_commits_total (\S+)$", httpx.get(f"{fold_api}/metrics").text, re.M)[1]
                )  # type: ignore[index]
                print(f"{'fold node on the backlog':34} {handed / took:10,.0f} hand-offs/s folded "
                      f"({handed:,} in {took:.1f} s); {share:.1%} of the spans received are handed off, so "
                      f"one fold node keeps up with {handed / took / share:,.0f} spans/s received; "
                      f"{folds:,} commits ({folds / took:,.0f}/s over {PARTITIONS} partitions)")  # fmt: skip
                ingest, endpoint, _ = role(flags, "--role", "ingest", "--node", "bench")
                try:
                    both = measure(endpoint, args, payloads, None)
                finally:
                    ingest.terminate()  # type: ignore[attr-defined]
                    ingest.wait(timeout=120)  # type: ignore[attr-defined]
                unfolded = shards.backlog(con)
                lag = catch_up(con)
                both.show("ingest node beside a fold node")
                print(
                    f"{'':34} when ingest stopped, {unfolded:,} hand-offs were not folded yet ({lag:.1f} s to catch up)"
                )
            finally:
                fold.terminate()  # type: ignore[attr-defined]
                fold.wait(timeout=120)  # type: ignore[attr-defined]
                con.close()
            one = commit_ceiling(where, 1)
            big = commit_ceiling(where, 5_000)
            print(f"lake commit ceiling (2 processes): {one:,.0f} commits/s of 1 row, {big:,.0f} commits/s of "
                  f"5,000 rows ({big * 5_000:,.0f} rows/s)")  # fmt: skip
    finally:
        pg.close()


if __name__ == "__main__":
    main()
