"""Traffic captures as the collector's file exporter writes them, for the tools that read files."""

from __future__ import annotations

import struct
import threading
from pathlib import Path

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from demo.services import Services
from demo.shop import Shop
from tests.otel_clients import Recording


def demo_shop_capture(
    path: Path, *, seconds: float = 2.0, rate: float = 60.0, seed: int = 11, scenarios: dict[str, float] | None = None
) -> Path:
    """The demo shop (``coordstate demo``: every scenario at its default share) run for ``seconds``
    at ``rate`` orders/s on a tenth of its time scale, written as length-prefixed protobuf, one
    request per 50 spans in the order they ended."""
    recording = Recording()
    services = Services(lambda: recording)
    try:
        Shop(services, rate=rate, time_scale=0.1, seed=seed, scenarios=scenarios).run(seconds, threading.Event())
    finally:
        services.shutdown()
    spans = sorted(recording.spans, key=lambda s: s.end_time or 0)
    frames = [encode_spans(spans[i : i + 50]).SerializeToString() for i in range(0, len(spans), 50)]
    path.write_bytes(b"".join(struct.pack(">I", len(f)) + f for f in frames))
    return path
