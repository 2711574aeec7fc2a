"""Lake mode with roles on a real PostgreSQL catalog: two ingest nodes (traces split between them
as the collector's load_balancing exporter splits them, linked traces on the other node on
purpose) and two fold nodes owning two key partitions each hold exactly what one embedded
process holds for the same OpenTelemetry Demo traffic — and survive being killed mid-stream."""

from __future__ import annotations

import dataclasses
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import duckdb
import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

from analytics.common import lake as lakes
from analytics.common.lake import Lake
from collector.service import ServeConfig, Service, StartError
from processors.clock import ManualClock
from tests.conftest import query_live
from tests.helpers import ROOT, STATE_QUERIES
from tests.otel_clients import grpc_exporter
from tests.oteldemo import SECOND, Naming, Shop, ordered, spans_of
from tests.pg import MISSING, Postgres
from tests.procs import COORDSTATE

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(300),
    pytest.mark.skipif(MISSING is not None, reason=str(MISSING)),
    pytest.mark.skipif(duckdb.__version__ != "1.5.5", reason="the lake extensions' wheels are built for DuckDB 1.5.5"),
]

MODEL = ROOT / "otel-config" / "models" / "otel-demo.yaml"
T0 = 1_760_000_000 * SECOND
SHARES = {"paymentFailure": 0.15, "paymentUnreachable": 0.1, "cartFailure": 0.15, "kafkaQueueProblems": 0.15}
#: the coordination state as sets of rows (observed_at, detected_at and handed_at are wall-clock)
CONTRACT = {
    **STATE_QUERIES,
    "open anomalies": "SELECT anomaly_id, workflow, instance_key, kind, step, severity, opened_at, message "
    "FROM anomalies WHERE resolved_at IS NULL",
    "anomalies": "SELECT anomaly_id, workflow, instance_key, kind, step, opened_at, resolved_at FROM anomalies",
    "spans": "SELECT workflow, instance_key, disposition, list_sort(steps), trace_id, span_id FROM spans",
    "state_at": "SELECT * FROM state_at(TIMESTAMP '2025-10-09 08:54:00')",
}


def traffic(seed: int, count: int) -> list[list[ReadableSpan]]:
    orders = Shop(Naming("3.x", renamed=True), seed=seed, t0_ns=T0).orders(count, SHARES)
    return [list(r.spans) for r in ordered(spans_of(orders))]


def routes(requests: list[list[ReadableSpan]], nodes: int) -> dict[int, int]:
    """The ingest node of every trace: by trace id, as load_balancing routes (routing_key:
    traceID); a trace linked to another goes to the next node on purpose (its key is there)."""
    out: dict[int, int] = {}
    for spans in requests:
        for s in spans:
            assert s.context is not None
            tid = s.context.trace_id
            if s.links:
                out[tid] = (s.links[0].context.trace_id % nodes + 1) % nodes
            else:
                out.setdefault(tid, tid % nodes)
    return out


def node_of(span: ReadableSpan, route: dict[int, int]) -> int:
    assert span.context is not None
    return route[span.context.trace_id]


def rows(store_cursor: duckdb.DuckDBPyConnection) -> dict[str, set[tuple[str, ...]]]:
    try:
        return {
            name: {tuple(map(str, row)) for row in store_cursor.execute(sql).fetchall()}
            for name, sql in CONTRACT.items()
        }
    finally:
        store_cursor.close()


def embedded(requests: list[list[ReadableSpan]], db: Path, end_ns: int) -> dict[str, set[tuple[str, ...]]]:
    clock = ManualClock(T0)
    config = ServeConfig(model=str(MODEL), db=str(db), otlp_grpc="127.0.0.1:0", otlp_http=None, api=None,
                         tick_interval_s=3600, decode_workers=0)  # fmt: skip
    with Service(config, clock=clock) as service:
        exporter = grpc_exporter(service.grpc_endpoint)
        for spans in requests:
            assert exporter.export(spans) == SpanExportResult.SUCCESS
        exporter.shutdown()
        clock.set(end_ns)
        service.store.tick_now()
        return rows(service.store.cursor())


