"""The ``coordstate`` command line. The only place in coordstate that exits the process."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from collector.summary import summarize
from processors.model import ModelError, load_model

DEFAULT_MODEL = "otel-config/models/orders.yaml"
DEFAULT_DB = "./coordstate.duckdb"

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
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
