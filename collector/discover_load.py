"""What ``discover`` loads: every span (trace, service, generalised name, kind, times, error,
root), event, link and business-key value of the files, as Arrow tables.

The per-span Python is the bulk of discover's own time, so large files are cut into parts that
decoder processes load side by side (length-prefixed protobuf and JSON lines; a single-message
file is loaded here).
"""

from __future__ import annotations

import multiprocessing
import re
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa

from collector import wire
from collector.decode import PayloadError, WireRequest, _service, parse_json, parse_protobuf
from collector.replay import Skipped, _length_prefixed, _read, requests_in

#: parts per worker process (more parts, better balance; each costs a round trip)
PARTS_PER_WORKER = 4
#: below this many bytes, processes cost more than they save
PARALLEL_BYTES = 8 * 1024 * 1024
_ID_PART = re.compile(r"(?<![A-Za-z])(?=[A-Za-z0-9_-]*\d)[A-Za-z0-9_-]{4,}|[0-9a-fA-F-]{16,}")

Tables = dict[str, pa.Table]


def generalise(name: str) -> str:
    """Ids embedded in a name become ``*``: ``GET /api/products/1YMWWN1N4O`` → ``GET /api/products/*``."""
    return _ID_PART.sub("*", name) if any(c.isdigit() for c in name) else name


def string_attrs(blobs: Iterable[bytes]) -> Iterator[tuple[str, str]]:
    for blob in blobs:
        try:
            kv = wire.key_value(blob)
        except Exception:
            continue
        if kv.value.WhichOneof("value") == "string_value" and 0 < len(kv.value.string_value) <= 128:
            yield kv.key, kv.value.string_value


def collect(requests: Iterable[WireRequest], key: str) -> tuple[Tables, int]:
    """The four tables of these requests, and how many spans they hold."""
    prefix = wire.key_prefix(key)
    names: dict[str, str] = {}
    trace_, service_, name_, kind_, start_, end_, error_, root_ = ([] for _ in range(8))
    ev_trace: list[str] = []
    ev_service: list[str] = []
    ev_name: list[str] = []
    ev_time: list[int] = []
    links: dict[str, list[str]] = {"trace": [], "target": []}
    keys: dict[str, list[str]] = {"trace": [], "value": []}
    for request in requests:
        for resource, scopes in request.resources:
            service = _service(resource)
            resource_key = next((kv.value.string_value for kv in resource.attributes if kv.key == key), "")
            for _, scope in scopes:
                for sp in scope.spans:
                    trace = sp.trace_id.hex()
                    name = names.get(sp.name)
                    if name is None:
                        name = names[sp.name] = generalise(sp.name)
                    trace_.append(trace)
                    service_.append(service)
                    name_.append(name)
                    kind_.append(sp.kind)
                    start_.append(sp.start_time_unix_nano)
                    end_.append(sp.end_time_unix_nano)
                    error_.append(sp.status.code == 2)
                    root_.append(not sp.parent_span_id)
                    for ev in sp.events:
                        event = names.get(ev.name)
                        if event is None:
                            event = names[ev.name] = generalise(ev.name)
                        ev_trace.append(trace)
                        ev_service.append(service)
                        ev_name.append(event)
                        ev_time.append(ev.time_unix_nano or sp.end_time_unix_nano)
                    for link in sp.links:
                        links["trace"].append(trace)
                        links["target"].append(link.trace_id.hex())
                    for blob in sp.attributes:
                        if blob.startswith(prefix):
                            for k, value in string_attrs([blob]):
                                if k == key:
                                    keys["trace"].append(trace)
                                    keys["value"].append(value)
                    if resource_key:
                        keys["trace"].append(trace)
                        keys["value"].append(resource_key)
    spans = pa.table(
        {"trace": trace_, "service": service_, "name": name_, "kind": pa.array(kind_, pa.int32()),
         "start": pa.array(start_, pa.int64()), "end": pa.array(end_, pa.int64()), "error": error_, "root": root_},
    )  # fmt: skip
    events = pa.table({"trace": pa.array(ev_trace, pa.string()), "service": pa.array(ev_service, pa.string()),
                       "name": pa.array(ev_name, pa.string()), "time": pa.array(ev_time, pa.int64())})  # fmt: skip
    return {
        "spans": spans,
        "events": events,
        "links": pa.table({k: pa.array(v, pa.string()) for k, v in links.items()}),
        "keys": pa.table({k: pa.array(v, pa.string()) for k, v in keys.items()}),
    }, len(trace_)


def _parsed(frames: list[bytes], json: bool) -> Iterator[WireRequest]:
    for frame in frames:
        try:
            yield parse_json(frame) if json else parse_protobuf(frame)
        except PayloadError:
            continue  # discover reads what it can; replay and fit name what they skip


def _collect_part(frames: list[bytes], json: bool, key: str) -> tuple[Tables, int]:
    return collect(_parsed(frames, json), key)


def _raw(path: Path) -> tuple[list[bytes], bool] | None:
    """The file's records left encoded (JSON lines, or length-prefixed messages filling it exactly)."""
    data = _read(path)
    if data.lstrip()[:1] in (b"{", b"["):
        return [line for line in data.splitlines() if line.strip()], True
    frames, end = _length_prefixed(data)
    return (frames, False) if frames and end == len(data) else None


def load(files: list[Path], key: str, workers: int) -> Iterator[tuple[Tables, int]]:
    """The tables of every file, in parts: loaded by ``workers`` processes when the files are
    large enough, else here."""
    if workers < 2 or sum(f.stat().st_size for f in files) < PARALLEL_BYTES:
        yield collect((r for f in files for r in requests_in(f) if not isinstance(r, Skipped)), key)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        for path in files:
            raw = _raw(path)
            if raw is None:
                yield collect((r for r in requests_in(path) if not isinstance(r, Skipped)), key)
                continue
            frames, json = raw
            size = -(-len(frames) // (workers * PARTS_PER_WORKER))
            parts: list[Any] = [
                pool.submit(_collect_part, frames[i : i + size], json, key) for i in range(0, len(frames), size)
            ]
            del frames, raw
            for part in parts:
                yield part.result()
