"""``coordstate export``, ``fit`` and ``discover``: the model and the history, for people and tools.

Registered on the CLI's parser by :func:`add_commands`; the CLI (``collector/cli.py``) stays the
only place that exits.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from analytics.common import lake
from analytics.read.client import DEFAULT_API_URL, query_api, query_file
from analytics.read.ocel import Fetch, ocel_document
from analytics.write import shards
from collector.discover import DiscoverError, discover, render_model
from collector.fit import fit_files, fit_stored, render_fit, summary_from_counts
from collector.service import DEFAULT_MODEL, lake_of, load_compiled
from processors.matching import CompiledModel
from processors.model import parse_duration, parse_model

EXIT_OK = 0


class ToolError(ValueError):
    """Bad arguments to a tool (exit 2): the message says what and how to fix it."""


def parse_since(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ToolError(f"--since {text!r}: write an ISO time, e.g. 2026-12-04T08:00:00Z") from exc
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def fetcher(args: argparse.Namespace) -> Fetch:
    """Read through ``--db PATH`` (a file no server holds) or ``--api URL`` (a running server)."""
    if args.db:
        return partial(query_file, args.db)
    token = args.token or os.environ.get("COORDSTATE_TOKEN") or None
    return partial(query_api, args.api or DEFAULT_API_URL, token=token)


def _cmd_export(args: argparse.Namespace) -> int:
    document = ocel_document(fetcher(args), parse_since(args.since))
    out = Path(args.ocel)
    out.write_text(json.dumps(document, separators=(",", ":")), encoding="utf-8")
    print(
        f"wrote {out}: OCEL 2.0 with {len(document['events']):,} events and {len(document['objects']):,} objects "
        f"({', '.join(t['name'] for t in document['objectTypes'])})"
    )
    return EXIT_OK


def _cmd_fit(args: argparse.Namespace) -> int:
    model = load_compiled(args.model)
    if args.files:
        if args.db or args.api:
            raise ToolError("give OTLP files, or --db / --api, not both")
        missing = [f for f in args.files if not Path(f).is_file()]
        if missing:
            raise ToolError(
                f"{missing[0]}: no such file; pass OTLP files as replay reads them (JSON lines or protobuf)"
            )
        report = fit_files(model, [Path(f) for f in args.files], ", ".join(args.files))
    else:
        report = fit_stored(model, fetcher(args), args.db or args.api or DEFAULT_API_URL)
    if args.format == "json":
        print(json.dumps(report.as_json(), indent=2))
    else:
        print(render_fit(report), end="")
    return EXIT_OK


def _cmd_discover(args: argparse.Namespace) -> int:
    files = [Path(f) for f in args.files]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise ToolError(f"{missing[0]}: no such file; pass OTLP files as replay reads them (JSON lines or protobuf)")
    try:
        found = discover(files, args.key)
    except DiscoverError as exc:
        raise ToolError(str(exc)) from exc
    text = render_model(found, args.workflow)
    compiled = CompiledModel(parse_model(text, "discovered model"))  # it must be a valid model
    counts = found.counts
    traffic = None if counts is None else summary_from_counts(
        compiled, found.spans, counts.traces, counts.span_names, counts.event_names, counts.keyed_names
    )  # fmt: skip
    report = render_fit(fit_files(compiled, files, ", ".join(args.files), traffic))
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}: workflow {args.workflow}, key {found.key.attribute}, {len(found.steps)} steps")
        print(report, end="")
    else:
        print(text, end="")
        print(report, end="", file=sys.stderr)
    return EXIT_OK


def _cmd_lake_maintain(args: argparse.Namespace) -> int:
    where = lake_of(args.lake, args.lake_data)
    if where is None:
        raise ToolError("give the lake: --lake CATALOG --lake-data PATH")
    try:
        keep = parse_duration(args.keep)
    except ValueError as exc:
        raise ToolError(f"--keep {args.keep!r}: write a duration such as 1h or 7d") from exc
    try:
        con = lake.connect(where)
    except lake.LakeError as exc:
        raise ToolError(str(exc)) from exc
    try:
        pruned = shards.prune(con, keep // 1_000_000_000)
        done = lake.maintain(con, keep // 1_000_000_000, pruned.floor if pruned else None)
    finally:
        con.close()
    print(
        f"maintained the {where.describe()}: data files {done.files_before:,} -> {done.files_after:,}, "
        f"snapshots {done.snapshots_before:,} -> {done.snapshots_after:,} (kept {args.keep} of history)"
    )
    if pruned is not None:
        print(
            f"hand-offs folded by every partition: {pruned.handoff_rows:,} rows removed, {pruned.shared_keys:,} "
            f"shared keys; snapshots from {pruned.floor} UTC kept for the slowest partition"
        )
    return EXIT_OK


def _source(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--api", metavar="URL", help=f"query API of a running server (default {DEFAULT_API_URL})")
    where.add_argument("--db", metavar="PATH", help="a DuckDB file no server holds (opened read-only)")
    p.add_argument("--token", default=None, help="bearer token of the API (or set COORDSTATE_TOKEN)")


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    export = sub.add_parser("export", help="write the coordination history as an OCEL 2.0 event log (process mining)")
    export.add_argument("--ocel", required=True, metavar="FILE", help="OCEL 2.0 JSON file to write")
    export.add_argument("--since", default=None, metavar="TIME", help="only transitions from this time on (ISO, UTC)")
    _source(export)
    export.set_defaults(func=_cmd_export)

    fit = sub.add_parser("fit", help="how well a model explains the traffic: matches, near misses, statuses")
    fit.add_argument("--model", default=DEFAULT_MODEL, metavar="PATH", help="model YAML (default %(default)s)")
    fit.add_argument("files", nargs="*", metavar="FILE", help="OTLP files as replay reads them (or --db / --api)")
    fit.add_argument("--format", choices=["table", "json"], default="table", help="output (default %(default)s)")
    _source(fit)
    fit.set_defaults(func=_cmd_fit)

    disc = sub.add_parser("discover", help="propose a model from traffic (OTLP files), with the evidence for it")
    disc.add_argument("files", nargs="+", metavar="FILE", help="OTLP files as replay reads them")
    disc.add_argument(
        "--key", default=None, metavar="ATTR", help="the business-key attribute (default: ranked from the traffic)"
    )
    disc.add_argument(
        "-o", "--output", default=None, metavar="FILE", help="write the model here (default: standard output)"
    )
    disc.add_argument("--workflow", default="discovered", metavar="NAME", help="workflow name (default %(default)s)")
    disc.set_defaults(func=_cmd_discover)

    lake_cmd = sub.add_parser("lake", help="lake mode upkeep (run in one process: it never races another)")
    lake_sub = lake_cmd.add_subparsers(dest="lake_command", required=True)
    maintain = lake_sub.add_parser(
        "maintain", help="merge small files, write out inlined rows, expire old snapshots, remove unreferenced files"
    )
    maintain.add_argument("--lake", required=True, metavar="CATALOG", help="the lake's PostgreSQL catalog")
    maintain.add_argument("--lake-data", required=True, metavar="PATH", help="the lake's data path")
    maintain.add_argument(
        "--keep",
        default="1h",
        metavar="DURATION",
        help="snapshots (time travel) kept, e.g. 1h, 7d (default %(default)s)",
    )
    maintain.set_defaults(func=_cmd_lake_maintain)
