"""Ingest benchmark: the real gRPC receiver, driven from separate processes, figures in one run.

    .venv/bin/python bench/ingest.py [--seconds 10] [--clients 10] [--spans-per-request 1000]
                                     [--seed-transitions N]   # start on an aged database

Prints, in one run on this machine:
  1. the parse-and-walk ceiling: protobuf parse + visiting every span in Python, no storage;
     and the same work in a gRPC server's handler, driven like the real one (what the machine
     leaves for any receiver before storage costs anything);
  2. end-to-end committed spans/s through `coordstate serve` (acknowledged = committed);
  3. their ratio;
  4. p50/p99 export latency at half the measured maximum rate (exporters spread over the
     interval, not in lockstep; 30 s by default, so p99 rests on 1,000+ exports);
  5. the server's peak RSS, and the database's size after the run.
Requests look like real services' exports: ~20% of spans match the model (orders across
checkout/payment/inventory/shipping, the order id only on the root), the rest is ordinary
traffic (HTTP, DB, cache spans) with 10–16 attributes and some events. The clients rewrite the
trace ids and order ids of every export, so each one is new data (nothing is a re-delivery).
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import os
import random
import re
import shlex
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

ROOT = Path(__file__).resolve().parent.parent
METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
NOISE = [
    ("frontend", "GET /api/products"),
    ("frontend", "GET /api/cart"),
    ("cart", "HGET"),
    ("catalog", "SELECT products"),
    ("recommendation", "ListRecommendations"),
    ("ad", "GetAds"),
    ("currency", "Convert"),
    ("checkout", "prepareOrderItemsAndShippingQuoteFromCart"),
]


#: placeholders in the template requests: every export gets its own trace ids and order ids
TRACE_MARKER = b"\xc0\x02\xd5\x7a\x7e\x4d\xa7\xa1"
ORDER_MARKER = b"@@@@@@@@"


def fresh(template: bytes, client: int, n: int) -> bytes:
    """The template with trace and order ids no other export of this run uses (same length)."""
    return template.replace(TRACE_MARKER, struct.pack(">II", client + 1, n + 1)).replace(
        ORDER_MARKER, b"%02x%06x" % (client, n)
    )


def _attr(span: Span, key: str, value: str | int) -> None:
    kv = span.attributes.add()
    kv.key = key
    if isinstance(value, int):
        kv.value.int_value = value
    else:
        kv.value.string_value = value


def build_request(seed: int, spans_per_request: int, double_charges: float = 0.0) -> bytes:
    """One export request with ~20% matching spans, grouped by service like an SDK batch;
    ``double_charges``: the share of orders charged twice (a duplicate_action each)."""
    rnd = random.Random(seed)
    by_service: dict[str, list[Span]] = {}
    t0 = time.time_ns()
    while sum(len(v) for v in by_service.values()) < spans_per_request:
        # the markers are rewritten per request by the clients, so every export is fresh data
        trace_id = TRACE_MARKER + rnd.randbytes(8)
        order_id = f"order-{ORDER_MARKER.decode()}-{seed}-{rnd.randrange(1 << 40):x}"
        root_id = rnd.randbytes(8)
        start = t0 + rnd.randrange(1_000_000_000)
        steps = [
            ("checkout", "PlaceOrder", 0, 900),
            ("payment", "Charge", 100, 200),
            ("inventory", "Reserve", 320, 80),
            ("shipping", "ShipOrder", 500, 300),
        ]
        if double_charges and rnd.random() < double_charges:
            steps.append(("payment", "Charge", 150, 200))  # a retry that charged again
        for service, name, offset, dur in steps:
            sp = Span(
                trace_id=trace_id,
                span_id=root_id if name == "PlaceOrder" else rnd.randbytes(8),
                name=name,
            )
            if name != "PlaceOrder":
                sp.parent_span_id = root_id
            sp.start_time_unix_nano = start + offset * 1_000_000
            sp.end_time_unix_nano = sp.start_time_unix_nano + dur * 1_000_000
            sp.status.code = Status.STATUS_CODE_OK
            for i in range(10):
                _attr(sp, f"rpc.attr.{i}", f"value-{i}")
            if name == "PlaceOrder":
                _attr(sp, "app.order.id", order_id)
            if name == "Reserve":
                ev = sp.events.add()
                ev.name = "inventory.reserved"
                ev.time_unix_nano = sp.start_time_unix_nano + 40_000_000
            by_service.setdefault(service, []).append(sp)
        for _ in range(16):
            service, name = rnd.choice(NOISE)
            sp = Span(trace_id=trace_id, span_id=rnd.randbytes(8), parent_span_id=root_id, name=name)
            sp.start_time_unix_nano = start + rnd.randrange(900_000_000)
            sp.end_time_unix_nano = sp.start_time_unix_nano + rnd.randrange(1, 50_000_000)
            for i in range(rnd.randrange(10, 17)):
                _attr(
                    sp,
                    f"http.attr.{i}",
                    rnd.choice(["GET", "200", "/api/products/OLJCESPC7Z", "ok"]),
                )
            _attr(sp, "http.status_code", 200)
            if rnd.random() < 0.2:
                ev = sp.events.add()
                ev.name = "cache.miss"
                ev.time_unix_nano = sp.start_time_unix_nano
            by_service.setdefault(service, []).append(sp)
    request = ExportTraceServiceRequest()
    for service, spans in by_service.items():
        rs = request.resource_spans.add()
        kv = rs.resource.attributes.add()
        kv.key = "service.name"
        kv.value.string_value = service
        for key, value in (
            ("telemetry.sdk.language", "go"),
            ("host.name", "node-1"),
            ("k8s.pod.name", "pod-abc"),
        ):
            extra = rs.resource.attributes.add()
            extra.key = key
            extra.value.string_value = value
        ss = rs.scope_spans.add()
        ss.scope.name = "bench"
        ss.spans.extend(spans)
    payload: bytes = request.SerializeToString()
    return payload


def parse_and_walk(payloads: list[bytes], seconds: float) -> float:
    """The ceiling: protobuf parse + touching every span in Python, nothing stored."""
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for payload in payloads:
            n += parse_and_walk_one(payload)
    return n / (time.perf_counter() - start)


def parse_and_walk_one(payload: bytes) -> int:
    req = ExportTraceServiceRequest()
    req.ParseFromString(payload)
    n = 0
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            for sp in ss.spans:
                _ = sp.name
                n += 1
    return n


def _walk_server(port_out: mp.Queue, stop: Any) -> None:  # type: ignore[type-arg]
    """A gRPC server whose handler does the ceiling's work (parse + walk) and stores nothing."""
    from concurrent.futures import ThreadPoolExecutor

    def export(payload: bytes, context: object) -> bytes:
        parse_and_walk_one(payload)
        return b""

    server = grpc.server(
        ThreadPoolExecutor(max_workers=32),
        options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.so_reuseport", 0)],
    )
    rpc = grpc.unary_unary_rpc_method_handler(export, request_deserializer=None, response_serializer=None)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("opentelemetry.proto.collector.trace.v1.TraceService", {"Export": rpc}),)
    )
    port_out.put(server.add_insecure_port("127.0.0.1:0"))
    server.start()
    stop.wait()
    server.stop(None).wait()


