"""`coordstate replay`: the collector's file exporter output → the same tables, deterministically."""

from __future__ import annotations

import gzip
import json
import struct
import subprocess
from pathlib import Path

import pytest

from collector.decode import to_json
from tests.conftest import query
from tests.otel_clients import encode, recorded_order
from tests.procs import COORDSTATE

pytestmark = pytest.mark.timeout(120)

TABLES = [
    "SELECT * EXCLUDE (observed_at) FROM transitions ORDER BY ALL",
    "SELECT * FROM instances ORDER BY ALL",
    "SELECT * FROM instance_history ORDER BY ALL",
    "SELECT * EXCLUDE (observed_at) FROM spans ORDER BY ALL",
    "SELECT * EXCLUDE (detected_at) FROM anomalies ORDER BY ALL",
]


def replay(db: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [COORDSTATE, "replay", "--quiet", "--db", str(db), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=90,
    )


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    orders = [recorded_order(f"order-{i}", fail_payment=i % 3 == 0) for i in range(6)]
    jsonl = tmp_path / "traces.jsonl"
    jsonl.write_text("\n".join(json.dumps(to_json(encode(spans))) for spans, _ in orders[:3]) + "\n")
    proto = tmp_path / "traces.binpb"
    proto.write_bytes(
        b"".join(struct.pack(">I", len(m)) + m for m in (encode(s).SerializeToString() for s, _ in orders[3:]))
    )
    single = tmp_path / "single.pb.gz"
    single.write_bytes(gzip.compress(encode(orders[0][0]).SerializeToString()))
    return {"jsonl": jsonl, "proto": proto, "single": single}


def test_replay_json_lines_and_length_prefixed_protobuf(tmp_path: Path, files: dict[str, Path]) -> None:
    db = tmp_path / "replay.duckdb"
    result = replay(db, files["jsonl"], files["proto"], files["single"])
    assert result.returncode == 0, result.stderr
    assert "replayed 3 file(s): 7 requests, 22 spans (0 rejected)" in result.stdout
    rows = query(db, "SELECT instance_key, status FROM instances ORDER BY 1")
    assert rows == [
        ("order-0", "compensated"),
        ("order-1", "converged"),
        ("order-2", "converged"),
        ("order-3", "compensated"),
        ("order-4", "converged"),
        ("order-5", "converged"),
    ]


def test_replay_is_deterministic(tmp_path: Path, files: dict[str, Path]) -> None:
    first, second = tmp_path / "a.duckdb", tmp_path / "b.duckdb"
    assert replay(first, files["jsonl"], files["proto"]).returncode == 0
    assert replay(second, files["jsonl"], files["proto"]).returncode == 0
    for sql in TABLES:
        assert query(first, sql) == query(second, sql)


def test_replay_of_a_bad_file_names_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"resourceSpans": []}\n{"resourceSpans": [oops]}\n')
    result = replay(tmp_path / "x.duckdb", bad)
    assert result.returncode == 1
    assert f"{bad}:2: not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr
