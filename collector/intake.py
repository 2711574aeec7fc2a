"""What both OTLP receivers share: admission control, decode, submit, wait for the commit.

The receivers only translate transport to :meth:`Intake.accept` and its outcomes back to
transport (gRPC status codes or HTTP status codes); they know nothing of the model or the store.

Errors (the receivers map them to codes; ``retryable`` ones carry a retry delay):

    IntakeError
    ├── Overloaded         retryable: too many spans/bytes in flight (UNAVAILABLE / 429)
    ├── Unavailable        retryable: the commit failed, a decoder process died, or we are
    │                      shutting down (UNAVAILABLE / 503)
    └── PayloadError       permanent: the request cannot be decoded (INVALID_ARGUMENT / 400)
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from analytics.common.telemetry import Telemetry
from analytics.write.store import Store, StoreUnavailable
from collector.decode import PayloadError, WireRequest
from collector.decoders import Decoders, DecoderUnavailable
from processors.matching import CompiledModel
from processors.types import DropReason

__all__ = [
    "Admission",
    "Intake",
    "IntakeError",
    "Outcome",
    "Overloaded",
    "PayloadError",
    "Unavailable",
]

DEFAULT_RETRY_AFTER_S = 1
COMMIT_TIMEOUT_S = 60.0


class IntakeError(Exception):
    retry_after_s: int | None = None


class Overloaded(IntakeError):
    retry_after_s = DEFAULT_RETRY_AFTER_S


class Unavailable(IntakeError):
    retry_after_s = DEFAULT_RETRY_AFTER_S


@dataclass(frozen=True, slots=True)
class Outcome:
    received: int
    rejected: int
    error_message: str

    def response(self) -> ExportTraceServiceResponse:
        """The OTLP answer both receivers send: partial success when spans were rejected."""
        response = ExportTraceServiceResponse()
        if self.rejected:
            response.partial_success.rejected_spans = self.rejected
            response.partial_success.error_message = self.error_message
        return response


class Admission:
    """Bounds the bytes of requests in flight (received, not yet committed and answered).

    A request that would exceed the bound is refused at once with a retryable error, so that
    memory stays bounded under any load and senders back off instead of piling up.
    """

    def __init__(self, max_bytes_in_flight: int) -> None:
        self.max_bytes = max_bytes_in_flight
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        return self._bytes

    def try_acquire(self, nbytes: int, held: int = 0) -> bool:
        """Take ``nbytes`` more; ``held``: what the caller already holds (a body still arriving)."""
        with self._lock:
            # one request larger than the whole budget is still let through alone
            if self._bytes > held and self._bytes + nbytes > self.max_bytes:
                return False
            self._bytes += nbytes
            return True

    def release(self, nbytes: int) -> None:
        with self._lock:
            self._bytes -= nbytes


class Intake:
    def __init__(
        self,
        model: CompiledModel,
        store: Store,
        telemetry: Telemetry,
        admission: Admission,
        decoders: Decoders | None = None,
    ) -> None:
        self.model = model
        self.store = store
        self.telemetry = telemetry
        self.admission = admission
        self.decoders = decoders or Decoders(model, "", "", 0)

    def overloaded(self) -> Overloaded:
        """The refusal (counted) for a request admission control cannot take now."""
        self.telemetry.add("requests_refused_overload")
        return Overloaded(
            f"coordstate is at its in-flight limit ({self.admission.max_bytes} bytes); retry after a back-off"
        )

    def accept(self, payload: bytes, parse: Callable[[bytes], WireRequest]) -> Outcome:
        """Decode, commit and answer one export request. Blocks until committed."""
        nbytes = len(payload)
        if not self.admission.try_acquire(nbytes):
            raise self.overloaded()
        try:
            return self._accept(payload, parse)
        finally:
            self.admission.release(nbytes)
            self.telemetry.set("bytes_in_flight", self.admission.in_flight)

    def _accept(self, payload: bytes, parse: Callable[[bytes], WireRequest]) -> Outcome:
        self.telemetry.set("bytes_in_flight", self.admission.in_flight)
        try:
            decoded = self.decoders.decode(payload, parse)
        except PayloadError:
            self.telemetry.add("requests_invalid")
            raise
        except DecoderUnavailable as exc:
            self.telemetry.add("decoder_failures")
            raise Unavailable(str(exc)) from exc
        self.telemetry.add("requests")
        self.telemetry.add("spans_received", decoded.received)
        self.telemetry.add_rejected(decoded.rejected)
        if decoded.unmatched:
            self.telemetry.add_dropped(Counter({DropReason.UNMATCHED: decoded.unmatched}))
        if not decoded.records:
            # nothing to commit, but time went on. This moves the watermark from here, not after a
            # commit in the writer: a batch still queued behind is judged late only if its spans
            # are older than the allowed lateness, which is what late means anyway
            self.store.observe(decoded.max_time_ns)
        else:
            future = self.store.submit(decoded.records, decoded.max_time_ns)  # observed after its commit
            try:
                future.result(timeout=COMMIT_TIMEOUT_S)
            except StoreUnavailable as exc:
                raise Unavailable(str(exc)) from exc
            except TimeoutError as exc:
                raise Unavailable("the commit did not finish in time; retry") from exc
        return Outcome(decoded.received, decoded.rejected_count, decoded.error_message())
