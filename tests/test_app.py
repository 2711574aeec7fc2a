"""The app, page by page, with Streamlit's AppTest: numbers and rows shown, empty and error states."""

from __future__ import annotations

from datetime import UTC
from pathlib import Path

import duckdb
import pytest
from streamlit.testing.v1 import AppTest

from analytics.write.schema import migrate
from tests.helpers import ROOT
from tests.seed import seed

pytestmark = pytest.mark.timeout(180)

MAIN = str(ROOT / "app" / "main.py")


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("app") / "seeded.duckdb"
    seed(db)
    return db


@pytest.fixture
def offline(seeded: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("COORDSTATE_API", raising=False)
    monkeypatch.setenv("COORDSTATE_DB", str(seeded))
    monkeypatch.setenv("COORDSTATE_TRACE_URL", "http://jaeger.example:16686/trace/{trace_id}")
    return seeded


def page(name: str, **query: str) -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=60)
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    if name != "overview":
        at.switch_page(f"views/{name}.py")
        at.run()
    assert not at.exception, at.exception
    return at


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_overview_shows_statuses_and_open_anomalies(offline: Path) -> None:
    at = page("overview")
    shown = metrics(at)
    assert shown["Instances"] == "11"
    assert shown["Stalled"] == "1"
    assert shown["Diverged"] == "2"
    assert shown["Failed / compensated"] == "1 / 1"
    assert shown["Degraded"] == "0"
    assert shown["Convergence rate"] == "72.7%"
    anomalies = at.dataframe[0].value
    assert set(anomalies["kind"]) >= {"uncompensated_failure", "conflicting_state", "duplicate_action", "stalled"}
    assert any("offline file" in c.value for c in at.caption)


def test_overview_empty_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty.duckdb"
    con = duckdb.connect(str(empty))
    migrate(con)
    con.close()
    monkeypatch.delenv("COORDSTATE_API", raising=False)
    monkeypatch.setenv("COORDSTATE_DB", str(empty))
    at = page("overview")
    assert at.info[0].value.startswith("No workflow instances yet — is anything sending spans to :4327?")


def test_api_down_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COORDSTATE_DB", raising=False)
    monkeypatch.setenv("COORDSTATE_API", "http://127.0.0.1:9")
    for name in ("overview", "board", "alerts"):
        at = page(name)
        assert "query API at http://127.0.0.1:9 is not answering" in at.error[0].value
        assert "is `coordstate serve` running?" in at.error[0].value


def test_board_lists_every_instance(offline: Path) -> None:
    at = page("board")
    rows = at.dataframe[0].value
    assert len(rows) == 11
    assert set(rows["status"]) == {"converged", "failed", "compensated", "diverged", "stalled"}
    at.multiselect[0].set_value(["stalled"]).run()
    assert list(at.dataframe[0].value["instance_key"]) == ["order-1048"]


def test_convergence_page(offline: Path) -> None:
    at = page("convergence")
    assert metrics(at)["`order` convergence rate (all windows)"] == "72.7%"
    table = at.dataframe[0].value
    assert int(table["started"].sum()) == 11


def test_alerts_page_with_actions_and_trace_links(offline: Path) -> None:
    at = page("alerts")
    rows = at.dataframe[0].value
    assert "order-1051" in set(rows["instance_key"])
    action = rows[rows["instance_key"] == "order-1051"]["suggested_action"].iloc[0]
    assert action.startswith("refund the charge of order-1051")
    assert all(str(link).startswith("http://jaeger.example:16686/trace/") for link in rows["trace"])
    refund = rows[(rows["instance_key"] == "order-1051") & (rows["kind"] == "uncompensated_failure")].iloc[0]
    assert str(refund["alerted_at"]) == "2025-10-09 10:00:00"
    assert refund["action_delivery"] == "sent (2 attempts)"
    assert metrics(at)["Open, not yet alerted"] == str(len(rows) - 1)
    at.radio[0].set_value("Resolved").run()
    resolved = at.dataframe[0].value
    assert {"order-1042", "order-1049"} <= set(resolved["instance_key"])
    assert metrics(at)["Median time to heal"].endswith(" s")


def test_instance_page_timeline_and_as_of(offline: Path) -> None:
    at = page("instance", key="order-1042")
    shown = metrics(at)
    assert shown["Status"] == "compensated"
    assert shown["Open anomalies"] == "0"
    assert any("Status at" in m.value and "compensated" in m.value for m in at.markdown)
    history = at.dataframe[-1].value
    assert list(history["status"]) == ["running", "diverged", "compensated"]
    # the as-of slider starts at the instance's last moment, as its caption says, and steps by
    # milliseconds (a datetime slider steps by a day by default: its handle sat at the left end)
    slider = at.slider[0]
    assert slider.value.replace(tzinfo=UTC).timestamp() * 1e6 == slider.max
    assert 1_000 <= slider.step <= (slider.max - slider.min) / 100


def test_instance_page_unknown_key(offline: Path) -> None:
    at = page("instance", key="order-nope")
    assert "No instance called 'order-nope'" in at.warning[0].value


def test_sql_page_runs_an_example(offline: Path) -> None:
    at = page("sql")
    at.selectbox[0].set_value("How many instances are in each status?").run()
    assert "GROUP BY ALL" in at.text_area[0].value
    at.button[0].click().run()
    assert not at.exception
    result = at.dataframe[0].value
    assert set(result["status"]) == {"converged", "failed", "compensated", "diverged", "stalled"}


def test_sql_page_refuses_writes(offline: Path) -> None:
    at = page("sql")
    at.text_area[0].set_value("DELETE FROM anomalies").run()
    at.button[0].click().run()
    assert "DELETE statements are refused" in at.error[0].value


def test_live_pages_read_through_the_query_api(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Against a running server: the numbers come through the API (Arrow), ingest health too."""
    from collector.service import ServeConfig, Service
    from tests.helpers import ORDERS_MODEL
    from tests.otel_clients import grpc_exporter, recorded_order

    config = ServeConfig(
        model=str(ORDERS_MODEL), db=str(db_path), otlp_grpc="127.0.0.1:0", otlp_http=None, api="127.0.0.1:0"
    )
    with Service(config) as svc:
        for i in range(3):
            spans, _ = recorded_order(f"live-{i}", fail_payment=i == 2)
            grpc_exporter(svc.grpc_endpoint).export(spans)
        monkeypatch.delenv("COORDSTATE_DB", raising=False)
        monkeypatch.setenv("COORDSTATE_API", svc.api_url)
        at = page("overview")
        shown = metrics(at)
        assert shown["Instances"] == "3"
        assert shown["Failed / compensated"] == "1 / 0"
        assert shown["Spans/s"] != "0"  # the server's own rate: right on the first render
        assert shown["Spans received"] == "10"
        assert shown["Rejected"] == "0"
        board = page("board")
        assert set(board.dataframe[0].value["instance_key"]) == {"live-0", "live-1", "live-2"}