def lake_config(pg: Postgres, db: str, data: Path, **kw: object) -> ServeConfig:
    return ServeConfig(model=str(MODEL), otlp_grpc="127.0.0.1:0", otlp_http=None, api=None, tick_interval_s=3600,
                       decode_workers=0, lake=pg.catalog(db), lake_data=str(data), partitions=4, **kw)  # type: ignore[arg-type]  # fmt: skip


def settle(ingest: Sequence[Service], fold: Sequence[Service]) -> None:
    """Ticks in the order the nodes' own ticks would reach: ingest (links looked up in the lake,
    key waits expired), then every fold node catches up on the hand-off and ticks."""
    for _ in range(2):  # a link found on the first tick hands its spans off on that tick
        for node in ingest:
            node.store.tick_now()
    for node in fold:
        node.sync()
        for store in node.stores:
            store.tick_now()


def finish(ingest: Sequence[Service], fold: Sequence[Service], clock: ManualClock, end_ns: int) -> dict[str, set[tuple[str, ...]]]:  # fmt: skip
    """Fold everything while the clock is where the embedded run had it, then judge at its end;
    the contract's rows, read through a fold node's query cursor (the lake's views)."""
    settle(ingest, fold)
    clock.set(end_ns)
    settle(ingest, fold)
    return rows(fold[0].store.cursor("main"))


def test_two_ingest_and_two_fold_nodes_hold_what_one_process_holds(tmp_path: Path, postgres: Postgres) -> None:
    requests = traffic(seed=11, count=60)
    end = T0 + 600 * SECOND
    expected = embedded(requests, tmp_path / "embedded.duckdb", end)
    postgres.create("roles")
    clock = ManualClock(T0)
    data = tmp_path / "lake"
    ingest = [Service(lake_config(postgres, "roles", data, role="ingest", node=f"in{i}"), clock=clock) for i in (0, 1)]
    fold = [
        Service(lake_config(postgres, "roles", data, role="fold", owns=owns), clock=clock) for owns in ((0, 2), (1, 3))
    ]
    for node in (*ingest, *fold):
        node.start()
    try:
        exporters = [grpc_exporter(node.grpc_endpoint) for node in ingest]
        split = {0: 0, 1: 0}
        route = routes(requests, 2)
        for spans in requests:
            for n in (0, 1):
                mine = [s for s in spans if node_of(s, route) == n]
                split[n] += len(mine)
                if mine:
                    assert exporters[n].export(mine) == SpanExportResult.SUCCESS
        for exporter in exporters:
            exporter.shutdown()
        got = finish(ingest, fold, clock, end)
        handed = query_live(
            fold[0].store, "SELECT node, count(DISTINCT part) FROM lake.main._handoff GROUP BY ALL ORDER BY 1"
        )
        owned = [query_live(node.store, "SELECT count(*) FROM instances")[0][0] for node in fold]
    finally:
        for node in (*fold, *ingest):
            node.stop()
    assert min(split.values()) > 100, split  # both ingest nodes took a real share
    assert handed == [("in0", 4), ("in1", 4)]  # each handed spans to every partition
    assert all(n > 0 for n in owned)  # the first partition of each fold node holds instances
    assert {row[2] for row in expected["instances"]} >= {"converged", "failed", "degraded"}
    assert any(row[3] == "duplicate_action" for row in expected["open anomalies"])
    assert expected["state_at"]  # instances were live at that moment
    assert expected["convergence"]
    for name in CONTRACT:
        assert got[name] == expected[name], name


def test_a_node_whose_flags_do_not_fit_the_lake_is_a_clear_start_error(tmp_path: Path, postgres: Postgres) -> None:
    postgres.create("flags")
    data = tmp_path / "lake"
    with pytest.raises(StartError, match="--role ingest needs --node NAME"):
        Service(lake_config(postgres, "flags", data, role="ingest"))
    with pytest.raises(StartError, match=r"--owns 4: give distinct partitions from 0 to 3"):
        Service(lake_config(postgres, "flags", data, role="fold", owns=(4,)))
    with pytest.raises(StartError, match="--role fold needs a lake"):
        Service(ServeConfig(model=str(MODEL), role="fold", partitions=2, owns=(0,)))
    with Service(lake_config(postgres, "flags", data, role="fold", owns=(0, 1, 2, 3))):
        pass
    other = dataclasses.replace(lake_config(postgres, "flags", data, role="fold", owns=(0,)), partitions=8)
    with pytest.raises(
        StartError, match="this lake has 4 key partitions, fixed when it was created; pass --partitions 4"
    ):
        Service(other).start()
    postgres.create("single")
    single = dataclasses.replace(lake_config(postgres, "single", data / "single"), partitions=None)
    with Service(single):  # a lake a single node (--role all) wrote
        pass
    with pytest.raises(StartError, match=r"written by a single node \(--role all\): its tables are not partitioned"):
        Service(lake_config(postgres, "single", data / "single", role="ingest", node="a")).start()


