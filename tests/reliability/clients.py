"""A client that must lose nothing: it streams orders and re-sends each export until acknowledged."""

from __future__ import annotations

import random
import threading

from opentelemetry.sdk.trace.export import SpanExportResult

from tests.otel_clients import encode, grpc_exporter, recorded_order


class RetryingOrders(threading.Thread):
    """Streams orders named ``{prefix}-{n}`` to an OTLP/gRPC endpoint until ``stop`` is set.

    With ``split`` > 0, that share of orders is sent in two exports (children first, the root with
    the order id later), exercising the key buffer. Everything acknowledged is recorded.
    """

    def __init__(self, endpoint: str, prefix: str, *, split: float = 0.0, seed: int = 0, timeout: float = 60) -> None:
        super().__init__(daemon=True)
        self.exporter = grpc_exporter(endpoint, timeout=timeout)
        self.prefix = prefix
        self.split = split
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.acked_keys: list[str] = []
        self.acked_requests: list[bytes] = []
        self.acked_span_ids: set[str] = set()
        self.attempts = 0

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            key = f"{self.prefix}-{n}"
            spans, _ = recorded_order(key)
            n += 1
            if self.rng.random() < self.split:
                parts = [[s for s in spans if s.name != "PlaceOrder"], [s for s in spans if s.name == "PlaceOrder"]]
            else:
                parts = [spans]
            for part in parts:
                while True:
                    self.attempts += 1
                    if self.exporter.export(part) == SpanExportResult.SUCCESS:
                        break
                self.acked_requests.append(encode(part).SerializeToString())
                self.acked_span_ids |= {f"{s.context.span_id:016x}" for s in part}
            self.acked_keys.append(key)

    def finish(self, timeout: float = 120) -> None:
        self.stop.set()
        self.join(timeout=timeout)
        assert not self.is_alive(), "the retrying client did not finish"
