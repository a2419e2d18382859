"""The dashboard in a real headless Chromium: the charts and alerts shown match the database."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tailorml.apps.finwatch import store
from tailorml.apps.finwatch.config import FinwatchConfig
from tailorml.apps.finwatch.pipeline import Watcher
from tailorml.apps.finwatch.replay import TOPICS, Surge, make_stream
from tailorml.apps.finwatch.scorer import LabelScorer
from tailorml.apps.finwatch.trends import time_range, window_counts

from .conftest import REPO
from .finwatch_services import free_port

START = 1767571200.0
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def chrome(user_dir: str):  # type: ignore[no-untyped-def]
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM or ""
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={user_dir}",
        "--window-size=1400,1000",
    ):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(DRIVER or ""), options=opts)


@pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="chromium/chromedriver not installed; apt-get install chromium chromium-driver",
)
def test_dashboard_in_headless_chromium(tmp_path: Path) -> None:
    import uvicorn
    from selenium.webdriver.common.by import By

    from tailorml.apps.finwatch.server import create_app

    url = f"sqlite:///{tmp_path / 'd.db'}"
    c = FinwatchConfig(db=url, models={"scorer": "labels"})
    engine = store.make_engine(url)
    w = Watcher(c, engine, LabelScorer(c.models, TOPICS)).open()
    events = make_stream(
        12, [Surge("Macro", START + 9 * 3600, 45, 1.5)], rate_per_min=10, start=START, seed=2
    )
    first = [e for e in events if e["time"] < "2026-01-05T10"]
    w.ingest(first, "test")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(c, engine), host="127.0.0.1", port=port, log_level="warning")
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    user_dir = tempfile.mkdtemp(prefix="finwatch-chrome-")
    driver = chrome(user_dir)
    try:
        driver.get(f"http://127.0.0.1:{port}/?refresh=1&hours=48")

        def loaded(n: int = 1) -> None:
            deadline = time.time() + 30
            while time.time() < deadline:
                if (
                    int(driver.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") or 0)
                    >= n
                ):
                    return
                time.sleep(0.1)
            raise AssertionError("dashboard did not load")

        loaded()
        # Live refresh: more events arrive, the page shows them without a reload.
        w.ingest(events[len(first) :], "test")
        w.advance(final=True)
        n0 = int(driver.find_element(By.TAG_NAME, "body").get_attribute("data-loaded"))
        loaded(n0 + 2)
        driver.execute_script("window.finwatchPaused = true;")
        time.sleep(1.5)  # let an in-flight refresh finish before reading the page
        with engine.connect() as conn:
            lo, hi = time_range(conn)
            rows = window_counts(conn, c.detect_window, hi - 48 * 3600, hi + 1)
            alerts = conn.execute(store.alerts.select()).all()
        want: dict[str, dict[str, int]] = {}
        for r in rows:
            d = want.setdefault(r["topic"], {"volume": 0, "negative": 0, "windows": 0})
            d["volume"] += r["volume"]
            d["negative"] += r["negative"]
            d["windows"] += 1
        cards = driver.find_elements(By.CSS_SELECTOR, ".topic")
        shown = {
            el.get_attribute("data-topic"): {
                "volume": int(el.get_attribute("data-volume")),
                "negative": int(el.get_attribute("data-negative")),
                "windows": int(el.get_attribute("data-windows")),
            }
            for el in cards
        }
        assert shown == want and sum(d["volume"] for d in shown.values()) == len(events)
        macro = driver.find_element(By.CSS_SELECTOR, '.topic[data-topic="Macro"]')
        # One volume bar per window with events, and the negative-share line drawn over them.
        assert len(macro.find_elements(By.CSS_SELECTOR, "rect.bar")) == want["Macro"]["windows"]
        assert (
            len(macro.find_element(By.CSS_SELECTOR, "polyline.neg").get_attribute("points").split())
            == want["Macro"]["windows"]
        )
        assert "alerting" in macro.get_attribute("class")
        shown_alerts = driver.find_elements(By.CSS_SELECTOR, ".alert")
        assert len(alerts) >= 1 and len(shown_alerts) == len(alerts)
        by_id = {int(a.get_attribute("data-alert-id")): a for a in shown_alerts}
        import json

        for a in alerts:
            el = by_id[a.pk]
            assert el.get_attribute("data-topic") == a.topic
            ids = json.loads(a.event_ids)
            assert int(el.get_attribute("data-events")) == len(ids)
            listed = [
                li.get_attribute("data-event-id") for li in el.find_elements(By.CSS_SELECTOR, "li")
            ]
            assert listed and set(listed) <= set(ids)
        out = REPO / "runs" / "finwatch-dashboard.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(tmp_path / "dashboard.png"))
        shutil.copy(tmp_path / "dashboard.png", out)
        assert (tmp_path / "dashboard.png").stat().st_size > 20_000
    finally:
        driver.quit()
        server.should_exit = True
        shutil.rmtree(user_dir, ignore_errors=True)
        engine.dispose()


@pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="chromium/chromedriver not installed; apt-get install chromium chromium-driver",
)
def test_dashboard_with_an_api_key(tmp_path: Path) -> None:
    """With a key, the page takes it from #key=... (never sent to the server), keeps it for the
    tab, sends it as X-API-Key, and says what to do when it is missing or wrong."""
    import uvicorn
    from selenium.webdriver.common.by import By

    from tailorml.apps.finwatch.server import create_app

    key = "dash-key-321"
    url = f"sqlite:///{tmp_path / 'k.db'}"
    c = FinwatchConfig(db=url, models={"scorer": "labels"})
    engine = store.make_engine(url)
    w = Watcher(c, engine, LabelScorer(c.models, TOPICS)).open()
    events = make_stream(3, [], rate_per_min=5, start=START, seed=4)
    w.ingest(events, "test")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(c, engine, api_key=key), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}/?refresh=1&hours=48"
    user_dir = tempfile.mkdtemp(prefix="finwatch-chrome-")
    driver = chrome(user_dir)

    def wait_for(check: Any, what: str) -> None:
        deadline = time.time() + 30
        while time.time() < deadline:
            if check():
                return
            time.sleep(0.1)
        status = driver.find_element(By.ID, "status").text
        raise AssertionError(f"{what}; status line: {status!r}")

    def loads() -> int:
        return int(driver.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") or 0)

    def refused() -> bool:
        return driver.find_element(By.ID, "status").get_attribute("data-auth") == "refused"

    try:
        driver.get(base + f"#key={key}")
        wait_for(lambda: loads() >= 1, "the page did not load with the key")
        shown = sum(
            int(el.get_attribute("data-volume"))
            for el in driver.find_elements(By.CSS_SELECTOR, ".topic")
        )
        assert shown == len(events)
        assert "#" not in driver.current_url  # dropped from the address bar and history
        assert driver.execute_script("return sessionStorage.getItem('finwatch.apiKey')") == key
        driver.get(base)  # same tab, no fragment: the stored key still works
        wait_for(lambda: loads() >= 1, "the stored key was not used")
        assert not refused()

        driver.get(base + "#key=not-the-key")
        wait_for(refused, "a wrong key was not reported")
        status = driver.find_element(By.ID, "status").text
        assert "wrong API key" in status and "#key=YOUR_KEY" in status
        assert not driver.find_elements(By.CSS_SELECTOR, ".topic")

        driver.execute_script("sessionStorage.clear()")
        driver.get(base)
        wait_for(refused, "a missing key was not reported")
        assert "needs an API key (missing API key)" in driver.find_element(By.ID, "status").text
        assert driver.save_screenshot(str(tmp_path / "dashboard-no-key.png"))
        # Adding the fragment to the open page is enough: no reload needed.
        driver.execute_script(f"location.hash = 'key={key}'")
        wait_for(lambda: loads() >= 1 and not refused(), "the key added later was not used")
        assert driver.save_screenshot(str(tmp_path / "dashboard-key.png"))
    finally:
        driver.quit()
        server.should_exit = True
        shutil.rmtree(user_dir, ignore_errors=True)
        engine.dispose()