def ceiling_over_grpc(payloads: list[bytes], spans_per: int, clients: int, seconds: float) -> float:
    """The ceiling's own work behind a gRPC server, driven like the real one: nothing stored.

    What this machine allows any receiver that parses and walks every span, with the exporters
    on the same cores: the ratio the end-to-end figure can reach before storage costs anything.
    """
    ctx = mp.get_context("spawn")  # a fresh interpreter: never fork a process with gRPC threads
    port_out: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    stop = ctx.Event()
    proc = ctx.Process(target=_walk_server, args=(port_out, stop))
    proc.start()
    try:
        endpoint = f"127.0.0.1:{port_out.get(timeout=60)}"
        drive(endpoint, payloads, spans_per, clients, 2.0, None)  # warm-up
        rate, _, _ = drive(endpoint, payloads, spans_per, clients, seconds, None)
    finally:
        stop.set()
        proc.join(timeout=30)
    return rate


def _client(
    client: int,
    endpoint: str,
    payloads: list[bytes],
    spans_per: int,
    seconds: float,
    rate: float | None,
    phase: float,  # where in its interval this client sends: exporters are not in lockstep
    out: mp.Queue,  # type: ignore[type-arg]
) -> None:
    channel = grpc.insecure_channel(endpoint, options=[("grpc.max_send_message_length", 64 << 20)])
    export = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
    latencies: list[float] = []
    sent = retries = 0
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < seconds:
        if rate:
            due = start + (sent / spans_per + phase) / rate * spans_per
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)  # pacing the load generator, not waiting for a result
        payload = fresh(payloads[i % len(payloads)], client, i)
        t = time.perf_counter()
        try:
            export(payload, timeout=30)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                retries += 1
                continue
            raise
        latencies.append(time.perf_counter() - t)
        sent += spans_per
        i += 1
    out.put((sent, time.perf_counter() - start, latencies, retries))
    channel.close()


_CLIENT_IDS = itertools.count()


