"""The composition root: the one place that wires model, store, receivers and (later) the API.

``Service.start()`` fails fast with a :class:`StartError` whose message says what and how to fix
(bad model, database locked, port taken). After start, nothing here raises to the caller;
``stop()`` stops intake, lets in-flight exports commit, flushes and closes the database.
"""

from __future__ import annotations

import gc
import ipaddress
import logging
import re
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from analytics.common import lake as lakes
from analytics.common.http import ListenError as HttpListenError
from analytics.common.http import ThreadedServer
from analytics.common.lake import Lake, LakeError
from analytics.common.telemetry import Telemetry
from analytics.notify.actions import ActionRunner
from analytics.notify.alerts import AlertDispatcher
from analytics.notify.anomaly import Links
from analytics.notify.targets import Alertmanager, AlertTarget, OtlpLogs
from analytics.read.api import build_api
from analytics.write import shards
from analytics.write.store import Store, StoreOpenError
from collector.decoders import Decoders, auto_workers
from collector.intake import Admission, Intake
from collector.otlp_grpc import GrpcReceiver, ListenError
from collector.otlp_http import build_app
from processors.clock import Clock, EventTimeClock, WallClock
from processors.health import DEFAULT_THRESHOLD
from processors.matching import CompiledModel
from processors.model import (
    ActionSpec,
    ModelError,
    ModelFile,
    ModelProblem,
    WorkflowSpec,
    parse_duration,
    parse_model,
)

log = logging.getLogger(__name__)

DEFAULT_MODEL = "otel-config/models/orders.yaml"
DEFAULT_DB = "./coordstate.duckdb"
DEFAULT_OTLP_GRPC = "127.0.0.1:4327"
DEFAULT_OTLP_HTTP = "127.0.0.1:4328"
DEFAULT_API = "127.0.0.1:4329"
DEFAULT_MAX_BYTES_IN_FLIGHT = 256 * 1024 * 1024
DEFAULT_DRIFT_AFTER = DEFAULT_THRESHOLD


def parse_retention(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise BadModel(f"--retention {text!r}: write a duration such as 7d or 12h") from exc


def is_loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]")
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tune_gc() -> None:
    """Fewer, cheaper garbage collections for a long-running ingest process.

    The in-memory state (transitions, buffers) is millions of long-lived objects that contain no
    reference cycles worth collecting; with Python's default thresholds the collector walks them
    all every few seconds (full collections of 150+ ms, ~18% of the writer's time in the ingest
    benchmark). Objects alive after start-up (the restored state) are frozen out of collection,
    the young generation is collected every 50,000 allocations instead of 700, and the middle one
    every second time (its pause grows with what survives, ~150 ms at 20).
    """
    gc.freeze()
    gc.set_threshold(50_000, 2, 100)


#: how often (event time) a GcFreezer lets the collector see everything once
GC_THAW_NS = 10 * 60 * 1_000_000_000


class GcFreezer:
    """After each commit, what survived it leaves the collector's generations (``gc.freeze``).

    Without it the in-memory state (instances, transitions, buffers) ages into the oldest
    generation, and each full collection walks all of it with every thread stopped: ~200 ms with
    the instances of a minute at 20k spans/s, once or twice per half minute — the export p99's
    tail in bench/lake.py. Young objects are collected as before; cyclic garbage that was frozen
    (rare here: collections find a few hundred objects a minute) waits for the thaw: every
    ``thaw_every_ns`` of the clock, everything is unfrozen, collected once and frozen again.
    """

    def __init__(self, thaw_every_ns: int = GC_THAW_NS) -> None:
        self.thaw_every_ns = thaw_every_ns
        self._thawed_at: int | None = None
        self._lock = threading.Lock()  # a fold node's stores commit on several writer threads

    def __call__(self, now_ns: int) -> None:
        with self._lock:
            if self._thawed_at is None:
                self._thawed_at = now_ns
            elif now_ns - self._thawed_at >= self.thaw_every_ns:
                self._thawed_at = now_ns
                gc.unfreeze()
                gc.collect()
            gc.freeze()


