"""The ``coordstate`` command line. The only place in coordstate that exits the process."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from collector.replay import ReplayError, replay
from collector.service import (
    DEFAULT_DB,
    DEFAULT_MODEL,
    DEFAULT_OTLP_GRPC,
    DEFAULT_OTLP_HTTP,
    ServeConfig,
    Service,
    StartError,
    load_compiled,
)
from collector.summary import summarize
from processors.model import ModelError, load_model

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def _cmd_check(args: argparse.Namespace) -> int:
    status = EXIT_OK
    for path in args.models:
        try:
            model = load_model(path)
        except ModelError as exc:
            for problem in exc.problems:
                print(f"{path}: {problem}", file=sys.stderr)
            status = EXIT_USAGE
            continue
        print(summarize(path, model))
    return status


def _wait_for_signal() -> None:
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    while not stop.wait(3600):
        pass


def _cmd_serve(args: argparse.Namespace) -> int:
    config = ServeConfig(
        model=args.model,
        db=args.db,
        otlp_grpc=args.otlp_grpc,
        otlp_http=args.otlp_http,
        token=args.token or os.environ.get("COORDSTATE_TOKEN") or None,
    )
    service = Service(config)
    service.start()
    print(
        f"coordstate serving model {config.model} into {config.db}\n"
        f"  OTLP/gRPC  {service.grpc_endpoint if service.grpc else 'off'}\n"
        f"  OTLP/HTTP  {service.http_endpoint + '/v1/traces' if service.http else 'off'}\n"
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
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coordstate",
        description="Coordination State Layer for OpenTelemetry: "
        "where every business process across your services stands.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser("check", help="validate model files and summarize them")
    check.add_argument("models", nargs="+", metavar="MODEL", help="model YAML file(s)")
    check.set_defaults(func=_cmd_check)

    serve = sub.add_parser("serve", help="receive OTLP traces and keep the coordination state")
    _model_db(serve)
    serve.add_argument(
        "--otlp-grpc",
        default=DEFAULT_OTLP_GRPC,
        metavar="HOST:PORT",
        help="OTLP/gRPC listen address (default %(default)s)",
    )
    serve.add_argument(
        "--otlp-http",
        default=DEFAULT_OTLP_HTTP,
        metavar="HOST:PORT",
        help="OTLP/HTTP listen address (default %(default)s)",
    )
    serve.add_argument(
        "--token", default=None, help="require this bearer token (or set COORDSTATE_TOKEN)"
    )
    serve.set_defaults(func=_cmd_serve)

    rep = sub.add_parser(
        "replay", help="replay OTLP files (collector file exporter: JSON lines or protobuf)"
    )
    _model_db(rep)
    rep.add_argument("files", nargs="+", metavar="FILE")
    rep.add_argument("--quiet", action="store_true", help="no progress bar")
    rep.set_defaults(func=_cmd_replay)
    return parser


def _model_db(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default=DEFAULT_MODEL, metavar="PATH", help="model YAML (default %(default)s)"
    )
    p.add_argument(
        "--db",
        default=DEFAULT_DB,
        metavar="PATH",
        help="DuckDB database file (default %(default)s)",
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except (StartError, ReplayError) as exc:
        print(f"coordstate: {exc}", file=sys.stderr)
        code = (
            EXIT_USAGE
            if isinstance(exc, StartError) and "model" in str(exc).split(":")[0]
            else EXIT_FAILURE
        )
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
