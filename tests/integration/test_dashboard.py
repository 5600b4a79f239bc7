"""The dashboard in a real browser (Debian's chromium and chromedriver, driven by selenium): an announced
instance's row appears, a killed one's row goes, the overview counts instances; a screenshot is saved as an
artefact (``$DISCO_ARTIFACTS`` or the test's tmp dir; ``DISCO_UPDATE_SCREENSHOT=1`` also refreshes
``docs/dashboard.png``)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from services.natsserver import NatsServer
from tests.gateway_support import Registration, poll, start_gateway
from tests.helpers import require_binary

pytestmark = pytest.mark.usefixtures("aggregator")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    chromium = require_binary("chromium", "chromium")
    driver_path = require_binary("chromedriver", "chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--no-first-run",
                "--window-size=1280,760"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def save_screenshot(driver: webdriver.Chrome, path: Path) -> bool:
    """Save a PNG of the page (and refresh docs/dashboard.png when DISCO_UPDATE_SCREENSHOT=1)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok = driver.save_screenshot(str(path))
    if ok and os.environ.get("DISCO_UPDATE_SCREENSHOT") == "1" and path.name == "dashboard-tenant.png":
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copy(path, ROOT / "docs" / "dashboard.png")
    return ok


async def in_browser(func: Callable[[], Any]) -> Any:
    """Run a blocking selenium call in a thread, so that the gateway (on this loop) goes on serving."""
    return await anyio.to_thread.run_sync(func)


def rows(driver: webdriver.Chrome) -> list[str]:
    return [r.get_attribute("id") or "" for r in driver.find_elements(By.CSS_SELECTOR, "#instances tbody tr")]


async def test_rows_follow_the_live_view(
    browser: webdriver.Chrome, nats_server: NatsServer, conn_factory: Callable[..., Any], tmp_path: Path
) -> None:
    acme = await conn_factory(nats_server.url, tenant="acme")
    beta = await conn_factory(nats_server.url, tenant="beta")
    gw = await start_gateway({"acme": acme, "beta": beta})
    regs: list[Registration] = []

    async def announce(service: str, iid: str, port: int, **kw: Any) -> Registration:
        r = await Registration(acme, service, address=f"10.0.1.{len(regs) + 10}", port=port, instance_id=iid,
                               **kw).start()
        regs.append(r)
        return r

    try:
        await announce("billing", "billing-1", 8080, zone="eu-west-1", tags=("v2", "grpc"))
        await announce("billing", "billing-2", 8080, zone="eu-west-2", tags=("v2", "grpc"), status="warning")
        await announce("search", "search-1", 9200, zone="eu-west-1", tags=("lucene",))
        await poll(lambda: gw.gw.views["acme"].instance_count() == 3)

        await in_browser(lambda: browser.get(f"{gw.url}/ui/#/t/acme"))
        await poll(lambda: in_browser(lambda: len(rows(browser)) == 3), timeout=15, interval=0.1)

        # announce: the row appears, with its address, zone and tags
        web1 = await announce("web", "web-1", 8000, zone="eu-west-1", tags=("blue", "http"))
        await poll(lambda: in_browser(lambda: "inst-web-web-1" in rows(browser)), timeout=10, interval=0.05)
        text = await in_browser(lambda: browser.find_element(By.ID, "inst-web-web-1").text)
        assert "10.0.1.13:8000" in text and "eu-west-1" in text and "blue" in text and "passing" in text
        await announce("web", "web-2", 8000, zone="eu-west-2", tags=("green", "http"))
        await poll(lambda: in_browser(lambda: "inst-web-web-2" in rows(browser)), timeout=10, interval=0.05)

        # kill: the row goes
        await web1.kill()
        await poll(lambda: in_browser(lambda: "inst-web-web-1" not in rows(browser)), timeout=10, interval=0.05)
        assert await in_browser(lambda: rows(browser)) == [
            "inst-billing-billing-1", "inst-billing-billing-2", "inst-search-search-1", "inst-web-web-2"]
        summary = await in_browser(lambda: browser.find_element(By.ID, "tenant-summary").text)
        assert summary == "3 services · 4 instances"

        artefacts = Path(os.environ.get("DISCO_ARTIFACTS", tmp_path))
        shot = artefacts / "dashboard-tenant.png"
        assert await in_browser(lambda: save_screenshot(browser, shot))
        assert shot.stat().st_size > 10_000

        # the overview: instances per tenant
        await in_browser(lambda: browser.get(f"{gw.url}/ui/#/"))

        def overview() -> dict[str, str]:
            return {r.get_attribute("data-tenant") or "": r.find_element(By.CSS_SELECTOR, ".insts").text
                    for r in browser.find_elements(By.CSS_SELECTOR, "#overview-table tbody tr")}

        await poll(lambda: in_browser(lambda: overview() == {"acme": "4", "beta": "0"}), timeout=10, interval=0.1)
        assert await in_browser(lambda: save_screenshot(browser, artefacts / "dashboard-overview.png"))
    finally:
        for r in regs:
            await r.kill()
        await gw.stop()
