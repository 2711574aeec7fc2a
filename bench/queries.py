"""Query benchmark: the app's queries over 1M and 10M transitions, figures in one run.

    .venv/bin/python bench/queries.py [--sizes 1000000 10000000] [--repeat 5]

Seeds a database with the coordstate schema (migrations applied) and a realistic mix: one day of
orders, ~7 transitions each, statuses 88% converged / 5% compensated / 3% diverged / 2% stalled /
2% running, anomalies on the troubled ones, rows in arrival (≈ event-time) order as ingest writes
them. Then prints the median latency of: the Overview queries, one instance's drill-down (row,
transitions, anomalies, history), convergence per minute over the day, and state_at(ts).
Targets at 10M: overview ≤ 100 ms, drill-down ≤ 20 ms, state_at ≤ 1 s.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from analytics.read import queries
from analytics.write.connection import connect
from analytics.write.schema import migrate

DAY_START = datetime(2026, 11, 1, tzinfo=UTC).replace(tzinfo=None)

SEED = """
CREATE TEMP TABLE seed_instances AS
SELECT i AS n,
       'order-' || i AS instance_key,
       TIMESTAMP '2026-11-01 00:00:00' + to_microseconds((i * 86400000000 // {instances})::BIGINT) AS started_at,
       CASE WHEN hash(i) % 100 < 88 THEN 'converged' WHEN hash(i) % 100 < 93 THEN 'compensated'
            WHEN hash(i) % 100 < 96 THEN 'diverged' WHEN hash(i) % 100 < 98 THEN 'stalled' ELSE 'running' END AS status,
       (hash(i * 7) % 4000)::INTEGER AS took_ms
FROM range({instances}) t(i);

INSERT INTO transitions
SELECT 'order', s.instance_key, st.step, st.state,
       (s.started_at + to_milliseconds(st.at_ms * s.took_ms // 1000))::TIMESTAMP_NS,
       s.started_at + to_milliseconds(st.at_ms * s.took_ms // 1000) + INTERVAL 50 MILLISECOND,
       lpad(to_hex(hash(s.n)), 32, '0'), lpad(to_hex(hash(s.n, st.k)), 16, '0'), st.service, 'span'
FROM seed_instances s,
     (VALUES (0, 'checkout', 'started', 0, 'checkout'), (1, 'payment', 'started', 100, 'payment'),
             (2, 'payment', 'completed', 300, 'payment'), (3, 'inventory', 'completed', 350, 'inventory'),
             (4, 'shipment', 'started', 500, 'shipping'), (5, 'shipment', 'completed', 800, 'shipping'),
             (6, 'checkout', 'completed', 1000, 'checkout')) st(k, step, state, at_ms, service)
ORDER BY 5;

INSERT INTO instances
SELECT 'order', instance_key, status,
       MAP {{'checkout': 'completed', 'payment': CASE WHEN status = 'compensated' THEN 'failed' ELSE 'completed' END,
            'inventory': 'completed', 'shipment': CASE WHEN status IN ('stalled', 'running') THEN 'started' ELSE 'completed' END}},
       started_at, started_at + to_milliseconds(took_ms),
       CASE WHEN status IN ('converged', 'compensated') THEN started_at + to_milliseconds(took_ms) END,
       CASE WHEN status IN ('diverged', 'stalled') THEN 1 ELSE 0 END,
       [lpad(to_hex(hash(n)), 32, '0')],
       NULL  -- next_due_at: every deadline of the day already judged
FROM seed_instances ORDER BY started_at;

INSERT INTO instance_history
SELECT 'order', instance_key, 'running', started_at,
       CASE WHEN status = 'running' THEN NULL ELSE started_at + to_milliseconds(took_ms) END
FROM seed_instances
UNION ALL
SELECT 'order', instance_key, status, started_at + to_milliseconds(took_ms), NULL
FROM seed_instances WHERE status <> 'running'
ORDER BY 4;

INSERT INTO anomalies
SELECT lpad(to_hex(hash(n, 'a')), 16, '0'), 'order', instance_key,
       CASE status WHEN 'diverged' THEN 'uncompensated_failure' ELSE 'stalled' END,
       CASE status WHEN 'diverged' THEN 'payment' ELSE 'shipment' END,
       CASE status WHEN 'diverged' THEN 'critical' ELSE 'warning' END,
       started_at + INTERVAL 5 SECOND, NULL, 'order ' || instance_key || ' needs attention.',
       'run refund for payment of ' || instance_key, [{{'trace_id': lpad(to_hex(hash(n)), 32, '0'), 'span_id': 'x', 'what': 'payment completed'}}],
       started_at + INTERVAL 5 SECOND
FROM seed_instances WHERE status IN ('diverged', 'stalled')
UNION ALL
SELECT lpad(to_hex(hash(n, 'm')), 16, '0'), 'order', instance_key, 'missing_step', 'payment', 'warning',
       started_at + INTERVAL 10 SECOND, started_at + INTERVAL 13 SECOND, 'late payment.', 're-drive payment',
       [], started_at + INTERVAL 10 SECOND
FROM seed_instances WHERE hash(n) % 100 = 99
ORDER BY 7;
"""


def timed(con: duckdb.DuckDBPyConnection, sql: str, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        con.execute(sql).fetchall()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def drill_down(con: duckdb.DuckDBPyConnection, key: str) -> None:
    rows = con.execute(queries.instance_row(key)).fetchall()
    assert rows
    row = rows[0]
    con.execute(queries.instance_transitions(row[0], key, row[4], row[5])).fetchall()
    con.execute(queries.instance_anomalies(row[0], key)).fetchall()
    con.execute(queries.instance_history(row[0], key)).fetchall()


def run(size: int, repeat: int) -> None:
    instances = size // 7
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.duckdb"
        con = connect(str(db))  # as the store opens it (its row group size)
        migrate(con)
        started = time.perf_counter()
        con.execute(SEED.format(instances=instances))
        con.execute("CHECKPOINT")
        n = con.execute("SELECT count(*) FROM transitions").fetchall()[0][0]
        print(f"\n{n:,} transitions, {instances:,} instances (seeded in {time.perf_counter() - started:.1f}s, "
              f"{db.stat().st_size / 2**20:.0f} MiB)")  # fmt: skip
        overview = sum(timed(con, q, repeat) for q in (queries.OVERVIEW_STATUS, queries.OVERVIEW_ANOMALIES))
        print(f"  overview (status + open anomalies):   {overview:8.1f} ms   target ≤ 100 ms")
        keys = [f"order-{(instances * k) // 11}" for k in range(1, 11)]
        samples = []
        for key in keys * max(1, repeat // 2):
            t = time.perf_counter()
            drill_down(con, key)
            samples.append(time.perf_counter() - t)
        print(
            f"  drill-down (row, transitions, anomalies, history): {statistics.median(samples) * 1000:6.1f} ms   target ≤ 20 ms"
        )
        print(f"  convergence per minute over the day:  {timed(con, queries.CONVERGENCE_PER_MINUTE, repeat):8.1f} ms")
        print(
            f"  state_at(12:00):                      {timed(con, queries.state_at(DAY_START.replace(hour=12)), repeat):8.1f} ms   target ≤ 1000 ms"
        )
        con.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"duckdb {duckdb.__version__}")
    for size in args.sizes:
        run(size, args.repeat)


if __name__ == "__main__":
    main()
