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
        ("order-0", "failed"),
        ("order-1", "converged"),
        ("order-2", "converged"),
        ("order-3", "failed"),
        ("order-4", "converged"),
        ("order-5", "converged"),
    ]


def test_replay_is_deterministic(tmp_path: Path, files: dict[str, Path]) -> None:
    first, second = tmp_path / "a.duckdb", tmp_path / "b.duckdb"
    assert replay(first, files["jsonl"], files["proto"]).returncode == 0
    assert replay(second, files["jsonl"], files["proto"]).returncode == 0
    for sql in TABLES:
        assert query(first, sql) == query(second, sql)


def test_a_bad_line_is_named_and_skipped_and_the_rest_replayed(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    after, _ = recorded_order("order-after")
    bad.write_text('{"resourceSpans": []}\n{"resourceSpans": [oops]}\n' + json.dumps(to_json(encode(after))) + "\n")
    db = tmp_path / "x.duckdb"
    result = replay(db, bad)
    assert result.returncode == 1
    assert f"coordstate: {bad}:2: not valid JSON" in result.stderr
    assert "1 record(s) could not be read and were skipped; everything else is stored" in result.stderr
    assert "Traceback" not in result.stderr
    assert "replayed 1 file(s): 2 requests, 4 spans" in result.stdout
    assert query(db, "SELECT instance_key, status FROM instances") == [("order-after", "converged")]


def test_a_truncated_last_message_is_skipped_and_the_complete_ones_replayed(tmp_path: Path) -> None:
    """The Collector's file exporter (format: proto) stopped mid-write leaves half a message."""
    messages = [encode(recorded_order(f"order-{i}")[0]).SerializeToString() for i in range(3)]
    framed = b"".join(struct.pack(">I", len(m)) + m for m in messages)
    start = len(framed) - 4 - len(messages[2])  # where the third message's frame begins
    cut = start + 4 + len(messages[2]) // 2
    truncated = tmp_path / "traces.binpb"
    truncated.write_bytes(framed[:cut])
    db = tmp_path / "x.duckdb"
    result = replay(db, truncated)
    assert result.returncode == 1
    assert f"{truncated}: bytes {start}-{cut}: a truncated last message" in result.stderr
    assert query(db, "SELECT instance_key FROM instances ORDER BY 1") == [("order-0",), ("order-1",)]


def test_a_file_that_is_not_otlp_fails_and_says_so(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\xff" * 64)
    result = replay(tmp_path / "x.duckdb", junk)
    assert result.returncode == 1
    assert f"{junk}: neither OTLP/JSON lines nor OTLP protobuf" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_file_fails_before_anything_is_replayed(tmp_path: Path, files: dict[str, Path]) -> None:
    missing = tmp_path / "traces-2.jsonl"
    db = tmp_path / "x.duckdb"
    result = replay(db, files["jsonl"], missing)
    assert result.returncode == 1
    assert f"coordstate: {missing}: cannot read the file: No such file or directory" in result.stderr
    assert not db.exists()  # the first file was not replayed alone: fix the list and run again
    result = replay(db, tmp_path)
    assert result.returncode == 1
    assert f"{tmp_path}: is a directory; pass the files in it" in result.stderr
