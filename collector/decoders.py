"""Where export requests are parsed and decoded: worker processes, or the receiving thread.

Decoding is pure Python over every span of a request; in the server's process it would hold the
GIL that the store's writer thread needs (and each DuckDB statement hands the GIL back and forth
several times, so a busy neighbour thread slows every insert). Worker processes decode on the
other cores and send back only the records the model uses: ~30 KB instead of ~400 KB for an
ordinary 1,000-span export.

A worker that dies (a crash on hostile input, the OOM killer) costs only the requests it held:
they get a retryable error, and the pool is replaced for the next ones.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from collector.decode import Decoded, WireRequest, decode_request
from processors.matching import CompiledModel
from processors.model import parse_model

Parse = Callable[[bytes], WireRequest]
DECODE_TIMEOUT_S = 60.0
MAX_AUTO_WORKERS = 4
PARENT_POLL_S = 0.5

_MODEL: CompiledModel | None = None


class DecoderUnavailable(RuntimeError):
    """A decoder process died or did not answer; the request may be retried."""


def auto_workers() -> int:
    """One decoder process per CPU (at most 4); none on a single CPU, where they cannot help."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if cpus < 2 else min(MAX_AUTO_WORKERS, cpus)


def _init_worker(model_text: str, model_source: str, server: int) -> None:
    """``server``: the pid of the process that started the pool, taken there — not our parent as
    we find it, which is already init if the server was killed while we were starting up (a pool
    may start a worker late), and a worker waiting for init to die would wait for ever."""
    global _MODEL
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle, not ours
    threading.Thread(target=_exit_with_parent, args=(server,), name="parent-watch", daemon=True).start()
    _MODEL = CompiledModel(parse_model(model_text, model_source))


def _exit_with_parent(parent: int) -> None:
    """A server killed outright (SIGKILL, OOM) cannot stop its pool: its decoders leave by themselves.

    (A worker holds both ends of the pool's call queue, so it would never see the pipe close.)
    """
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)  # nothing to wait on: the kernel only re-parents us
    os._exit(0)


def _decode_in_worker(payload: bytes, parse: Parse) -> Decoded:
    assert _MODEL is not None, "decoder worker without a model"
    return decode_request(parse(payload), _MODEL)


class Decoders:
    """Parse + decode, in ``workers`` processes (0: in the calling thread)."""

    def __init__(self, model: CompiledModel, model_text: str, model_source: str, workers: int) -> None:
        self.model = model
        self.workers = workers
        self._init_args = (model_text, model_source)
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        if self.workers > 0:
            self._pool = self._new_pool()
            # start every worker now, not on the first request, so start-up problems show at once
            for f in [self._pool.submit(os.getpid) for _ in range(self.workers)]:
                f.result(timeout=DECODE_TIMEOUT_S)

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),  # never fork a process with gRPC threads
            initializer=_init_worker,
            initargs=(*self._init_args, os.getpid()),
        )

    def decode(self, payload: bytes, parse: Parse) -> Decoded:
        """Raises ``PayloadError`` (the request is bad) or :class:`DecoderUnavailable` (retry)."""
        pool = self._pool
        if pool is None:
            return decode_request(parse(payload), self.model)
        try:
            future = pool.submit(_decode_in_worker, payload, parse)
        except BrokenProcessPool as exc:
            self._replace(pool)
            raise DecoderUnavailable("a decoder process stopped; retry") from exc
        except RuntimeError as exc:  # submit after shutdown: the server is stopping
            raise DecoderUnavailable("coordstate is shutting down; retry") from exc
        try:
            return future.result(timeout=DECODE_TIMEOUT_S)
        except BrokenProcessPool as exc:
            self._replace(pool)
            raise DecoderUnavailable("a decoder process stopped while decoding this request; retry") from exc
        except TimeoutError as exc:
            raise DecoderUnavailable("decoding this request took too long; retry") from exc

    def worker_pids(self) -> list[int]:
        """Process ids of the live decoder processes (empty when decoding in the calling thread)."""
        pool = self._pool
        processes = getattr(pool, "_processes", None) or {}
        return sorted(p.pid for p in processes.values() if p.is_alive() and p.pid is not None)

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is broken:
                self._pool = self._new_pool()
        broken.shutdown(wait=False, cancel_futures=True)

    def stop(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
