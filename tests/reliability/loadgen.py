"""An open-loop OTLP/gRPC load generator: requests are fired on a schedule whether or not earlier
ones were answered (that is what makes overload), in separate *spawned* processes."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from collections import Counter
from typing import Any

import grpc

METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
MAX_OUTSTANDING = 256


def _worker(endpoint: str, payloads: list[bytes], rate: float, seconds: float, out: Any) -> None:
    channel = grpc.insecure_channel(endpoint, options=[("grpc.max_send_message_length", 64 << 20)])
    export = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    outstanding = threading.Semaphore(MAX_OUTSTANDING)

    def done(future: grpc.Future) -> None:
        try:
            future.result()
            key = "ok"
        except grpc.RpcError as exc:
            code = exc.code()
            key = code.name
            if code == grpc.StatusCode.UNAVAILABLE:
                trailers = dict(exc.trailing_metadata() or ())
                key += "+RetryInfo" if "grpc-status-details-bin" in trailers else ""
        with lock:
            counts[key] += 1
        outstanding.release()

    start = time.perf_counter()
    sent = 0
    while time.perf_counter() - start < seconds:
        due = start + sent / rate
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)  # the schedule of an open-loop generator
        if not outstanding.acquire(timeout=5):
            with lock:
                counts["client_backlog"] += 1
            continue
        export.future(payloads[sent % len(payloads)], timeout=30).add_done_callback(done)
        sent += 1
    for _ in range(MAX_OUTSTANDING):  # wait for every answer
        outstanding.acquire(timeout=60)
    channel.close()
    out.put(dict(counts))


def _spawn(target: Any, args: tuple[Any, ...], processes: int, seconds: float) -> Counter[str]:
    """Run ``target(*args, out)`` in spawned processes (never forked: gRPC threads do not survive
    a fork) and add up the answers they report."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, out)) for _ in range(processes)]
    for p in procs:
        p.start()
    total: Counter[str] = Counter()
    for _ in procs:
        total.update(out.get(timeout=seconds + 180))
    for p in procs:
        p.join(timeout=30)
    return total


def open_loop(
    endpoint: str, payloads: list[bytes], requests_per_s: float, seconds: float, processes: int = 2
) -> Counter[str]:
    """Requests fired on schedule, whatever the answers: offered load independent of capacity."""
    return _spawn(_worker, (endpoint, payloads, requests_per_s / processes, seconds), processes, seconds)


def _closed_worker(endpoint: str, payloads: list[bytes], seconds: float, threads: int, out: Any) -> None:
    channel = grpc.insecure_channel(endpoint, options=[("grpc.max_send_message_length", 64 << 20)])
    export = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
    done = Counter[str]()
    lock = threading.Lock()

    def loop(offset: int) -> None:
        start = time.perf_counter()
        i = offset
        while time.perf_counter() - start < seconds:
            try:
                export(payloads[i % len(payloads)], timeout=30)
                key = "ok"
            except grpc.RpcError as exc:
                key = exc.code().name
            with lock:
                done[key] += 1
            i += 1

    workers = [threading.Thread(target=loop, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    channel.close()
    out.put(dict(done))


def closed_loop(
    endpoint: str, payloads: list[bytes], seconds: float, processes: int = 2, threads: int = 2
) -> Counter[str]:
    """Senders that each wait for their answer: what the server can commit (its capacity)."""
    return _spawn(_closed_worker, (endpoint, payloads, seconds, threads), processes, seconds)
