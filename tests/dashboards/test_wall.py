"""The wall screen as an operator's browser shows it (headless Chromium via Playwright)."""

from __future__ import annotations

import asyncio

import msgspec
import psycopg
import pytest
from playwright.async_api import Browser

from cityops.core import contracts, schema
from cityops.core.contracts import DeviceKind, Topics
from cityops.core.registry import Device
from cityops.devstack import Stack
from cityops.devstack.postgres import Postgres
from ioc import ApiServer
from tests.conftest import private_dsn
from tests.dashboards.conftest import ARTIFACTS
from tests.helpers import make_alert, produce
from tests.ioc.conftest import ioc_settings


async def _alert(stack: Stack, topics: Topics, device: str, clock_offset_s: float = 0.0) -> None:
    alert = make_alert(device, contracts.now_us() + int(clock_offset_s * 1_000_000))
    await produce(stack.settings.kafka_bootstrap, topics.alerts, [(device.encode(), contracts.encode(alert))])


@pytest.mark.slow
@pytest.mark.fault
async def test_live_alerts_lost_connection_and_catch_up(
    stack: Stack, topics: Topics, database: str, uid: str, browser: Browser
) -> None:
    settings = ioc_settings(topics, database, uid, tick_s=1.0)
    page = await browser.new_page(viewport={"width": 1920, "height": 1080})
    server = ApiServer(settings)
    await server.start()
    settings = settings.model_copy(update={"port": server.port})  # come back on the same port
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await schema.upsert_devices(
            conn,
            [
                Device(f"{name}-{uid}", DeviceKind.PIPE_NODE, 52.36, 4.90, "Centrum", {"dma": f"DMA-{uid}"})
                for name in ("live", "outage")
            ],
        )
    try:
        await page.goto(f"{server.url}/")
        await page.fill("#username", "viewer")
        await page.fill("#password", "wrong")
        await page.click("#loginform button")
        await page.wait_for_selector("text=wrong user name or password", timeout=10_000)
        await page.fill("#password", "viewer")
        await page.click("#loginform button")
        await page.wait_for_selector("#state:text('live')", timeout=10_000)
        assert "viewer (viewer)" in await page.locator("#who").inner_text()
        await _alert(stack, topics, f"live-{uid}", clock_offset_s=120)  # a device clock 2 min fast
        await page.wait_for_selector(f"text=live-{uid}", timeout=10_000)
        assert "expected 420 +- 2.1 kPa by ewma" in await page.locator("#alerts tr").first.inner_text()
        # The alert opened an incident (an unregistered device: its own), shown in the feed.
        await page.wait_for_selector(f"#incidents tr:has-text('Water main pressure — DMA-{uid}')", timeout=10_000)

        await server.stop()  # the IOC goes away: the screen must say so instead of showing stale data
        await page.wait_for_selector("#state.lost", timeout=10_000)
        await _alert(stack, topics, f"outage-{uid}")  # raised while the IOC is down, and "older"
        server = ApiServer(settings)
        await server.start()
        await page.wait_for_selector(f"text=outage-{uid}", timeout=20_000)
        await page.wait_for_selector("#state:text('live')", timeout=10_000)
        rows = await page.locator("#alerts tr").all_inner_texts()
        assert [r.split("\t")[1] for r in rows] == [f"live-{uid}", f"outage-{uid}"]  # by time, once each
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "wall.png"))
    finally:
        await server.stop()


async def test_a_wall_left_running_outlives_its_login(
    stack: Stack, topics: Topics, database: str, uid: str, browser: Browser
) -> None:
    """Tokens last 6 s here (8 h in use): the wall renews its own at half-life, so a reconnect
    after the first token expired is let in instead of landing on the login form."""
    page = await browser.new_page(viewport={"width": 1920, "height": 1080})
    async with ApiServer(ioc_settings(topics, database, uid, token_ttl_s=6)) as server:
        await page.goto(f"{server.url}/")
        await page.fill("#username", "viewer")
        await page.fill("#password", "viewer")
        await page.click("#loginform button")
        await page.wait_for_selector("#state:text('live')", timeout=10_000)
        first = await page.evaluate("() => sessionStorage.getItem('cityops-token')")
        await page.wait_for_function(f"() => sessionStorage.getItem('cityops-token') !== {first!r}", timeout=10_000)
        # Past the first token's expiry, the connection drops: the renewed token gets back in.
        await page.wait_for_function(
            "t => Date.now() / 1000 > JSON.parse(atob(t.split('.')[1].replace(/-/g, '+').replace(/_/g, '/'))).exp + 1",
            arg=first,
            timeout=15_000,
        )
        await page.evaluate("() => window.cityopsDropConnection()")
        await page.wait_for_selector("#state.lost", timeout=5_000)
        await page.wait_for_selector("#state:text('live')", timeout=10_000)
        assert not await page.locator("#login").is_visible()


