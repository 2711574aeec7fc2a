"""Every SQL example of the README runs against a seeded database and answers its question."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from tests.helpers import ROOT
from tests.seed import SEED_NOW, seed

pytestmark = pytest.mark.timeout(180)

Rows = list[tuple[object, ...]]


def readme_queries() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## SQL over coordination history", 1)[1].split("\n## ", 1)[0]
    found = re.findall(r"#### (.+?)\n+```sql\n(.+?)```", section, flags=re.S)
    return {title.strip(): sql for title, sql in found}


def keys(rows: Rows) -> set[object]:
    return {r[0] for r in rows}


EXPECT: dict[str, Callable[[Rows], bool]] = {
    "Which orders are paid but not shipped?": lambda r: (
        keys(r) >= {"order-1048", "order-1051"} and "order-1043" not in keys(r)
    ),
    "Which orders were inconsistent at 08:55 on 9 October?": lambda r: (
        {("order-1050", "diverged"), ("order-1051", "diverged"), ("order-1048", "stalled")} <= {(x[0], x[1]) for x in r}
    ),
    "What is the p95 time to converge, per hour?": lambda r: len(r) == 2 and r[0][2] == 10 and r[1][2] == 1,
    "Which anomalies healed by themselves, and how long did they take?": lambda r: (
        {("order-1042", "uncompensated_failure"), ("order-1049", "missing_step")} <= {(x[0], x[1]) for x in r}
    ),
    "Were any cards charged twice in the last day?": lambda r: keys(r) == {"order-1046"} and len(r[0][3]) == 2,
    "Which step is the slowest, per workflow?": lambda r: (
        r[0][1] == "checkout" and {x[1] for x in r} >= {"payment", "shipment"}
    ),
    "What needs doing right now? (open anomalies with their suggested actions)": lambda r: (
        {"order-1048", "order-1051", "order-1050", "order-1046"} <= {x[2] for x in r}
    ),
    "What happened to order-1042, step by step?": lambda r: (
        [x[1:3] for x in r][-2:] == [("refund", "started"), ("refund", "completed")]
    ),
    "How long was each order inconsistent?": lambda r: 0 < len(r) <= 10 and all(x[1] > 0 for x in r),
    "How many instances are in each status?": lambda r: (
        {x[1] for x in r} == {"converged", "failed", "compensated", "diverged", "stalled"}
    ),
    "Which matched spans never found their instance?": lambda r: ("orphan", "shipping", "ShipOrder", 1) in r,
}


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("seed") / "seeded.duckdb"
    seed(db)
    return db


def test_readme_has_at_least_eight_worked_questions() -> None:
    assert len(readme_queries()) >= 8
    assert set(readme_queries()) == set(EXPECT)


def test_the_apps_examples_are_the_readmes() -> None:
    from analytics.read.examples import EXAMPLES

    assert [(t, q.strip()) for t, q in EXAMPLES] == [(t, q.strip()) for t, q in readme_queries().items()]


@pytest.mark.parametrize("title", sorted(EXPECT))
def test_readme_query_answers_its_question(seeded: Path, title: str) -> None:
    sql = readme_queries()[title]
    now = datetime.fromtimestamp(SEED_NOW / 1e9, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
    sql = sql.replace("now()", f"TIMESTAMP '{now}'")  # the seeded history is pinned in time
    con = duckdb.connect(str(seeded), read_only=True)
    try:
        rows = con.execute(sql).fetchall()
    finally:
        con.close()
    assert EXPECT[title](rows), rows
