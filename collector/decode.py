"""OTLP trace requests → span records: validation, the model's projection, nothing more.

The decoder walks every span once and builds a :class:`SpanRecord` only for spans the model can
use: spans matching a step, spans with events matching a step, and spans carrying a business key
(their trace's other spans may need it). Everything else is counted as ``unmatched`` and never
materialised. Only the attributes in the model's projection are read.

Malformed spans are rejected one by one (OTLP partial success); the rest of the request stands.
OTLP/JSON is decoded with hex trace and span ids, as the OTLP specification says — the stock
protobuf JSON parser would read them as base64.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector import wire
from processors.matching import CompiledModel
from processors.types import SPAN_STATUS_OF_CODE, AttrValue, RejectReason, SpanEvent, SpanLink, SpanRecord, SpanStatus

MAX_TIME_NS = (1 << 63) - 1  # int64 nanoseconds: what Arrow and DuckDB timestamps hold
MAX_MESSAGES = 3


class PayloadError(ValueError):
    """The request as a whole cannot be decoded (answered 400 / INVALID_ARGUMENT)."""


@dataclass(slots=True)
class Decoded:
    records: list[SpanRecord] = field(default_factory=list)
    received: int = 0
    unmatched: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    messages: list[str] = field(default_factory=list)
    #: the latest span end seen (every span, matched or not): the replay watermark
    max_time_ns: int = 0

    @property
    def rejected_count(self) -> int:
        return sum(self.rejected.values())

    def error_message(self) -> str:
        if not self.rejected:
            return ""
        more = self.rejected_count - len(self.messages)
        tail = f" (and {more} more)" if more > 0 else ""
        return f"rejected {self.rejected_count} of {self.received} spans: " + "; ".join(self.messages) + tail

    def reject(self, reason: str, message: str) -> None:
        self.rejected[reason] += 1
        if len(self.messages) < MAX_MESSAGES:
            self.messages.append(message)


def _value(any_value: Any) -> AttrValue | None:
    kind = any_value.WhichOneof("value")
    if kind == "string_value":
        return str(any_value.string_value)
    if kind == "int_value":
        return int(any_value.int_value)
    if kind == "bool_value":
        return bool(any_value.bool_value)
    if kind == "double_value":
        return float(any_value.double_value)
    return None


class _BadAttribute(ValueError):
    """A projected attribute of a span is not a valid ``KeyValue`` (rejects that span only)."""


def _project(kvs: Iterable[Any], wanted: frozenset[str]) -> dict[str, AttrValue]:
    """Parsed ``KeyValue`` messages (resource attributes) → the projected ones."""
    out: dict[str, AttrValue] = {}
    if not wanted:
        return out
    for kv in kvs:
        if kv.key in wanted:
            value = _value(kv.value)
            if value is not None:
                out[kv.key] = value
    return out


def _project_blobs(blobs: Iterable[bytes], prefixes: tuple[bytes, ...], wanted: frozenset[str]) -> dict[str, AttrValue]:
    """Encoded ``KeyValue`` attributes → the projected ones; only those are ever parsed.

    A blob that does not begin with its key (another encoder's field order) is parsed to be sure.
    """
    out: dict[str, AttrValue] = {}
    if not prefixes:
        return out
    for blob in blobs:
        if blob.startswith(prefixes) or blob[:1] != b"\x0a":
            try:
                kv = wire.key_value(blob)
            except (DecodeError, RecursionError) as exc:
                raise _BadAttribute(str(exc) or type(exc).__name__) from exc
            if kv.key in wanted:
                value = _value(kv.value)
                if value is not None:
                    out[kv.key] = value
    return out


def _service(resource: Any) -> str:
    for kv in resource.attributes:
        if kv.key == "service.name":
            return str(kv.value.string_value) or "unknown_service"
    return "unknown_service"


_ZERO8 = bytes(8)
_ZERO16 = bytes(16)
#: what an OTLP/JSON id that is not hex becomes: a length no id has (the span is rejected) and a
#: value :func:`_problem` recognises, to say what was wrong rather than "got 7 bytes"
NOT_HEX = b"not hex"
_HEX_HINT = "OTLP/JSON writes ids as hex strings (32 characters for a trace id, 16 for a span id), not base64"


def _problem(sp: Any) -> tuple[str, str] | None:
    for id_field, reason in (
        ("trace_id", RejectReason.INVALID_TRACE_ID),
        ("span_id", RejectReason.INVALID_SPAN_ID),
        ("parent_span_id", RejectReason.INVALID_PARENT_SPAN_ID),
    ):
        if getattr(sp, id_field) == NOT_HEX:
            return reason, f"span {sp.name!r}: {id_field} is not hex; {_HEX_HINT}"
    trace_id = sp.trace_id
    if len(trace_id) != 16 or trace_id == _ZERO16:
        return (
            RejectReason.INVALID_TRACE_ID,
            f"span {sp.name!r}: trace_id must be 16 non-zero bytes (got {len(trace_id)})",
        )
    span_id = sp.span_id
    if len(span_id) != 8 or span_id == _ZERO8:
        return (
            RejectReason.INVALID_SPAN_ID,
            f"span {sp.name!r}: span_id must be 8 non-zero bytes (got {len(span_id)})",
        )
    if sp.parent_span_id and len(sp.parent_span_id) != 8:
        return (
            RejectReason.INVALID_PARENT_SPAN_ID,
            f"span {sp.name!r}: parent_span_id must be empty or 8 bytes",
        )
    if sp.end_time_unix_nano < sp.start_time_unix_nano:
        return (
            RejectReason.END_BEFORE_START,
            f"span {sp.name!r}: end_time_unix_nano is before start_time_unix_nano",
        )
    if sp.start_time_unix_nano == 0:
        return RejectReason.MISSING_START_TIME, f"span {sp.name!r}: start_time_unix_nano is 0"
    if sp.end_time_unix_nano > MAX_TIME_NS:
        return RejectReason.TIME_OUT_OF_RANGE, f"span {sp.name!r}: end_time_unix_nano is beyond the year 2262"
    return None


@dataclass(frozen=True, slots=True)
class WireRequest:
    """A parsed export request in the lean wire view (:mod:`collector.wire`).

    ``resources`` holds, per ``ResourceSpans``, its resource and its scopes, each scope both as
    its encoded bytes (searched for business-key attributes at C speed) and parsed.
    """

    resources: tuple[tuple[Any, tuple[tuple[bytes, Any], ...]], ...]


def decode_request(request: WireRequest | ExportTraceServiceRequest, model: CompiledModel) -> Decoded:
    """Validate and project every span of a parsed request.

    Every span is validated; only spans the model can use become records. Attributes stay
    encoded until needed: a scope's bytes are searched for the model's key attributes first, and
    only spans that match a step (or carry a key) have their projected attributes parsed.
    """
    if not isinstance(request, WireRequest):  # a full protobuf message (tests, tools)
        request = parse_protobuf(request.SerializeToString())
    out = Decoded()
    wanted = model.projection
    key_attrs = model.key_attributes
    prefixes = tuple(wire.key_prefix(k) for k in sorted(wanted))
    needles = tuple(wire.key_prefix(k) for k in key_attrs)
    records = out.records
    received = unmatched = max_end = 0
    for resource, scopes in request.resources:
        service = _service(resource)
        res_attrs = _project(resource.attributes, wanted)
        res_has_key = any(k in res_attrs for k in key_attrs)
        has_event_steps = model.service_has_events(service)
        steps_of: dict[str, tuple[Any, ...]] = {}
        for blob, ss in scopes:
            scope_has_key = bool(needles) and any(n in blob for n in needles)
            for sp in ss.spans:
                received += 1
                tid = sp.trace_id
                sid = sp.span_id
                start = sp.start_time_unix_nano
                end = sp.end_time_unix_nano
                if (
                    len(tid) != 16
                    or len(sid) != 8
                    or end < start
                    or not start
                    or end > MAX_TIME_NS
                    or tid == _ZERO16
                    or sid == _ZERO8
                ):
                    out.reject(*(_problem(sp) or (RejectReason.INVALID_SPAN, f"span {sp.name!r} is malformed")))
                    continue
                pid = sp.parent_span_id
                if pid and len(pid) != 8:
                    out.reject(*(_problem(sp) or (RejectReason.INVALID_PARENT_SPAN_ID, "bad parent_span_id")))
                    continue
                if end > max_end:
                    max_end = end
                name = sp.name
                steps = steps_of.get(name)
                if steps is None:
                    steps = steps_of[name] = model.span_steps(service, name)
                try:
                    events = _events(sp, service, model, prefixes, wanted) if has_event_steps and sp.events else ()
                    if steps or events or res_has_key:
                        attrs = _project_blobs(sp.attributes, prefixes, wanted)
                    elif scope_has_key and any(a.startswith(needles) or a[:1] != b"\x0a" for a in sp.attributes):
                        attrs = _project_blobs(sp.attributes, prefixes, wanted)
                        if not any(k in attrs for k in key_attrs):
                            unmatched += 1
                            continue
                    else:
                        unmatched += 1
                        continue
                except _BadAttribute as exc:
                    out.reject(
                        RejectReason.INVALID_ATTRIBUTE, f"span {name!r}: an attribute is not a valid KeyValue ({exc})"
                    )
                    continue
                records.append(_record(sp, service, end, attrs, res_attrs, events))
    out.received = received
    out.unmatched = unmatched
    out.max_time_ns = max_end
    return out


def _record(
    sp: Any,
    service: str,
    end: int,
    attrs: dict[str, AttrValue],
    res_attrs: dict[str, AttrValue],
    events: tuple[SpanEvent, ...],
) -> SpanRecord:
    return SpanRecord(
        trace_id=sp.trace_id.hex(),
        span_id=sp.span_id.hex(),
        parent_span_id=sp.parent_span_id.hex(),
        service=service,
        name=sp.name,
        start_ns=sp.start_time_unix_nano,
        end_ns=end,
        status=SPAN_STATUS_OF_CODE.get(sp.status.code, SpanStatus.UNSET.value),
        attributes=attrs,
        resource_attributes=res_attrs,
        events=events,
        links=tuple(SpanLink(link.trace_id.hex(), link.span_id.hex()) for link in sp.links if len(link.trace_id) == 16),
    )


def _events(
    sp: Any, service: str, model: CompiledModel, prefixes: tuple[bytes, ...], wanted: frozenset[str]
) -> tuple[SpanEvent, ...]:
    """Events a step matches; an event time of 0 or out of range falls back to the span's end."""
    return tuple(
        SpanEvent(
            ev.name,
            ev.time_unix_nano if 0 < ev.time_unix_nano <= MAX_TIME_NS else sp.end_time_unix_nano,
            _project_blobs(ev.attributes, prefixes, wanted),
        )
        for ev in sp.events
        if model.event_steps(service, ev.name)
    )


def parse_protobuf(payload: bytes) -> WireRequest:
    """OTLP protobuf → the lean wire view (every scope parsed; attributes left encoded)."""
    try:
        request = wire.Request.FromString(payload)
        return WireRequest(
            tuple(
                (rs.resource, tuple((blob, wire.ScopeSpans.FromString(blob)) for blob in rs.scope_spans))
                for rs in request.resource_spans
            )
        )
    except (DecodeError, RecursionError) as exc:
        raise PayloadError(f"not a valid OTLP protobuf ExportTraceServiceRequest: {exc}") from exc


_ID_FIELDS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


def _hex_ids_to_base64(obj: dict[str, Any]) -> None:
    for name in _ID_FIELDS:
        value = obj.get(name)
        if isinstance(value, str) and value:
            try:
                obj[name] = base64.b64encode(bytes.fromhex(value)).decode()
            except ValueError:  # this span alone is rejected, saying why (see _problem)
                obj[name] = base64.b64encode(NOT_HEX).decode()


def parse_json(payload: bytes | str) -> WireRequest:
    """OTLP/JSON (hex ids, camelCase or snake_case field names, integer enums)."""
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise PayloadError(f"not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise PayloadError("OTLP/JSON must be an object with a resourceSpans array")
    for rs in _list(data, "resourceSpans", "resource_spans"):
        for ss in _list(rs, "scopeSpans", "scope_spans"):
            for sp in _list(ss, "spans"):
                if isinstance(sp, dict):
                    _hex_ids_to_base64(sp)
                    for link in _list(sp, "links"):
                        if isinstance(link, dict):
                            _hex_ids_to_base64(link)
    request = ExportTraceServiceRequest()
    try:
        json_format.ParseDict(data, request, ignore_unknown_fields=True)
    except (json_format.ParseError, binascii.Error, RecursionError, TypeError, ValueError) as exc:
        raise PayloadError(f"not a valid OTLP/JSON ExportTraceServiceRequest: {exc}") from exc
    return parse_protobuf(request.SerializeToString())


def _list(obj: Any, *names: str) -> Sequence[Any]:
    if not isinstance(obj, dict):
        return ()
    for name in names:
        value = obj.get(name)
        if isinstance(value, list):
            return value
    return ()


def to_json(request: ExportTraceServiceRequest) -> dict[str, Any]:
    """Protobuf → OTLP/JSON (hex ids), e.g. for the file format written by ``replay`` tests."""
    data: dict[str, Any] = json_format.MessageToDict(request)
    for rs in data.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for sp in ss.get("spans", []):
                for obj in (sp, *sp.get("links", [])):
                    for name in ("traceId", "spanId", "parentSpanId"):
                        if name in obj:
                            obj[name] = base64.b64decode(obj[name]).hex()
    return data
