"""The composition root: the one place that wires model, store, receivers and (later) the API.

``Service.start()`` fails fast with a :class:`StartError` whose message says what and how to fix
(bad model, database locked, port taken). After start, nothing here raises to the caller;
``stop()`` stops intake, lets in-flight exports commit, flushes and closes the database.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from analytics.http import ListenError as HttpListenError
from analytics.http import ThreadedServer
from analytics.store import Store, StoreOpenError
from analytics.telemetry import Telemetry
from collector.intake import Admission, Intake
from collector.otlp_grpc import GrpcReceiver, ListenError
from collector.otlp_http import build_app
from processors.clock import Clock, WallClock
from processors.matching import CompiledModel
from processors.model import ModelError, load_model

log = logging.getLogger(__name__)

DEFAULT_MODEL = "otel-config/models/orders.yaml"
DEFAULT_DB = "./coordstate.duckdb"
DEFAULT_OTLP_GRPC = "127.0.0.1:4327"
DEFAULT_OTLP_HTTP = "127.0.0.1:4328"
DEFAULT_API = "127.0.0.1:4329"
DEFAULT_MAX_BYTES_IN_FLIGHT = 256 * 1024 * 1024


class StartError(RuntimeError):
    """The service cannot start; the message says why and what to do."""

    exit_code = 1


class BadModel(StartError):
    exit_code = 2


@dataclass(frozen=True, slots=True)
class ServeConfig:
    model: str = DEFAULT_MODEL
    db: str = DEFAULT_DB
    otlp_grpc: str | None = DEFAULT_OTLP_GRPC
    otlp_http: str | None = DEFAULT_OTLP_HTTP
    token: str | None = None
    max_bytes_in_flight: int = DEFAULT_MAX_BYTES_IN_FLIGHT
    tick_interval_s: float = 0.5


def load_compiled(path: str) -> CompiledModel:
    try:
        return CompiledModel(load_model(path))
    except ModelError as exc:
        raise BadModel(f"the model is not valid:\n{exc}") from exc


class Service:
    def __init__(self, config: ServeConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or WallClock()
        self.telemetry = Telemetry()
        self.model = load_compiled(config.model)
        self.store = Store(
            Path(config.db),
            self.model,
            self.clock,
            self.telemetry,
            tick_interval_s=config.tick_interval_s,
        )
        self.intake = Intake(
            self.model, self.store, self.telemetry, Admission(config.max_bytes_in_flight)
        )
        self.grpc: GrpcReceiver | None = None
        self.http: ThreadedServer | None = None

    def start(self) -> None:
        try:
            self.store.open()
        except StoreOpenError as exc:
            raise StartError(str(exc)) from exc
        try:
            if self.config.otlp_grpc:
                self.grpc = GrpcReceiver(
                    self.intake, self.config.otlp_grpc, token=self.config.token
                )
                self.grpc.start()
            if self.config.otlp_http:
                self.http = ThreadedServer(
                    build_app(self.intake, token=self.config.token),
                    self.config.otlp_http,
                    flag="--otlp-http",
                    what="OTLP/HTTP",
                )
                self.http.start()
        except (ListenError, HttpListenError, ValueError) as exc:
            self.stop()
            raise StartError(str(exc)) from exc

    def stop(self) -> None:
        if self.grpc is not None:
            self.grpc.stop()
            self.grpc = None
        if self.http is not None:
            self.http.stop()
            self.http = None
        self.store.close()

    def __enter__(self) -> Service:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def grpc_endpoint(self) -> str:
        assert self.grpc is not None
        assert self.config.otlp_grpc
        host = self.config.otlp_grpc.rpartition(":")[0] or "127.0.0.1"
        return f"{host}:{self.grpc.port}"

    @property
    def http_endpoint(self) -> str:
        assert self.http is not None
        return f"http://{self.http.host}:{self.http.port}"
