"""``coordstate replay``: OTLP files → the same pipeline, on an event-time clock.

Reads what the OpenTelemetry Collector's ``file`` exporter writes — OTLP/JSON, one
``ExportTraceServiceRequest`` per line, or ``format: proto`` (each message behind a 4-byte
big-endian length) — and plain single-message protobuf files; any of them gzip-compressed.

A record that cannot be read (a broken JSON line, a truncated last message: the writer was
stopped mid-write) is skipped and reported with its file and place; everything else is replayed.

Determinism: the clock is the event-time watermark (the latest span end seen, minus the model's
``watermark.lateness``, exactly as when serving), the writer never ticks on its own, and requests
are committed in groups of ``REPLAY_BATCH_RECORDS`` matched spans, each followed by one tick.
(The group size changes no result: when a condition began and ended is read from the
transitions, not from the ticks; see ``processors/rules.py``.) The same files therefore
always give the same tables, and a collector's file whose services' batches sit out of order by
up to ``lateness`` gives what an ordered one gives. At the end everything has been seen: the
clock moves to the latest event time plus the longest ``key.wait``, so that buffered spans are
settled (fallback key, unkeyed or orphan).
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from analytics.common.telemetry import Telemetry
from analytics.write.store import CommitReceipt, Store
from collector.decode import PayloadError, WireRequest, decode_request, parse_json, parse_protobuf
from processors.clock import EventTimeClock
from processors.matching import CompiledModel
from processors.types import SpanRecord

#: matched spans committed together (one commit and one tick per group: a tick per request made a
#: replay of a million per-service batches spend most of its time in commits)
REPLAY_BATCH_RECORDS = 10_000


class ReplayError(RuntimeError):
    """A file cannot be read as OTLP; the message names the file and the place."""


@dataclass(frozen=True, slots=True)
class Skipped:
    """A record of a file that could not be read: where, and why."""

    place: str  # "FILE:LINE" or "FILE: bytes A-B"
    reason: str


@dataclass(frozen=True, slots=True)
class ReplaySummary:
    files: int
    requests: int
    spans: int
    rejected: int
    transitions: int
    skipped: tuple[Skipped, ...] = ()


def _read(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ReplayError(f"{path}: cannot read the file: {exc.strerror}") from exc
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise ReplayError(f"{path}: looks gzip-compressed but cannot be decompressed: {exc}") from exc
    return data


def _length_prefixed(data: bytes) -> tuple[list[bytes], int]:
    """Complete frames, and where the first incomplete one starts (``len(data)``: none)."""
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        if pos + 4 > len(data):
            break
        (size,) = struct.unpack(">I", data[pos : pos + 4])
        if pos + 4 + size > len(data):
            break
        out.append(data[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return out, pos


def _try_parse(frame: bytes) -> WireRequest | None:
    try:
        return parse_protobuf(frame)
    except PayloadError:
        return None


def requests_in(path: Path) -> Iterator[WireRequest | Skipped]:
    """Every export request in one file, whatever of the supported formats it is in, parsed one
    at a time as it is consumed (a parsed million-span file would hold ~1 GB).

    Records that cannot be read come as :class:`Skipped`; a file that is none of the formats
    raises :class:`ReplayError`.
    """
    data = _read(path)
    if data.lstrip()[:1] in (b"{", b"["):
        for lineno, line in enumerate(data.splitlines(), start=1):
            if line.strip():
                try:
                    yield parse_json(line)
                except PayloadError as exc:
                    yield Skipped(f"{path}:{lineno}", str(exc))
        return
    frames, end = _length_prefixed(data)
    first = _try_parse(frames[0]) if frames else None
    if first is None:  # not length-prefixed (a message's first bytes make no plausible length): one message
        try:
            single = parse_protobuf(data)
        except PayloadError as exc:
            raise ReplayError(
                f"{path}: neither OTLP/JSON lines nor OTLP protobuf (single or length-prefixed): {exc}"
            ) from exc
        yield single
        return
    size = len(data)
    del data
    yield first
    for number, frame in enumerate(frames[1:], start=2):
        parsed = _try_parse(frame)
        yield parsed if parsed is not None else Skipped(f"{path}: message {number}", "not an OTLP protobuf message")
    if end != size:
        yield Skipped(f"{path}: bytes {end}-{size}", "a truncated last message (the file ends inside it)")


def _check_readable(files: list[Path]) -> None:
    """Every file can be opened, before the database is touched (no half-done replay for a typo)."""
    for path in files:
        if path.is_dir():
            raise ReplayError(f"{path}: is a directory; pass the files in it (e.g. {path}/*.json)")
        try:
            path.open("rb").close()
        except OSError as exc:
            raise ReplayError(f"{path}: cannot read the file: {exc.strerror}") from exc


def replay(
    files: list[Path], model: CompiledModel, db: Path, *, progress: bool = True, settle: bool = False
) -> ReplaySummary:
    """Replay ``files`` into ``db``. ``settle``: at the end, also let every deadline and grace
    period pass (what the model makes of instances the files stop in the middle of: ``fit``)."""
    _check_readable(files)
    clock = EventTimeClock(model.model.watermark.lateness)
    telemetry = Telemetry()
    store = Store(db, model, clock, telemetry, tick_interval_s=None)
    store.open()
    requests = spans = rejected = 0
    skipped: list[Skipped] = []
    try:
        bar = tqdm(
            total=sum(f.stat().st_size for f in files),
            unit="B",
            unit_scale=True,
            desc="replay",
            disable=not progress,
        )
        batch: list[SpanRecord] = []
        batch_end = 0
        in_flight: list[Future[CommitReceipt]] = []

        def commit() -> None:
            """One group: commit it (the clock observes its latest event time after the commit),
            then a tick. Queued, not awaited: the next group is read and decoded meanwhile."""
            in_flight.append(store.submit(list(batch), batch_end))
            in_flight.append(store.request_tick())
            batch.clear()
            while len(in_flight) > 4:  # at most two groups ahead of the writer
                in_flight.pop(0).result()

        with bar:
            for path in files:
                for request in requests_in(path):
                    if isinstance(request, Skipped):
                        skipped.append(request)
                        continue
                    decoded = decode_request(request, model)
                    requests += 1
                    spans += decoded.received
                    rejected += decoded.rejected_count
                    batch.extend(decoded.records)
                    batch_end = max(batch_end, decoded.max_time_ns)
                    if len(batch) >= REPLAY_BATCH_RECORDS:
                        commit()
                bar.update(path.stat().st_size)
            commit()
            for future in in_flight:
                future.result()
        longest_wait = max(w.key.wait for w in model.workflows.values())
        if settle:
            longest_wait += max(w.deadline + w.grace for w in model.workflows.values())
        clock.observe(clock.seen_ns + clock.lateness_ns + longest_wait)
        store.tick_now()
    finally:
        store.close()
    written = telemetry.snapshot().counters.get("transitions_written", 0)
    return ReplaySummary(len(files), requests, spans, rejected, written, tuple(skipped))