def _all_actions(wf: WorkflowSpec) -> list[ActionSpec]:
    return [*wf.actions.values(), *(a for step in wf.steps for a in step.actions.values())]


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
    api: str | None = DEFAULT_API
    token: str | None = None
    max_bytes_in_flight: int = DEFAULT_MAX_BYTES_IN_FLIGHT
    tick_interval_s: float = 0.5
    query_timeout_s: float = 10.0
    query_max_rows: int = 100_000
    #: DuckDB memory limit for the database (user queries included), e.g. "2GB"; None: DuckDB's default
    memory_limit: str | None = None
    #: overrides the model's ``retention`` (e.g. "7d")
    retention: str | None = None
    #: PEM certificate chain and private key: TLS on OTLP/gRPC, OTLP/HTTP and the query API
    tls_cert: str | None = None
    tls_key: str | None = None
    #: processes that parse and decode OTLP requests; None: one per CPU (at most 4); 0: none
    decode_workers: int | None = None
    #: model drift: a required step that matched nothing while this many instances passed its expected time
    drift_after: int = DEFAULT_DRIFT_AFTER
    #: Alertmanager base URLs: every open anomaly is an alert there (README: "Alerting and actions")
    alertmanager: tuple[str, ...] = ()
    #: open alerts are re-sent this often (their endsAt four resends ahead)
    alert_resend: str = "60s"
    #: HOST:PORT of an OTLP/gRPC logs receiver (a collector): anomaly opened/resolved log records
    otlp_logs: str | None = None
    #: links in alerts and webhook requests: the evidence trace (``{trace_id}``) and the app
    trace_url: str | None = None
    app_url: str | None = None
    #: reconciliation webhooks: record what would be sent, send nothing
    dry_run_actions: bool = False
    #: first retry delay of alert and webhook deliveries (doubling up to 60 s)
    delivery_backoff_s: float = 1.0
    #: lake mode: DuckLake's catalog (``postgres:dbname=… host=…``) and data path, instead of ``db``
    lake: str | None = None
    lake_data: str | None = None
    #: lake mode with roles (README "Scale out"): all | ingest | fold
    role: str = "all"
    #: key partitions of the lake (fixed when it is created) and those this fold node owns
    partitions: int | None = None
    owns: tuple[int, ...] = ()
    #: an ingest node's name: its key buffer lives in the lake under it (stable across restarts)
    node: str | None = None


def lake_of(catalog: str | None, data: str | None) -> Lake | None:
    """The lake named by --lake/--lake-data (None: the embedded DuckDB file)."""
    if catalog is None and data is None:
        return None
    if catalog is None:
        raise StartError("--lake-data needs --lake CATALOG, e.g. --lake 'postgres:dbname=coordstate host=127.0.0.1'")
    try:
        return Lake(catalog, data or "")
    except LakeError as exc:
        raise StartError(str(exc)) from exc


