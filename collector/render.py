"""Query results for a terminal: an aligned table, CSV or JSON lines."""

from __future__ import annotations

import csv
import io
import json

import pyarrow as pa

from analytics.read.formats import table_to_json

MAX_CELL = 60


def _cell(value: object) -> str:
    if value is None:
        return "NULL"
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def render(table: pa.Table, fmt: str) -> str:
    data = table_to_json(table, truncated=False)
    columns, rows = data["columns"], data["rows"]
    if fmt == "json":
        return "".join(json.dumps(dict(zip(columns, row, strict=True)), default=str) + "\n" for row in rows)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")  # as DuckDB's CLI: CRLF breaks shell pipelines
        writer.writerow(columns)
        for row in rows:
            writer.writerow(
                ["" if v is None else (v if isinstance(v, str) else json.dumps(v, default=str)) for v in row]
            )
        return out.getvalue()
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    out_lines = [line(columns), line(["-" * w for w in widths]), *(line(r) for r in cells)]
    out_lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out_lines) + "\n"