def drive(
    endpoint: str,
    payloads: list[bytes],
    spans_per: int,
    clients: int,
    seconds: float,
    rate: float | None,
) -> tuple[float, list[float], int]:
    out: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    ids = _CLIENT_IDS
    per_client = None if rate is None else rate / clients
    procs = [
        mp.Process(
            target=_client,
            args=(
                next(ids),
                endpoint,
                payloads[c::clients] or payloads,
                spans_per,
                seconds,
                per_client,
                c / clients,
                out,
            ),
        )
        for c in range(clients)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join()
    total = sum(r[0] for r in results)
    elapsed = max(r[1] for r in results)
    return total / elapsed, [lat for r in results for lat in r[2]], sum(r[3] for r in results)


def mark_folded(con: object) -> None:
    """Say the seeded rows were folded by the benchmark's model, as a node that wrote them would
    have: a restart trusts them (processors/fold.py FOLD_VERSION, analytics/write/persist.py)."""
    from analytics.write.persist import write_folded
    from analytics.write.store import fold_fingerprint
    from collector.service import load_compiled

    write_folded(con, fold_fingerprint(load_compiled(str(ROOT / "otel-config/models/orders.yaml"))), time.time_ns())


def seed_database(db: Path, transitions: int) -> None:
    """A database as a server finds it after a day of traffic (the query benchmark's seed)."""
    from analytics.write.connection import connect
    from analytics.write.schema import migrate

    sys.path.insert(0, str(ROOT / "bench"))
    from queries import SEED  # bench/queries.py

    started = time.perf_counter()
    con = connect(str(db))
    try:
        migrate(con)
        con.execute(SEED.format(instances=transitions // 7))
        mark_folded(con)
        con.execute("CHECKPOINT")
    finally:
        con.close()
    print(
        f"seeded database:             {transitions:12,} transitions, {db.stat().st_size / 2**20:,.0f} MiB "
        f"({time.perf_counter() - started:.0f} s)"
    )


def peak_rss_mib(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"VmHWM:\s+(\d+) kB", text)
    return int(found.group(1)) / 1024 if found else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--clients",
        type=int,
        default=10,
        help="concurrent exporters (a Collector's OTLP exporter sends with 10 consumers by default)",
    )
    parser.add_argument("--half-load-seconds", type=float, default=30.0, help="long enough for a p99 of 1,000+ exports")
    parser.add_argument("--spans-per-request", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=24, help="distinct payloads to cycle through")
    parser.add_argument(
        "--serve-args", default="", help="extra options for `coordstate serve`, e.g. '--decode-workers 0'"
    )
    parser.add_argument(
        "--seed-transitions",
        type=int,
        default=0,
        metavar="N",
        help="start on a database already holding N transitions (a day of orders, as bench/queries.py seeds)",
    )
    args = parser.parse_args()

    payloads = [build_request(seed, args.spans_per_request) for seed in range(args.requests)]
    spans_per = sum(
        len(ss.spans)
        for rs in ExportTraceServiceRequest.FromString(payloads[0]).resource_spans
        for ss in rs.scope_spans
    )
    print(
        f"payload: {spans_per} spans/request, {len(payloads[0]) / 1024:.0f} KiB/request, {len(payloads)} distinct requests"
        f"; DuckDB {duckdb.__version__}, {os.cpu_count()} CPUs"
    )
    ceiling = parse_and_walk(payloads, min(args.seconds, 5.0))
    print(f"parse-and-walk ceiling:      {ceiling:12,.0f} spans/s")
    behind_grpc = ceiling_over_grpc(payloads, spans_per, args.clients, args.seconds)
    print(
        f"the same work behind gRPC:   {behind_grpc:12,.0f} spans/s  (ratio {behind_grpc / ceiling:.2f}: "
        f"{args.clients} exporters, nothing stored)"
    )

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.duckdb"
        if args.seed_transitions:
            seed_database(db, args.seed_transitions)
        coordstate = str(Path(sys.executable).with_name("coordstate"))
        server = subprocess.Popen(
            [coordstate, "serve", "--model", str(ROOT / "otel-config/models/orders.yaml"), "--db", str(db),
             "--otlp-grpc", "127.0.0.1:0", "--otlp-http", "127.0.0.1:0", "--api", "127.0.0.1:0",
             *shlex.split(args.serve_args)],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        try:
            assert server.stdout is not None
            endpoint = ""
            for line in server.stdout:
                found = re.search(r"OTLP/gRPC\s+(\S+)", line)
                if found:
                    endpoint = found.group(1)
                    break
            if not endpoint:
                raise SystemExit("coordstate serve did not start")
            # warm-up, then the maximum rate with unpaced clients
            drive(endpoint, payloads, spans_per, args.clients, 2.0, None)
            max_rate, _, refused = drive(endpoint, payloads, spans_per, args.clients, args.seconds, None)
            print(f"end-to-end committed:        {max_rate:12,.0f} spans/s  ({refused} requests refused and retried)")
            print(f"ratio end-to-end / ceiling:  {max_rate / ceiling:12.2f}")
            half_rate, lat, _ = drive(endpoint, payloads, spans_per, args.clients, args.half_load_seconds, max_rate / 2)
            lat.sort()
            p50 = statistics.median(lat) * 1000
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
            print(
                f"at half load ({half_rate:,.0f} spans/s): p50 {p50:.1f} ms, p99 {p99:.1f} ms over {len(lat):,} exports"
            )
            print(f"server peak RSS:             {peak_rss_mib(server.pid):12.0f} MiB")
        finally:
            server.terminate()
            server.wait(timeout=120)
        if db.exists():
            print(f"database after the run:      {db.stat().st_size / 2**20:12.0f} MiB")


if __name__ == "__main__":
    main()