@pytest.mark.slow
@pytest.mark.fault
async def test_the_wall_says_the_database_is_missing_and_stays_live_through_the_outage(
    stack: Stack, topics: Topics, uid: str, browser: Browser, private_postgres: Postgres
) -> None:
    """The IOC's own database stops under it (a private cluster): the wall keeps its
    connection, shows what is not updating, clears it when the database is back, and the alert
    that arrived meanwhile becomes an incident on the same screen."""
    dsn = private_dsn(private_postgres)
    page = await browser.new_page(viewport={"width": 1920, "height": 1080})
    async with ApiServer(ioc_settings(topics, dsn, uid, tick_s=1.0, status_s=1.0)) as server:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            device = Device(f"held-{uid}", DeviceKind.PIPE_NODE, 52.36, 4.90, "Centrum", {"dma": f"DMA-{uid}"})
            await schema.upsert_devices(conn, [device])
        await page.goto(f"{server.url}/")
        await page.fill("#username", "viewer")
        await page.fill("#password", "viewer")
        await page.click("#loginform button")
        await page.wait_for_selector("#state:text('live')", timeout=10_000)
        assert await page.locator("#deps-banner").is_hidden()
        # Every state the connection pill takes from now on: it must never say "lost".
        await page.evaluate(
            """() => {
                const pill = document.getElementById("state");
                window.seenStates = [];
                new MutationObserver(() => seenStates.push(pill.textContent))
                    .observe(pill, { childList: true, characterData: true, subtree: true });
            }"""
        )

        await asyncio.to_thread(private_postgres.stop)
        banner = page.locator("#deps-banner:has-text('Database unreachable')")
        await banner.wait_for(timeout=20_000)
        assert "incidents and readings are not updating" in await banner.inner_text()
        await _alert(stack, topics, device.device_id)  # waits in the IOC for its database
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "wall-database-unreachable.png"))
        await asyncio.to_thread(private_postgres.start)

        await page.wait_for_selector("#deps-banner", state="hidden", timeout=20_000)
        await page.wait_for_selector(f"#incidents tr:has-text('Water main pressure — DMA-{uid}')", timeout=20_000)
        assert await page.locator("#state").inner_text() == "live"
        assert not [s for s in await page.evaluate("() => window.seenStates") if s != "live"]


async def test_the_wall_shows_what_each_alert_is(
    stack: Stack, topics: Topics, database: str, uid: str, browser: Browser
) -> None:
    """A sensor fault and a platform alert are tagged as such, live and after a reload."""
    settings = ioc_settings(topics, database, uid, tick_s=1.0)
    page = await browser.new_page(viewport={"width": 1920, "height": 1080})
    now = contracts.now_us()
    stuck = msgspec.structs.replace(
        make_alert(f"stuck-{uid}", now), alert_class=contracts.TruthCategory.SENSOR_FAULT, explanation="stuck at 401"
    )
    feed = msgspec.structs.replace(
        make_alert(f"feed/{uid}", now + 1), alert_class=contracts.TruthCategory.PLATFORM, explanation="feed silent"
    )
    async with ApiServer(settings) as server:
        await page.goto(f"{server.url}/")
        await page.fill("#username", "viewer")
        await page.fill("#password", "viewer")
        await page.click("#loginform button")
        await page.wait_for_selector("#state:text('live')", timeout=10_000)
        await produce(
            stack.settings.kafka_bootstrap,
            topics.alerts,
            [(a.device_id.encode(), contracts.encode(a)) for a in (stuck, feed)],
        )
        for _ in range(2):  # pushed live, then from the snapshot of a reloaded page
            await page.wait_for_selector(f"#alerts tr:has-text('stuck-{uid}') .tag.sensor_fault", timeout=10_000)
            await page.wait_for_selector(f"#alerts tr:has-text('feed/{uid}') .tag.platform", timeout=10_000)
            row = await page.locator(f"#alerts tr:has-text('stuck-{uid}')").inner_text()
            assert "sensor fault" in row and "stuck at 401" in row
            await page.reload()
            await page.wait_for_selector("#state:text('live')", timeout=10_000)