# -- faults: real processes, SIGKILL ----------------------------------------------------------


class Node:
    """``coordstate serve`` with a role, as a process of its own."""

    def __init__(self, pg: Postgres, db: str, data: Path, log: Path, *args: str) -> None:
        self.args = [COORDSTATE, "serve", "--model", str(MODEL), "--lake", pg.catalog(db), "--lake-data", str(data),
                     "--partitions", "2", "--otlp-grpc", "127.0.0.1:0", "--otlp-http", "127.0.0.1:0", "--api", "127.0.0.1:0", "--decode-workers", "0", *args]  # fmt: skip
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.grpc = ""
        self.api = ""

    def start(self) -> Node:
        starts = self.log.read_text().count("coordstate serving") if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            parts = self.log.read_text(errors="replace").split("coordstate serving")
            text = parts[-1] if len(parts) > starts + 1 else ""
            if "query API" in text:
                self.grpc = text.split("OTLP/gRPC")[1].split()[0]
                self.api = text.split("query API")[1].split()[0]
                return self
            assert self.proc.poll() is None, self.log.read_text()
            time.sleep(0.05)
        raise AssertionError(f"the node did not start: {self.log.read_text()}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=120)


def send_all(nodes: list[Node], requests: list[list[ReadableSpan]], *, kill: Node | None = None) -> None:
    """Every request to its ingest node, one exporter per request; ``kill`` is SIGKILLed and
    restarted halfway (what it acknowledged must survive; the rest is sent again, as a
    collector's retry would, once it is back)."""
    route = routes(requests, len(nodes))
    for i, spans in enumerate(requests):
        if kill is not None and i == len(requests) // 2:
            kill.kill()
            kill.start()
        for n, node in enumerate(nodes):
            mine = [s for s in spans if node_of(s, route) == n]
            if mine:
                exporter = grpc_exporter(node.grpc, timeout=30)
                try:
                    assert exporter.export(mine) == SpanExportResult.SUCCESS
                finally:
                    exporter.shutdown()


def test_killed_ingest_and_fold_nodes_lose_nothing_acknowledged(tmp_path: Path, postgres: Postgres) -> None:
    # every order gets its order id (no fallback keys judged at a wall-clock watermark)
    orders = Shop(Naming("3.x", renamed=True), seed=5, t0_ns=T0).orders(
        30, {"cartFailure": 0.2, "kafkaQueueProblems": 0.2}
    )
    requests = [list(r.spans) for r in ordered(spans_of(orders))]
    expected = embedded(requests, tmp_path / "embedded.duckdb", T0 + 600 * SECOND)["transitions"]
    postgres.create("faults")
    data = tmp_path / "lake"
    ingest = [
        Node(postgres, "faults", data, tmp_path / f"in{i}.log", "--role", "ingest", "--node", f"in{i}") for i in (0, 1)
    ]
    fold = [
        Node(postgres, "faults", data, tmp_path / f"fold{i}.log", "--role", "fold", "--owns", str(i)) for i in (0, 1)
    ]
    con = duckdb.connect()
    try:
        for node in (*ingest, *fold):
            node.start()
        half = len(requests) // 2
        send_all(ingest, requests[:half], kill=ingest[0])  # SIGKILL an ingest node mid-stream
        fold[1].kill()  # SIGKILL a fold node while hand-offs keep coming
        send_all(ingest, requests[half:])
        fold[1].start()
        lakes.attach(con, Lake(postgres.catalog("faults"), str(data)), read_only=True)
        sql = CONTRACT["transitions"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the linked traces' keys are looked up on ingest ticks
            got = {tuple(map(str, row)) for row in con.execute(sql).fetchall()}
            if len(got) >= len(expected):
                break
            time.sleep(0.2)
        restarts = [n.log.read_text().count("coordstate serving") for n in (*ingest, *fold)]
        handed = re.search(
            r"^coordstate_spans_handed_off_total (\d+)", httpx.get(f"{ingest[1].api}/metrics").text, re.M
        )
        lag = re.findall(
            r'^coordstate_handoff_lag_snapshots\{partition="(\d)"\} ', httpx.get(f"{fold[0].api}/metrics").text, re.M
        )
    finally:
        con.close()
        for node in (*fold, *ingest):
            node.stop()
    assert restarts == [2, 1, 1, 2]
    assert handed is not None
    assert int(handed.group(1)) > 50
    assert lag == ["0"]  # the fold node owning partition 0 reports how far behind it follows
    assert len(expected) > 200
    assert got == expected  # nothing acknowledged lost, nothing doubled


def test_a_postgresql_restart_mid_stream_costs_retries_not_data(tmp_path: Path, postgres: Postgres) -> None:
    requests = traffic(seed=23, count=30)
    end = T0 + 600 * SECOND
    expected = embedded(requests, tmp_path / "embedded.duckdb", end)
    postgres.create("pgrestart")
    clock = ManualClock(T0)
    data = tmp_path / "lake"
    ingest = Service(lake_config(postgres, "pgrestart", data, role="ingest", node="solo"), clock=clock)
    fold = Service(lake_config(postgres, "pgrestart", data, role="fold", owns=(0, 1, 2, 3)), clock=clock)
    for node in (ingest, fold):
        node.start()
    refused = 0
    try:
        third = len(requests) // 3
        for i, spans in enumerate(requests):
            if i == third:
                postgres.stop()
                exporter = grpc_exporter(ingest.grpc_endpoint, timeout=3)
                assert exporter.export(spans) == SpanExportResult.FAILURE  # UNAVAILABLE: retryable
                exporter.shutdown()
                refused = int(ingest.telemetry.snapshot().counters.get("commit_failures", 0))
                postgres.start()
            exporter = grpc_exporter(ingest.grpc_endpoint, timeout=30)
            assert exporter.export(spans) == SpanExportResult.SUCCESS
            exporter.shutdown()
        got = finish([ingest], [fold], clock, end)
    finally:
        for node in (fold, ingest):
            node.stop()
    assert refused >= 1
    for name in CONTRACT:
        assert got[name] == expected[name], name


def test_compaction_keeps_what_a_stopped_fold_node_has_not_folded(tmp_path: Path, postgres: Postgres) -> None:
    requests = traffic(seed=31, count=20)
    end = T0 + 600 * SECOND
    expected = embedded(requests, tmp_path / "embedded.duckdb", end)
    postgres.create("compact")
    clock = ManualClock(T0)
    data = tmp_path / "lake"
    ingest = Service(lake_config(postgres, "compact", data, role="ingest", node="solo"), clock=clock)
    early = Service(lake_config(postgres, "compact", data, role="fold", owns=(0, 1)), clock=clock)
    late = Service(lake_config(postgres, "compact", data, role="fold", owns=(2, 3)), clock=clock)
    for node in (ingest, early, late):
        node.start()
    late.stop()  # partitions 2 and 3 fall behind
    try:
        exporter = grpc_exporter(ingest.grpc_endpoint)
        for spans in requests:
            assert exporter.export(spans) == SpanExportResult.SUCCESS
        exporter.shutdown()
        settle([ingest], [early])
        done = subprocess.run(
            [COORDSTATE, "lake", "maintain", "--lake", postgres.catalog("compact"), "--lake-data", str(data),
             "--keep", "0s"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "hand-offs folded by every partition: 0 rows removed" in done.stdout  # 2 and 3 still read them
        late = Service(lake_config(postgres, "compact", data, role="fold", owns=(2, 3)), clock=clock)
        late.start()
        got = finish([ingest], [early, late], clock, end)
        listed = subprocess.run(
            [COORDSTATE, "query", "--lake", postgres.catalog("compact"), "--lake-data", str(data), "--format", "csv",
             "SELECT count(*) AS n FROM instances"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        for node in (late, early, ingest):
            node.stop()
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == ["n", str(len(expected["instances"]))]  # the CLI reads the views
    for name in CONTRACT:
        assert got[name] == expected[name], name
