"""The dashboard in a real headless Chromium (Debian's, driven by selenium and
chromedriver) against three real subprocess nodes.

The page must load, show three alive nodes, move its bars after fills, and
turn a kill -9'd node dead. A screenshot is saved under ``artifacts/``.
``make test`` installs chromium and chromium-driver when they are missing.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gobucket_py import GroupClient, TaskType

from .procs import ROOT, SECRET, Nodes, wait_for

CHROMIUM = os.environ.get("GOBUCKET_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("GOBUCKET_CHROMEDRIVER", "/usr/bin/chromedriver")
ARTIFACTS = ROOT / "artifacts"

if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):  # pragma: no cover
    message = (f"the dashboard test needs {CHROMIUM} and {CHROMEDRIVER}: run `make test` "
               "(it installs Debian's chromium and chromium-driver) or set GOBUCKET_CHROMIUM "
               "and GOBUCKET_CHROMEDRIVER")
    if os.environ.get("GOBUCKET_SKIP_BROWSER") == "1":
        pytest.skip(message, allow_module_level=True)
    raise RuntimeError(message)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-dev-shm-usage",
                "--window-size=1280,900", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(arg)
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "driver.log"))
    driver = await asyncio.to_thread(webdriver.Chrome, options=options, service=service)
    try:
        yield driver
    finally:
        await asyncio.to_thread(driver.quit)


async def page_nodes(driver: webdriver.Chrome) -> dict[str, dict[str, Any]]:
    """What the page shows: node id -> state and per-bucket size."""
    script = """
      return [...document.querySelectorAll('.node')].map(n => ({
        id: n.dataset.node, state: n.dataset.state,
        buckets: Object.fromEntries([...n.querySelectorAll('.bucket')].map(b =>
          [b.dataset.bucket, {size: Number(b.dataset.size), capacity: Number(b.dataset.capacity),
                              width: b.querySelector('.fill').style.width}]))}));"""
    rows = await asyncio.to_thread(driver.execute_script, script)
    return {row["id"]: row for row in rows}


async def test_dashboard_shows_nodes_fills_and_a_death(
        nodes: Nodes, browser: webdriver.Chrome) -> None:
    env = {"NODE_MAX": 200, "NODE_LIFE": 120, "NODE_RUN_AFTER": 60}
    n1 = nodes.add("n1", env=env)
    n2 = nodes.add("n2", [n1], env=env)
    n3 = nodes.add("n3", [n1], env=env)
    await nodes.start(n1, n2, n3)

    await asyncio.to_thread(browser.get, f"http://{n1.addr}/")
    assert "gobucket cluster" in browser.title

    async def three_alive() -> bool:
        shown = await page_nodes(browser)
        return sorted(shown) == ["n1", "n2", "n3"] and all(
            n["state"] == "alive" for n in shown.values())

    await wait_for(three_alive, 15, "three alive nodes on the page", interval=0.2)
    before = await page_nodes(browser)
    assert before["n1"]["buckets"]["jobs"]["size"] == 0

    placed: dict[str, int] = {}
    async with GroupClient(n1.addr, secret=SECRET) as client:
        for i in range(250):  # 200 stay on n1, 50 overflow to n2 and n3
            where = (await client.fill("jobs", f"job-{i}", task_type=TaskType.TIME_BOMB)).node_id
            placed[where] = placed.get(where, 0) + 1

    async def bars_moved() -> dict[str, dict[str, Any]] | None:
        shown = await page_nodes(browser)
        sizes = {k: v["buckets"]["jobs"]["size"] for k, v in shown.items()}
        if sizes.get("n1") == 200 and sizes.get("n2", 0) + sizes.get("n3", 0) == 50:
            return shown
        return None

    shown = await wait_for(bars_moved, 10, "the bars to show 200 on n1 and 50 on its peers",
                           interval=0.2)
    assert shown["n1"]["buckets"]["jobs"]["width"] == "100%"  # as the browser writes it
    for peer in ("n2", "n3"):
        bar = shown[peer]["buckets"]["jobs"]
        assert float(bar["width"].rstrip("%")) == pytest.approx(100 * bar["size"] / 200, abs=0.1)
    assert shown["n1"]["buckets"]["jobs"]["capacity"] == 200
    fills_rate = await asyncio.to_thread(
        browser.execute_script,
        "return document.querySelector('[data-node=\"n1\"] [data-rate=\"fills\"] b')"
        ".textContent")
    assert fills_rate.isdigit()
    events = await asyncio.to_thread(
        lambda: [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#events li")])
    assert any("overflow" in e for e in events) and any("joined" in e for e in events)

    async def health(node: str) -> dict[str, str]:
        return await asyncio.to_thread(  # type: ignore[no-any-return]
            browser.execute_script,
            f"const h = document.querySelector('[data-node=\"{node}\"] .health');"
            "return h ? {text: h.textContent, atRisk: h.dataset.atRisk ?? null, "
            "lost: h.dataset.lost ?? null} : {};")

    # A stall (SIGSTOP): unreachable, its tasks at risk -- not lost -- and how long ago
    # it was heard; then it comes back.
    n2.pause()
    async def n2_at_risk() -> dict[str, str] | None:
        shown = await health("n2")
        return shown if shown.get("atRisk") is not None else None

    stalled = await wait_for(n2_at_risk, 10, "n2's tasks to show at risk", interval=0.2)
    assert stalled["atRisk"] == str(placed["n2"]) and "last heard" in stalled["text"]
    ARTIFACTS.mkdir(exist_ok=True)
    assert await asyncio.to_thread(browser.save_screenshot,
                                   str(ARTIFACTS / "dashboard-stalled.png"))
    n2.resume()

    async def n2_back() -> bool:
        shown = await health("n2")
        return shown.get("atRisk") is None and "last heard" in shown.get("text", "")

    await wait_for(n2_back, 10, "n2 to be reachable again on the page", interval=0.2)

    n3.proc.kill()  # type: ignore[union-attr]  # kill -9 of our own subprocess
    await asyncio.to_thread(n3.proc.wait)  # type: ignore[union-attr]

    async def n3_dead() -> bool:
        shown = await page_nodes(browser)
        return shown.get("n3", {}).get("state") == "dead"

    await wait_for(n3_dead, 10, "n3 to turn dead on the page", interval=0.2)
    shown = await page_nodes(browser)
    assert shown["n1"]["state"] == "alive" and shown["n2"]["state"] == "alive"
    events = await asyncio.to_thread(
        lambda: [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#events li")])
    assert any("n3" in e and "dead" in e for e in events), events

    # Dead (it may only be stalled): n1's tasks on it are at risk, with its last-heard age.
    shown_risk = await health("n3")
    assert shown_risk["atRisk"] == str(placed["n3"]), (shown_risk, placed)
    assert "unreachable" in shown_risk["text"] and "last heard" in shown_risk["text"]
    assert "last heard" in (await health("n2"))["text"]
    ARTIFACTS.mkdir(exist_ok=True)
    assert await asyncio.to_thread(browser.save_screenshot, str(ARTIFACTS / "dashboard-dead.png"))

    async def n3_lost() -> dict[str, str] | None:  # past lost_after (5 s with --fast)
        shown = await health("n3")
        return shown if shown.get("lost") is not None else None

    shown_lost = await wait_for(n3_lost, 15, "n3's tasks to show as lost", interval=0.2)
    assert shown_lost["lost"] == str(placed["n3"]) and "gone" in shown_lost["text"]

    shot = ARTIFACTS / "dashboard.png"
    assert await asyncio.to_thread(browser.save_screenshot, str(shot))
    assert shot.stat().st_size > 10_000
    plotted = await asyncio.to_thread(
        browser.execute_script,
        "return document.querySelector('[data-node=\"n1\"] svg.history polyline.live')"
        ".getAttribute('points').split(' ').length")
    assert plotted >= 10  # five minutes of history, two points a second so far
    # One line per series, as many points as the live line; n1 filled 250 tasks and
    # forwarded 50 of them, so both rates rose above zero (y < 100) at some point.
    series = await asyncio.to_thread(
        browser.execute_script,
        "const n = document.querySelector('[data-node=\"n1\"]');"
        "return Object.fromEntries([...n.querySelectorAll('svg.history polyline')].map(l =>"
        "  [l.getAttribute('class'), {ys: l.getAttribute('points').split(' ')"
        "     .map(p => Number(p.split(',')[1])),"
        "   legend: n.querySelector(`.legend [data-series=\"${l.getAttribute('class')}\"]`)"
        "     ?.textContent ?? null}]));")
    assert sorted(series) == ["drains", "fills", "fires", "forwards", "live"], series
    assert {len(s["ys"]) for s in series.values()} == {plotted}
    for key, label in (("fills", "fills/s"), ("forwards", "forwards/s")):
        assert min(series[key]["ys"]) < 100, (key, series[key])
        assert series[key]["legend"].startswith(f"{label} (max "), series[key]
    # Every resource the page loaded came from the node itself.
    origins = await asyncio.to_thread(
        browser.execute_script,
        "return performance.getEntriesByType('resource').map(e => new URL(e.name).host)")
    assert set(origins) <= {n1.addr}, origins


async def test_dashboard_behind_a_pages_token(nodes: Nodes, browser: webdriver.Chrome) -> None:
    """A node started with a pages token: the page opened as ``/#token=...``
    shows the cluster; opened without it, it says why it shows nothing."""
    token = "dashboard-token-0123456789"
    env = {"GOBUCKET_PAGES_TOKEN": token}
    n1 = nodes.add("n1", env=env)
    n2 = nodes.add("n2", [n1], env=env)
    await nodes.start(n1, n2)

    await asyncio.to_thread(browser.get, f"http://{n1.addr}/")
    async def refused() -> str | None:
        text: str = await asyncio.to_thread(
            browser.execute_script,
            "const e = document.getElementById('error'); return e.hidden ? '' : e.textContent")
        return text or None

    message = await wait_for(refused, 10, "the page to say the token is missing", interval=0.2)
    assert "401" in message and "#token=" in message
    assert await page_nodes(browser) == {}

    await asyncio.to_thread(browser.get, f"http://{n1.addr}/#token={token}")
    await asyncio.to_thread(browser.refresh)  # a fragment change alone does not reload

    async def two_alive() -> bool:
        shown = await page_nodes(browser)
        return sorted(shown) == ["n1", "n2"] and all(
            n["state"] == "alive" for n in shown.values())

    await wait_for(two_alive, 15, "two alive nodes on the page with the token", interval=0.2)
