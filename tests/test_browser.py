"""A real browser: `coordstate ui` on a free port, headless Debian Chromium driven by Playwright.

Screenshots go to the test's temp dir; with COORDSTATE_SCREENSHOTS=DIR they are also copied there
(`make screenshots` refreshes the README's).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.procs import COORDSTATE
from tests.seed import seed

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "coordstate ui exited early"
        try:
            if httpx.get(f"{url}/_stcore/health", timeout=2).text == "ok":
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)  # polling interval while the app starts
    raise AssertionError(f"{url}/_stcore/health never answered ok")


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    assert Path(CHROMIUM).exists(), "Debian's chromium is required (make test installs it)"
    db = tmp_path_factory.mktemp("browser") / "seeded.duckdb"
    seed(db)
    port = free_port()
    proc = subprocess.Popen(
        [COORDSTATE, "ui", "--db", str(db), "--port", str(port), "--trace-url", "http://localhost:16686/trace/{trace_id}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def rendered(page: object, *, chart: bool = True) -> None:
    """Wait until charts (Vega renders SVG) and tables (a canvas grid) have drawn."""
    selectors = ['[data-testid="stDataFrame"] canvas'] + (['[data-testid="stVegaLiteChart"] svg'] if chart else [])
    for selector in selectors:
        page.locator(selector).first.wait_for(state="visible", timeout=60_000)  # type: ignore[attr-defined]


def shoot(page: object, name: str, tmp_path: Path) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    target = os.environ.get("COORDSTATE_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)
    return path


def test_overview_and_alerts_render_in_chromium(ui: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(ui)
            page.get_by_text("Where every process stands").wait_for(timeout=60_000)
            page.get_by_text("Open anomalies").first.wait_for(timeout=60_000)
            page.get_by_text("Convergence rate").first.wait_for(timeout=60_000)
            rendered(page)
            assert page.get_by_text("Traceback").count() == 0
            overview = shoot(page, "overview", tmp_path)
            page.goto(f"{ui}/alerts")
            page.get_by_role("heading", name="Alerts").wait_for(timeout=60_000)
            page.get_by_text("Median time to heal").wait_for(timeout=60_000)
            rendered(page, chart=False)
            alerts = shoot(page, "alerts", tmp_path)
            page.goto(f"{ui}/board")
            page.get_by_role("heading", name="Board").wait_for(timeout=60_000)
            rendered(page)
            board = shoot(page, "board", tmp_path)
        finally:
            browser.close()
    for shot in (overview, alerts, board):
        assert shot.stat().st_size > 10_000


def test_a_board_row_opens_its_instance_with_24_hour_utc_axes(ui: str, tmp_path: Path) -> None:
    """Selecting a row opens that instance's page, its key in the URL; the timeline's axis says
    UTC and reads like a clock (08:53:20.300), not like bare fractions (.800)."""
    import re

    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{ui}/board")
            page.get_by_text("Select a row to open its instance.").wait_for(timeout=60_000)
            grid = page.locator('[data-testid="stDataFrame"]').first
            grid.locator("canvas").first.wait_for(state="visible", timeout=60_000)
            box = grid.bounding_box()
            assert box is not None
            page.mouse.click(box["x"] + 12, box["y"] + 35 + 17)  # the first row's selection box
            page.wait_for_url(re.compile(r"/instance\?key=order-\d+"), timeout=60_000)
            key = page.url.rsplit("key=", 1)[1]
            page.get_by_role("heading", name="Instance").wait_for(timeout=60_000)
            page.locator('[data-testid="stVegaLiteChart"] svg').first.wait_for(state="visible", timeout=60_000)
            labels = page.locator('[data-testid="stVegaLiteChart"] svg text').all_text_contents()
            shoot(page, "instance", tmp_path)
        finally:
            browser.close()
    assert key.startswith("order-")
    assert "time (UTC)" in labels
    ticks = [t for t in labels if re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3}", t)]
    assert ticks, labels
    assert not [t for t in labels if re.fullmatch(r"\.\d{3}", t)]
