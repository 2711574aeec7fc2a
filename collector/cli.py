"""The ``coordstate`` command line. The only place in coordstate that exits the process.

(Over 400 lines on purpose: the parser of every serving command with all its options — the
README's reference, kept in step by tests/test_docs.py — and their handlers; the tools' commands
live in collector/tools.py.)
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from analytics.common.http import is_port, split_address
from analytics.read.client import (
    DEFAULT_API_URL,
    ApiUnavailable,
    ClientError,
    QueryFailed,
    query_api,
    query_file,
    query_lake,
)
from collector import tools
from collector.render import render
from collector.replay import ReplayError, replay
from collector.service import (
    DEFAULT_API,
    DEFAULT_DB,
    DEFAULT_DRIFT_AFTER,
    DEFAULT_MODEL,
    DEFAULT_OTLP_GRPC,
    DEFAULT_OTLP_HTTP,
    ServeConfig,
    Service,
    StartError,
    lake_of,
    load_compiled,
    read_model,
    resolve_model,
)
from collector.summary import summarize
from collector.ui import DEFAULT_UI_PORT, AppPortError, app_port, start_ui, stop_ui, ui_env
from demo.shop import SCENARIOS, DemoError, DemoUnreachable, parse_scenarios, run_demo
from processors.model import ModelError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
MAX_SKIPPED_SHOWN = 10


def host_port(value: str) -> str:
    """argparse type for listener and endpoint flags (checked as the listeners parse them)."""
    try:
        split_address(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return value


def port_number(value: str) -> int:
    """argparse type for a port: 0–65535 (0: any free port)."""
    if not is_port(value):
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535 (0: any free port), got {value!r}")
    return int(value)


def _cmd_check(args: argparse.Namespace) -> int:
    status = EXIT_OK
    for path in args.models:
        try:
            model, _ = read_model(path)
        except ModelError as exc:
            for problem in exc.problems:
                print(f"{path}: {problem}", file=sys.stderr)
            status = EXIT_USAGE
            continue
        print(summarize(path, model))
    return status


def _wait_for_signal(done: Callable[[], bool] = lambda: False) -> bool:
    """Block until SIGTERM/SIGINT (True) or until ``done()`` says a child process has gone (False)."""
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    while not stop.wait(0.5):
        if done():
            return False
    return True


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """The server's settings from `serve`'s (and `up`'s) options."""
    return ServeConfig(
        model=args.model,
        db=args.db,
        otlp_grpc=args.otlp_grpc,
        otlp_http=args.otlp_http,
        api=args.api,
        token=args.token or os.environ.get("COORDSTATE_TOKEN") or None,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        memory_limit=args.memory_limit,
        retention=args.retention,
        max_bytes_in_flight=args.max_inflight_mb * 1024 * 1024,
        decode_workers=args.decode_workers,
        drift_after=args.drift_after,
        alertmanager=tuple(args.alertmanager or ()),
        alert_resend=args.alert_resend,
        otlp_logs=args.otlp_logs,
        trace_url=args.trace_url,
        app_url=args.app_url,
        dry_run_actions=args.dry_run_actions,
        lake=args.lake,
        lake_data=args.lake_data,
        role=args.role,
        partitions=args.partitions,
        owns=args.owns,
        node=args.node,
    )


def partition_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give partition numbers separated by commas, e.g. 0,2") from None


def _cmd_serve(args: argparse.Namespace) -> int:
    config = serve_config(args)
    service = Service(config)
    service.start()
    for warning in service.warnings:
        print(f"coordstate: warning: {warning}", file=sys.stderr, flush=True)
    print(
        f"coordstate serving model {resolve_model(config.model)} into "
        f"{', '.join(store.path for store in service.stores)}"
        f"{'' if config.role == 'all' else f' (role {config.role})'}\n"
        f"  OTLP/gRPC  {service.grpc_endpoint if service.grpc else 'off'}\n"
        f"  OTLP/HTTP  {service.http_endpoint + '/v1/traces' if service.http else 'off'}\n"
        f"  query API  {service.api_url if service.api else 'off'}\n"
        "Press Ctrl-C (or send SIGTERM) to stop.",
        flush=True,
    )
    try:
        _wait_for_signal()
    finally:
        print("coordstate: stopping intake, committing, closing the database…", flush=True)
        service.stop()
    snap = service.telemetry.snapshot().counters
    print(
        f"coordstate stopped: {snap.get('spans_received', 0)} spans received, "
        f"{snap.get('transitions_written', 0)} transitions written.",
        flush=True,
    )
    return EXIT_OK


def _cmd_replay(args: argparse.Namespace) -> int:
    model = load_compiled(args.model)
    summary = replay([Path(f) for f in args.files], model, Path(args.db), progress=not args.quiet)
    print(
        f"replayed {summary.files} file(s): {summary.requests} requests, {summary.spans} spans "
        f"({summary.rejected} rejected), {summary.transitions} transitions into {args.db}"
    )
    if not summary.skipped:
        return EXIT_OK
    for skipped in summary.skipped[:MAX_SKIPPED_SHOWN]:
        print(f"coordstate: {skipped.place}: {skipped.reason}; skipped", file=sys.stderr)
    if len(summary.skipped) > MAX_SKIPPED_SHOWN:
        print(f"coordstate: … and {len(summary.skipped) - MAX_SKIPPED_SHOWN} more", file=sys.stderr)
    print(
        f"coordstate: {len(summary.skipped)} record(s) could not be read and were skipped; everything else is "
        "stored. Fix or remove them and replay those files again: what is already stored does not change.",
        file=sys.stderr,
    )
    return EXIT_FAILURE


def _cmd_query(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("COORDSTATE_TOKEN") or None
    where = lake_of(args.lake, args.lake_data)
    if where is not None:
        table = query_lake(where.catalog, where.data_path, args.sql)
    elif args.db:
        table = query_file(args.db, args.sql)
    else:
        try:
            table = query_api(args.api or DEFAULT_API_URL, args.sql, token=token)
        except ApiUnavailable:
            if args.api or not Path(DEFAULT_DB).exists():
                raise
            table = query_file(DEFAULT_DB, args.sql)  # no server: read the default file directly
    print(render(table, args.format), end="")
    return EXIT_OK


def _cmd_ui(args: argparse.Namespace) -> int:
    lake_of(args.lake, args.lake_data)  # a wrong pair fails here, not in the app
    env = ui_env(args.api, args.db, args.token, args.trace_url, args.lake, args.lake_data)
    args.port = app_port(args.port, args.address, "--port")
    proc = start_ui(args.port, env, address=args.address)
    print(
        f"coordstate app on http://{args.address}:{args.port} "
        f"({env.get('COORDSTATE_API') or env.get('COORDSTATE_DB') or 'lake ' + env.get('COORDSTATE_LAKE', '')})",
        flush=True,
    )
    try:
        signalled = _wait_for_signal(lambda: proc.poll() is not None)
        if not signalled:
            _app_stopped(proc)
    finally:
        stop_ui(proc)
    return EXIT_OK if signalled else EXIT_FAILURE


def _app_stopped(proc: subprocess.Popen[bytes]) -> None:
    print(
        f"coordstate: the app stopped by itself (exit status {proc.returncode}); its messages are above",
        file=sys.stderr,
        flush=True,
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    scenarios = parse_scenarios(args.scenario)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(
        f"coordstate demo: {args.rate:g} orders/s to {args.endpoint}"
        + (f" for {args.duration:g}s" if args.duration else "")
        + "; Ctrl-C stops",
        flush=True,
    )
    stats = run_demo(
        args.endpoint, rate=args.rate, duration_s=args.duration, scenarios=scenarios, stop=stop, seed=args.seed
    )
    print("orders placed: " + ", ".join(f"{n} {k}" for k, n in stats.orders.most_common()), flush=True)
    return EXIT_OK


def _cmd_up(args: argparse.Namespace) -> int:
    scenarios = parse_scenarios(args.scenario) if args.demo else {}
    args.ui_port = app_port(args.ui_port, args.ui_address)  # before anything starts
    if args.app_url is None:  # alerts and webhooks link to the app that up starts
        args.app_url = f"http://{args.ui_address}:{args.ui_port}"
    config = serve_config(args)
    service = Service(config)
    service.start()
    stop = threading.Event()
    ui = None
    demo: threading.Thread | None = None
    try:
        for warning in service.warnings:
            print(f"coordstate: warning: {warning}", file=sys.stderr, flush=True)
        ui = start_ui(
            args.ui_port, ui_env(service.api_url, None, config.token, args.trace_url), address=args.ui_address
        )
        if args.demo:
            demo = threading.Thread(
                target=run_demo, name="demo", daemon=True,
                kwargs={"endpoint": service.grpc_endpoint, "rate": args.rate, "duration_s": args.duration, "scenarios": scenarios, "stop": stop},
            )  # fmt: skip
            demo.start()
        print(
            "coordstate is up\n"
            f"  app        http://{args.ui_address}:{args.ui_port}\n"
            f"  OTLP/gRPC  {service.grpc_endpoint if service.grpc else 'off'}\n"
            f"  OTLP/HTTP  {service.http_endpoint + '/v1/traces' if service.http else 'off'}\n"
            f"  query API  {service.api_url}\n"
            f"  database   {service.store.path}  (model {resolve_model(config.model)})\n"
            + ("  demo       sending orders (a new one every %.1fs)\n" % (1 / args.rate) if args.demo else "")
            + "Press Ctrl-C to stop everything.",
            flush=True,
        )
        signalled = _wait_for_signal(lambda: ui is not None and ui.poll() is not None)
        if not signalled:
            _app_stopped(ui)
    finally:
        print("coordstate: stopping…", flush=True)
        stop.set()
        if demo is not None:
            demo.join(timeout=30)
        if ui is not None:
            stop_ui(ui)
        service.stop()
        print("coordstate: stopped; the database is consistent.", flush=True)
    return EXIT_OK if signalled else EXIT_FAILURE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coordstate",
        description="Coordination State Layer for OpenTelemetry: where every business process across your services stands.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser("check", help="validate model files and summarize them")
    check.add_argument("models", nargs="+", metavar="MODEL", help="model YAML file(s)")
    check.set_defaults(func=_cmd_check)

    serve = sub.add_parser("serve", help="receive OTLP traces, keep the coordination state, serve the query API")
    _model_db(serve)
    _listeners(serve)
    serve.set_defaults(func=_cmd_serve)

    q = sub.add_parser("query", help="run a read-only SQL query (live server, or a DuckDB file)")
    where = q.add_mutually_exclusive_group()
    where.add_argument("--api", metavar="URL", help=f"query API of a running server (default {DEFAULT_API_URL})")
    where.add_argument("--db", metavar="PATH", help="a DuckDB file no server holds (opened read-only)")
    _lake_options(q, "read this DuckLake directly, read-only, no server needed")
    q.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output (default %(default)s)")
    q.add_argument("--token", default=None, help="bearer token of the API (or set COORDSTATE_TOKEN)")
    q.add_argument("sql", metavar="SQL")
    q.set_defaults(func=_cmd_query)

    ui = sub.add_parser("ui", help="the Streamlit app (live through the query API, or a DuckDB file)")
    src = ui.add_mutually_exclusive_group()
    src.add_argument("--api", metavar="URL", help=f"query API of a running server (default {DEFAULT_API_URL})")
    src.add_argument("--db", metavar="PATH", help="a DuckDB file no server holds (read-only)")
    ui.add_argument("--port", type=port_number, default=DEFAULT_UI_PORT, help="(default %(default)s; 0: a free port)")
    ui.add_argument("--address", default="127.0.0.1", help="(default %(default)s)")
    ui.add_argument("--token", default=None, help="bearer token of the API (or set COORDSTATE_TOKEN)")
    ui.add_argument(
        "--trace-url", default=None, metavar="TEMPLATE", help="trace link, e.g. http://localhost:16686/trace/{trace_id}"
    )
    _lake_options(ui, "read this DuckLake directly, read-only, no server needed")
    ui.set_defaults(func=_cmd_ui)

    up = sub.add_parser("up", help="server + app (+ demo traffic with --demo), all in one; Ctrl-C stops everything")
    _model_db(up)
    _listeners(up)
    up.add_argument(
        "--ui-port", type=port_number, default=DEFAULT_UI_PORT, help="(default %(default)s; 0: a free port)"
    )
    up.add_argument("--ui-address", default="127.0.0.1", help="(default %(default)s)")
    up.add_argument("--demo", action="store_true", help="also run the demo shop against the server")
    _demo_options(up)
    up.set_defaults(func=_cmd_up)

    demo = sub.add_parser(
        "demo", help="demo traffic: an instrumented order system with fault scenarios, over OTLP/gRPC"
    )
    demo.add_argument(
        "--endpoint",
        type=host_port,
        default=DEFAULT_OTLP_GRPC,
        metavar="HOST:PORT",
        help="OTLP/gRPC (default %(default)s)",
    )
    _demo_options(demo)
    demo.add_argument("--seed", type=int, default=None, help="random seed (same seed, same scenario sequence)")
    demo.set_defaults(func=_cmd_demo)

    rep = sub.add_parser("replay", help="replay OTLP files (collector file exporter: JSON lines or protobuf)")
    _model_db(rep)
    rep.add_argument("files", nargs="+", metavar="FILE")
    rep.add_argument("--quiet", action="store_true", help="no progress bar")
    rep.set_defaults(func=_cmd_replay)
    tools.add_commands(sub)
    return parser


def _demo_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rate", type=float, default=5.0, help="orders per second (default %(default)s)")
    p.add_argument(
        "--duration", type=float, default=None, metavar="S", help="stop after S seconds (default: until Ctrl-C)"
    )
    p.add_argument(
        "--scenario", action="append", default=[], metavar="NAME=RATE",
        help=f"share of orders per fault scenario, e.g. declined=0.2 (defaults: {', '.join(f'{k}={v:g}' for k, v in SCENARIOS.items())})",
    )  # fmt: skip


def _listeners(p: argparse.ArgumentParser) -> None:
    for flag, default, what in (
        ("--otlp-grpc", DEFAULT_OTLP_GRPC, "OTLP/gRPC"),
        ("--otlp-http", DEFAULT_OTLP_HTTP, "OTLP/HTTP"),
        ("--api", DEFAULT_API, "read-only query API"),
    ):
        p.add_argument(flag, type=host_port, default=default, metavar="HOST:PORT", help=f"{what} (default %(default)s)")
    p.add_argument("--token", default=None, help="require this bearer token on every endpoint (or COORDSTATE_TOKEN)")
    p.add_argument(
        "--drift-after", type=int, default=DEFAULT_DRIFT_AFTER, metavar="N",
        help="a required step that matched nothing while N instances passed its expected time is model drift (default %(default)s)",
    )  # fmt: skip
    p.add_argument("--tls-cert", default=None, metavar="PEM", help="certificate chain: TLS on every listener")
    p.add_argument("--tls-key", default=None, metavar="PEM", help="private key for --tls-cert")
    p.add_argument(
        "--memory-limit", default=None, metavar="SIZE", help="DuckDB memory limit, user queries included (e.g. 2GB)"
    )
    p.add_argument(
        "--retention",
        default=None,
        metavar="DURATION",
        help="delete the history of terminal instances older than this (e.g. 7d); overrides the model",
    )
    p.add_argument(
        "--max-inflight-mb",
        type=int,
        default=256,
        metavar="MB",
        help="request bytes in flight before overload answers (default %(default)s)",
    )
    p.add_argument(
        "--alertmanager", action="append", metavar="URL",
        help="post every anomaly as an alert to this Alertmanager (repeatable), e.g. http://127.0.0.1:9093",
    )  # fmt: skip
    p.add_argument(
        "--alert-resend", default="60s", metavar="DURATION", help="re-send open alerts this often (default %(default)s)"
    )
    p.add_argument(
        "--otlp-logs", type=host_port, default=None, metavar="HOST:PORT",
        help="export anomaly opened/resolved events as OTLP log records to this OTLP/gRPC receiver",
    )  # fmt: skip
    p.add_argument(
        "--trace-url", default=None, metavar="TEMPLATE",
        help="link to the evidence trace (alerts, webhooks, and the app with up), e.g. http://localhost:16686/trace/{trace_id}",
    )  # fmt: skip
    p.add_argument(
        "--app-url", default=None, metavar="URL",
        help="the app's address, for links to an instance's page in alerts and webhooks (e.g. http://127.0.0.1:8501)",
    )  # fmt: skip
    _lake_options(p)
    p.add_argument(
        "--role", choices=("all", "ingest", "fold"), default="all",
        help="lake mode with several nodes: ingest (receive OTLP, settle keys, hand off), fold (fold and observe "
        "the key partitions of --owns), or all (one node does everything; the default)",
    )  # fmt: skip
    p.add_argument("--partitions", type=int, default=None, metavar="N",
                   help="the lake's number of key partitions (fixed when the first node creates it)")  # fmt: skip
    p.add_argument("--owns", type=partition_list, default=(), metavar="I[,J…]",
                   help="--role fold: the key partitions this node folds (each owned by one running node)")  # fmt: skip
    p.add_argument("--node", default=None, metavar="NAME",
                   help="--role ingest: this node's name (its key buffer is kept in the lake under it)")  # fmt: skip
    p.add_argument(
        "--dry-run-actions", action="store_true",
        help="reconciliation webhooks: record what would be sent in action_deliveries, send nothing",
    )  # fmt: skip
    p.add_argument(
        "--decode-workers",
        type=int,
        default=None,
        metavar="N",
        help="processes that decode OTLP requests (default: one per CPU, at most 4; 0: decode in the server process)",
    )


def _lake_options(p: argparse.ArgumentParser, what: str = "keep every coordination table in this DuckLake") -> None:
    p.add_argument("--lake", default=None, metavar="CATALOG",
                   help=f"{what}: its PostgreSQL catalog, e.g. 'postgres:dbname=coordstate host=127.0.0.1'")  # fmt: skip
    p.add_argument(
        "--lake-data", default=None, metavar="PATH", help="the lake's data path (Parquet files; shared by every node)"
    )


def _model_db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="PATH", help="model YAML (default %(default)s)")
    p.add_argument(
        "--db",
        default=DEFAULT_DB,
        metavar="PATH",
        help="DuckDB database file (default %(default)s)",
    )


#: what each error ends the process with; the first matching class wins (subclasses first)
EXIT_CODES: tuple[tuple[type[Exception], int], ...] = (
    (DemoUnreachable, EXIT_FAILURE),
    (DemoError, EXIT_USAGE),
    (AppPortError, EXIT_FAILURE),
    (ReplayError, EXIT_FAILURE),
    (tools.ToolError, EXIT_USAGE),
)


def exit_code(exc: Exception) -> int | None:
    """The exit code for an error a person can act on (None: not one of ours)."""
    if isinstance(exc, StartError):
        return exc.exit_code
    if isinstance(exc, ClientError):
        return EXIT_USAGE if isinstance(exc, QueryFailed) and exc.status in (400, 403) else EXIT_FAILURE
    return next((code for kind, code in EXIT_CODES if isinstance(exc, kind)), None)


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:
        known = exit_code(exc)
        if known is None:
            raise
        print(f"coordstate: {exc}", file=sys.stderr)
        code = known
    sys.exit(code)
