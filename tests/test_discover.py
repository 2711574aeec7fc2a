"""`coordstate discover`: a model proposed from traffic alone agrees with the hand-written one."""

from __future__ import annotations

import random
import re
import subprocess
from pathlib import Path

import duckdb
import pytest
import yaml

from demo.shop import SCENARIOS
from tests.capture import demo_shop_capture
from tests.helpers import ORDERS_MODEL, ROOT
from tests.oteldemo import NAMINGS, Naming, Shop, per_service, spans_of
from tests.procs import COORDSTATE
from tests.test_oteldemo import SHARES, T0, write

OTEL_DEMO_MODEL = ROOT / "otel-config" / "models" / "otel-demo.yaml"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([COORDSTATE, *args], capture_output=True, text=True, timeout=300)


def statuses(model: Path, capture: Path, db: Path) -> dict[str, str]:
    done = run("replay", "--quiet", "--model", str(model), "--db", str(db), str(capture))
    assert done.returncode == 0, done.stderr
    con = duckdb.connect(str(db), read_only=True)
    try:
        return dict(con.execute("SELECT instance_key, status FROM instances").fetchall())
    finally:
        con.close()


def agreement(hand: dict[str, str], found: dict[str, str]) -> float:
    keys = hand.keys() | found.keys()
    return sum(hand.get(k) == found.get(k) for k in keys) / len(keys)


def matchers(model: dict) -> set[tuple[str, str]]:  # type: ignore[type-arg]
    out = set()
    for step in model["workflows"][0]["steps"]:
        for m in step["match"] if isinstance(step["match"], list) else [step["match"]]:
            out.add((m["service"], m.get("span") or m.get("event")))
    return out


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # every scenario at its default share but `conflict` (a refund after a shipment): that the two
    # must never hold together is a business rule (`conflicts:`), which no traffic can reveal
    return demo_shop_capture(
        tmp_path_factory.mktemp("shop") / "shop.binpb", seconds=3, scenarios={**SCENARIOS, "conflict": 0.0}
    )


def test_discover_finds_the_order_id_and_the_steps_of_orders_yaml(shop: Path, tmp_path: Path) -> None:
    out = tmp_path / "proposed.yaml"
    done = run("discover", str(shop), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"wrote {out}: workflow discovered, key app.order.id, ")
    assert "workflow discovered: " in done.stdout  # its fit on the same data follows
    assert run("check", str(out)).returncode == 0
    proposed = yaml.safe_load(out.read_text())
    assert proposed["workflows"][0]["key"]["attributes"] == ["app.order.id"]
    assert matchers(yaml.safe_load(ORDERS_MODEL.read_text())) <= matchers(proposed)
    text = out.read_text()
    assert re.search(r"# compensated_by: refund   # candidate, confirm: refund follows a failure", text)
    # confirmed by a person (the comment uncommented): the statuses agree with orders.yaml's
    confirmed = tmp_path / "confirmed.yaml"
    confirmed.write_text(re.sub(r"# (compensated_by: \S+)   # candidate.*", r"\1", text))
    hand = statuses(ORDERS_MODEL, shop, tmp_path / "hand.duckdb")
    found = statuses(confirmed, shop, tmp_path / "found.duckdb")
    assert len(hand) > 100
    assert agreement(hand, found) >= 0.98, sorted(
        (k, hand.get(k), found.get(k)) for k in hand if hand.get(k) != found.get(k)
    )


@pytest.mark.parametrize("naming", [NAMINGS[0], NAMINGS[2]], ids=str)
def test_discover_on_the_opentelemetry_demo_agrees_with_its_model(naming: Naming, tmp_path: Path) -> None:
    capture = write(per_service(spans_of(Shop(naming, seed=21, t0_ns=T0).orders(200, SHARES)), random.Random(21)), tmp_path / "demo.binpb")  # fmt: skip
    out = tmp_path / "proposed.yaml"
    done = run("discover", str(capture), "-o", str(out))
    assert done.returncode == 0, done.stderr
    proposed = yaml.safe_load(out.read_text())
    assert proposed["workflows"][0]["key"]["attributes"] == [f"{naming.prefix}.order.id"]
    assert proposed["workflows"][0]["key"]["fallback"] == "trace_id"  # failed payments carry no order id
    hand = statuses(OTEL_DEMO_MODEL, capture, tmp_path / "hand.duckdb")
    found = statuses(out, capture, tmp_path / "found.duckdb")
    assert agreement(hand, found) >= 0.98


def test_discover_says_what_to_do_when_nothing_is_a_key(tmp_path: Path) -> None:
    empty = tmp_path / "nothing.json"
    empty.write_text('{"resourceSpans": []}\n')
    done = run("discover", str(empty))
    assert done.returncode == 2
    assert "no spans in the files" in done.stderr