def is_http_url(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def resolve_model(path: str) -> str:
    """The default model is found from the working directory, else from the source checkout."""
    if path == DEFAULT_MODEL and not Path(path).exists():
        beside = Path(__file__).resolve().parent.parent / DEFAULT_MODEL
        if beside.exists():
            return str(beside)
    return path


def read_model(path: str | Path) -> tuple[ModelFile, str]:
    """Read a model file once (the edge of the pure ``parse_model``): the model and its text."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelError(source, [ModelProblem("", f"cannot read the file: {exc.strerror}")]) from exc
    except UnicodeDecodeError as exc:
        raise ModelError(source, [ModelProblem("", "the file is not UTF-8 text")]) from exc
    return parse_model(text, source), text


def load_compiled(path: str) -> CompiledModel:
    return load_source(path)[0]


def load_source(path: str) -> tuple[CompiledModel, str, str]:
    """The compiled model, and the text and path it came from (decoder processes compile the same)."""
    source = resolve_model(path)
    try:
        model, text = read_model(source)
    except ModelError as exc:
        raise BadModel(f"the model is not valid:\n{exc}") from exc
    return CompiledModel(model), text, source


class Service:
    def __init__(self, config: ServeConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.telemetry = Telemetry()
        self.model, model_text, model_source = load_source(config.model)
        watermark = self.model.model.watermark
        self.clock = clock or EventTimeClock(watermark.lateness, WallClock(), watermark.idle)
        workers = auto_workers() if config.decode_workers is None else config.decode_workers
        if workers < 0:
            raise StartError(f"--decode-workers {workers}: give 0 or more processes")
        self.decoders = Decoders(self.model, model_text, model_source, workers)
        self.lake = lake_of(config.lake, config.lake_data)
        #: a fold node's stores, one per owned partition (else the one store)
        self.stores = [self._store(schema, handoff) for schema, handoff in self._roles()]
        self.store = self.stores[0]
        self.followers = [
            shards.Follower(store, part) for store, part in zip(self.stores, config.owns, strict=False)
        ] if config.role == "fold" else []  # fmt: skip
        self.intake = Intake(
            self.model, self.store, self.telemetry, Admission(config.max_bytes_in_flight), self.decoders
        )
        #: alert dispatchers and webhook runners: one each per store (a fold node's partitions)
        per_store = [self._notifiers(store) for store in self.stores]
        self.alerts, self.actions = per_store[0]
        self.notifiers: list[AlertDispatcher | ActionRunner] = [n for pair in per_store for n in pair if n is not None]
        self.grpc: GrpcReceiver | None = None
        self.http: ThreadedServer | None = None
        self.api: ThreadedServer | None = None
        #: things a person should know (e.g. a listener open to the network without a token)
        self.warnings: list[str] = []

    def _store(self, schema: str | None, handoff: shards.Handoff | None) -> Store:
        config = self.config
        return Store(
            Path(config.db),
            self.model,
            self.clock,
            self.telemetry,
            tick_interval_s=config.tick_interval_s,
            memory_limit=config.memory_limit,
            retention_ns=parse_retention(config.retention),
            drift_threshold=config.drift_after,
            lake_at=self.lake,
            schema=schema,
            handoff=handoff,
        )

    def _roles(self) -> list[tuple[str | None, shards.Handoff | None]]:
        """(schema, hand-off) of each store this node runs, checked against its role's flags."""
        config = self.config
        if config.role not in shards.ROLES:
            raise StartError(f"--role {config.role!r}: give one of {', '.join(shards.ROLES)}")
        if config.role == "all":
            if config.partitions is not None or config.owns or config.node:
                raise StartError("--partitions, --owns and --node are for --role ingest and --role fold")
            return [(None, None)]
        if self.lake is None:
            raise StartError(f"--role {config.role} needs a lake: pass --lake CATALOG --lake-data PATH")
        if config.partitions is None or config.partitions < 1:
            raise StartError(f"--role {config.role} needs --partitions N: the lake's number of key partitions")
        if config.role == "ingest":
            if not config.node or not re.fullmatch(r"[A-Za-z0-9_]{1,40}", config.node):
                raise StartError(
                    "--role ingest needs --node NAME (up to 40 letters, digits, _): its key buffer is kept in the lake under "
                    "that name, so a restarted node must keep it"
                )
            if config.alertmanager or config.otlp_logs:
                raise StartError("alerts come from the fold nodes: pass --alertmanager/--otlp-logs to them")
            return [(shards.ingest_schema(config.node.lower()), shards.Handoff(config.partitions, config.node.lower()))]
        owns = config.owns
        if not owns:
            raise StartError("--role fold needs --owns i[,j…]: the key partitions this node folds")
        bad = [i for i in owns if not 0 <= i < config.partitions]
        if bad or len(set(owns)) != len(owns):
            raise StartError(
                f"--owns {','.join(map(str, owns))}: give distinct partitions from 0 to {config.partitions - 1}, "
                "each owned by exactly one running fold node"
            )
        return [(shards.partition_schema(i), None) for i in owns]

    def _notifiers(self, store: Store) -> tuple[AlertDispatcher | None, ActionRunner | None]:
        config = self.config
        if store.handoff is not None:  # an ingest node folds nothing: anomalies open on fold nodes
            return None, None
        for url in config.alertmanager:
            if not is_http_url(url):
                raise StartError(f"--alertmanager {url!r}: give Alertmanager's base URL, e.g. http://127.0.0.1:9093")
        for link, flag in ((config.app_url, "--app-url"), (config.trace_url, "--trace-url")):
            if link and not is_http_url(link.replace("{trace_id}", "t")):
                raise StartError(f"{flag} {link!r}: give an http(s) URL")
        try:
            resend_s = parse_duration(config.alert_resend) / 1e9
        except ValueError as exc:
            raise StartError(f"--alert-resend {config.alert_resend!r}: write a duration such as 60s or 5m") from exc
        links = Links(config.trace_url, config.app_url)
        targets: list[AlertTarget] = [Alertmanager(url, links, int(resend_s * 1e9)) for url in config.alertmanager]
        if config.otlp_logs:
            targets.append(OtlpLogs(config.otlp_logs))
        backoff = config.delivery_backoff_s
        alerts = (
            AlertDispatcher(store, targets, self.telemetry, resend_s=resend_s, backoff_s=backoff) if targets else None
        )
        webhooks = any(a.webhook for wf in self.model.model.workflows for a in _all_actions(wf))
        if not webhooks:
            return alerts, None
        runner = ActionRunner(
            store, self.model, self.clock, self.telemetry, links, dry_run=config.dry_run_actions, backoff_s=backoff
        )
        return alerts, runner

    def start(self) -> None:
        if self.config.role != "all":
            self._prepare_lake()
        opened: list[Store] = []
        try:
            for store in self.stores:
                store.open()
                opened.append(store)
        except StoreOpenError as exc:
            for store in opened:
                store.close()
            raise StartError(str(exc)) from exc
        for follower in self.followers:
            follower.start()
        for notifier in self.notifiers:
            notifier.start()
        try:
            if self.config.role != "fold":  # a fold node decodes nothing: its input is the lake
                self.decoders.start()
        except Exception as exc:
            for notifier in self.notifiers:
                notifier.stop()
            for follower in self.followers:
                follower.stop()
            for store in self.stores:
                store.close()
            raise StartError(f"cannot start the decoder processes: {exc}; try --decode-workers 0") from exc
        tune_gc()
        freezer = GcFreezer()
        for store in self.stores:
            store.after_commit = freezer
        try:
            tls_files, tls_pem = self._tls()
            receives = self.config.role != "fold"  # a fold node's input is the lake
            if self.config.otlp_grpc and receives:
                self.grpc = GrpcReceiver(self.intake, self.config.otlp_grpc, token=self.config.token, tls=tls_pem)
                self.grpc.start()
            if self.config.otlp_http and receives:
                self.http = ThreadedServer(
                    build_app(self.intake, token=self.config.token),
                    self.config.otlp_http,
                    flag="--otlp-http",
                    what="OTLP/HTTP",
                    tls=tls_files,
                )
                self.http.start()
            if self.config.api:
                self.api = ThreadedServer(
                    build_api(
                        self.store.cursor if self.config.role == "all" else (lambda: self.store.cursor("main")),
                        self.telemetry,
                        token=self.config.token,
                        timeout_s=self.config.query_timeout_s,
                        max_rows=self.config.query_max_rows,
                    ),
                    self.config.api,
                    flag="--api",
                    what="query API",
                    tls=tls_files,
                )
                self.api.start()
        except (ListenError, HttpListenError, ValueError, OSError) as exc:
            self.stop()
            raise StartError(str(exc)) from exc
        self.warnings = self._exposure_warnings()

    def _prepare_lake(self) -> None:
        assert self.lake is not None
        assert self.config.partitions is not None
        try:
            con = lakes.connect(self.lake)
        except LakeError as exc:
            raise StartError(str(exc)) from exc
        try:
            shards.prepare_with_retry(con, self.config.partitions)
        except shards.LayoutError as exc:
            raise StartError(str(exc)) from exc
        except Exception as exc:
            raise StartError(f"cannot prepare the {self.lake.describe()} for nodes with roles: {exc}") from exc
        finally:
            con.close()

    def sync(self, timeout_s: float = 60.0) -> None:
        """A fold node: wait until everything handed off so far is folded."""
        for follower in self.followers:
            follower.sync(timeout_s)

    def _tls(self) -> tuple[tuple[str, str] | None, tuple[bytes, bytes] | None]:
        cert, key = self.config.tls_cert, self.config.tls_key
        if not cert and not key:
            return None, None
        if not (cert and key):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        try:
            return (cert, key), (Path(cert).read_bytes(), Path(key).read_bytes())
        except OSError as exc:
            raise ValueError(f"cannot read the TLS certificate or key: {exc}") from exc

    @property
    def scheme(self) -> str:
        return "https" if self.config.tls_cert else "http"

    def _exposure_warnings(self) -> list[str]:
        if self.config.token:
            return []
        out = []
        for flag, address in (
            ("--otlp-grpc", self.config.otlp_grpc),
            ("--otlp-http", self.config.otlp_http),
            ("--api", self.config.api),
        ):
            if address and not is_loopback(address):
                out.append(
                    f"{flag} {address} is reachable from the network and no token is set: anyone who can reach it "
                    "can send spans or read the coordination history. Set --token (or COORDSTATE_TOKEN), or bind 127.0.0.1."
                )
        return out

    def stop(self) -> None:
        if self.grpc is not None:
            self.grpc.stop()
            self.grpc = None
        if self.http is not None:
            self.http.stop()
            self.http = None
        if self.api is not None:
            self.api.stop()
            self.api = None
        for notifier in self.notifiers:
            notifier.stop()
        for notifier in self.notifiers:
            for target in notifier.targets if isinstance(notifier, AlertDispatcher) else ():
                target.target.close()
        self.decoders.stop()
        for follower in self.followers:
            follower.stop()
        for store in self.stores:
            store.close()

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
    def api_url(self) -> str:
        assert self.api is not None
        return f"{self.scheme}://{self.api.host}:{self.api.port}"

    @property
    def http_endpoint(self) -> str:
        assert self.http is not None
        return f"{self.scheme}://{self.http.host}:{self.http.port}"
