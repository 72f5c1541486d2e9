"""A real browser on `svp dashboard`: Debian's headless chromium, driven through selenium and Debian's
chromium-driver, loads both pages from a `svp dashboard` subprocess on a free loopback port and checks that
charts, counts and thumbnails render with no exception box. Screenshots go to a folder the test prints.
Skipped, saying so, when no chromium (or chromedriver, or selenium) can be had."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from dashboard_fixtures import curated_folder, two_runs
from waiting import wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
SHOTS_ENV = "SVP_DASHBOARD_SHOTS"  # where to keep the screenshots (default: the test's temp folder)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    def healthy() -> bool:
        assert proc.poll() is None, "svp dashboard exited early"
        with contextlib.suppress(OSError):
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).status == 200
        return False

    wait_until(healthy, timeout, "answer to svp dashboard's health check", interval=0.5)


def _browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("browser test skipped: selenium is not installed (pip install selenium)")
    if not CHROMIUM or not DRIVER:
        pytest.skip(
            "browser test skipped: no chromium/chromedriver (apt-get install chromium chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1700",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(DRIVER), options=options)


def _wait_for(driver, css: str, count: int = 1, timeout: float = 120):
    def shown() -> list:
        found = driver.find_elements("css selector", css)
        busy = driver.find_elements("css selector", '[data-testid="stStatusWidget"]')
        return found if len(found) >= count and not busy else []

    return wait_until(shown, timeout, f"{count} x {css} on the page", interval=0.5)


def _external_requests(driver) -> list[str]:
    """Resources the page fetched from anywhere but the dashboard itself (charts must need no CDN)."""
    return driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
        ".filter(n => !n.startsWith(location.origin) && !/^(data|blob):/.test(n))"
    )


def _loaded_images(driver, want: int, timeout: float = 60) -> int:
    """How many <img> have their pixels, polled until `want` have: an <img> is in the page before its bytes."""

    def loaded() -> int:
        return driver.execute_script(
            "return [...document.querySelectorAll('img')].filter(i => i.complete && i.naturalWidth > 0).length"
        )

    with contextlib.suppress(TimeoutError):  # the caller says how many it wanted
        wait_until(lambda: loaded() >= want, timeout, f"{want} loaded images", interval=0.25)
    return loaded()


@pytest.fixture(scope="module")
def dashboard(ray_session, tmp_path_factory):
    base = tmp_path_factory.getbasetemp() / "dashboard"
    folder, store = curated_folder(base), two_runs(base)
    port = _free_port()
    cmd = [sys.executable, "-m", "orchestration.cli", "dashboard", "--curation", str(folder)]
    cmd += ["--runs", str(store), "--port", str(port)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        assert proc.stdout.readline().strip().startswith(f"svp dashboard: http://127.0.0.1:{port}")
        _wait_healthy(port, proc)
        yield f"http://127.0.0.1:{port}", folder, store
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)  # svp stops its Streamlit child (killing it after a grace period)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # nothing of this test may outlive it


def test_both_pages_render_in_chromium(dashboard, tmp_path):
    url, folder, store = dashboard
    shots = Path(os.environ.get(SHOTS_ENV) or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    driver = _browser()
    try:
        driver.get(url)  # the curation page is the default one
        _wait_for(driver, '[data-testid="stMetric"]', 4)
        _wait_for(driver, '[data-testid="stImage"] img', 2)  # histogram and keep-rate curve
        assert "clips kept" in driver.page_source and "Page not found" not in driver.page_source
        # Kept time as `svp curate report` prints it (h:mm:ss), not as fractions of an hour.
        assert re.search(r"\d+:\d\d:\d\d of \d+:\d\d:\d\d", driver.page_source)
        assert not driver.find_elements("css selector", '[data-testid="stException"]')
        assert _loaded_images(driver, 2) >= 2
        driver.save_screenshot(str(shots / "dashboard-curation.png"))
        tab = driver.find_element("xpath", "//*[@role='tab'][contains(., 'Boundary clips')]")
        tab.click()
        time.sleep(1)
        clips = len(pd.read_parquet(folder / "clips.parquet", columns=["clip_id"]))
        thumbnails = min(6, clips)  # on both sides of the threshold, next to the two charts
        assert _loaded_images(driver, 2 + thumbnails) >= 2 + thumbnails
        assert "just above" in driver.page_source
        driver.save_screenshot(str(shots / "dashboard-boundary.png"))
        assert _external_requests(driver) == []

        from orchestration.dashboard.run_table import client_for, stage_table

        ids = ",".join(stage_table(client_for(f"sqlite:///{store.resolve()}/mlflow.db"))["run_id"])
        driver.get(f"{url}/experiments?compare={ids}")
        _wait_for(driver, '[data-testid="stDataFrame"]', 3)
        _wait_for(driver, '[data-testid="stImage"] img', 2)  # loss and lr curves
        assert "Params that differ" in driver.page_source
        assert "Eval (latest)" in driver.page_source  # the stage's eval: block scored each export
        assert not driver.find_elements("css selector", '[data-testid="stException"]')
        driver.save_screenshot(str(shots / "dashboard-experiments.png"))
        assert _external_requests(driver) == []
    finally:
        driver.quit()
    print(f"\nscreenshots: {shots}")
