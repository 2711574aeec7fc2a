"""What OTLP files contain, in one pass: the spans and events by service and name, and which
traces carry a workflow's business key. What ``coordstate fit`` and ``discover`` start from.

Reads the files ``replay`` reads (OTLP/JSON lines, protobuf, length-prefixed, gzip) through the
receivers' lean wire view, so attributes are only parsed when a tool needs them.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collector import wire
from collector.decode import WireRequest, _service
from collector.replay import Skipped, requests_in

SPAN_KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


@dataclass(slots=True)
class Traffic:
    """Counts by (service, span name) and (service, event name); traces with a key attribute."""

    spans: int = 0
    requests: int = 0
    span_names: Counter[tuple[str, str]] = field(default_factory=Counter)
    event_names: Counter[tuple[str, str]] = field(default_factory=Counter)
    traces: set[bytes] = field(default_factory=set)
    #: trace id → the key attributes found on its spans (or their resource)
    keyed: dict[bytes, set[str]] = field(default_factory=dict)
    #: (trace id, service, span name) of every span, for "what do keyed traces contain"
    names_by_trace: list[tuple[bytes, str, str]] = field(default_factory=list)
    #: trace id → trace ids its spans link to
    links: dict[bytes, set[bytes]] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)

    def keyed_traces(self, attributes: Iterable[str]) -> set[bytes]:
        """Traces with one of ``attributes`` on some span, and traces linking to such a trace."""
        wanted = set(attributes)
        direct = {t for t, found in self.keyed.items() if found & wanted}
        return direct | {t for t, targets in self.links.items() if targets & direct}


def _spans(request: WireRequest) -> Iterator[tuple[str, Any, Any]]:
    for resource, scopes in request.resources:
        service = sys.intern(_service(resource))
        for _, scope in scopes:
            for sp in scope.spans:
                yield service, resource, sp


def read_traffic(files: Iterable[Path], key_attributes: Iterable[str]) -> Traffic:
    """Walk every span of every file once."""
    out = Traffic()
    needles = {wire.key_prefix(k): k for k in key_attributes}
    prefixes = tuple(needles)
    for path in files:
        for request in requests_in(path):
            if isinstance(request, Skipped):
                out.skipped.append(request)
                continue
            out.requests += 1
            for service, resource, sp in _spans(request):
                _count(out, service, resource, sp, needles, prefixes)
    return out


def _count(out: Traffic, service: str, resource: Any, sp: Any, needles: dict[bytes, str], prefixes: tuple[bytes, ...]) -> None:  # fmt: skip
    trace = bytes(sp.trace_id)
    out.spans += 1
    out.traces.add(trace)
    name = sys.intern(sp.name)  # a million spans share a few hundred names
    out.span_names[(service, name)] += 1
    out.names_by_trace.append((trace, service, name))
    for ev in sp.events:
        out.event_names[(service, ev.name)] += 1
    if sp.links:
        out.links.setdefault(trace, set()).update(bytes(link.trace_id) for link in sp.links)
    if prefixes:
        found = {needles[p] for blob in sp.attributes for p in prefixes if blob.startswith(p)}
        names = needles.values()
        found |= {kv.key for kv in resource.attributes if kv.key in names}
        if found:
            out.keyed.setdefault(trace, set()).update(found)
