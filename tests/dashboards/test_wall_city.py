"""The wall screen on a simulated city, as an operator sees it: the whole pipeline runs for real
(simulator -> Mosquitto -> gateway -> Kafka -> stream -> PostgreSQL -> IOC -> browser)."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from playwright.async_api import Browser, Page, Request, expect

from cityops.core import schema
from cityops.core.contracts import DeviceKind, Topics
from cityops.devstack import Stack
from firmware_sim import SimSettings, Simulator, build_city
from firmware_sim.scenario import DeviceClass, EventKind, Scheduled
from gateway import Gateway, GatewaySettings
from ioc import ApiServer
from stream import StreamService, StreamSettings
from tests.dashboards.conftest import ARTIFACTS
from tests.helpers import eventually, small_scenario
from tests.ioc.conftest import ioc_settings

MINUTE = 60
HOSTILE = '<img src=x onerror="window.cityopsPwned=1">'


async def _login(page: Page, url: str, user: str = "viewer") -> None:
    await page.goto(f"{url}/")
    await page.fill("#username", user)
    await page.fill("#password", user)
    await page.click("#loginform button")
    await expect(page.locator("#state")).to_have_text("live", timeout=10_000)


async def _local_only(page: Page, url: str) -> list[str]:
    """Abort, and remember, every request that would leave the IOC (no CDN, no tiles)."""
    origin = urlsplit(url).netloc
    strays: list[str] = []

    async def check(route: Any, request: Request) -> None:
        if urlsplit(request.url).netloc != origin and not request.url.startswith("data:"):
            strays.append(request.url)
            await route.abort()
        else:
            await route.continue_()

    page.on("websocket", lambda ws: None if urlsplit(ws.url).netloc == origin else strays.append(ws.url))
    await page.route("**/*", check)
    return strays


@pytest.mark.slow
async def test_the_wall_shows_the_city_and_a_simulated_incident_with_its_evidence(
    stack: Stack, topics: Topics, database: str, uid: str, browser: Browser
) -> None:
    scenario = small_scenario(
        uid,
        start="-20m",
        speed=300,
        interval_s=5,
        devices={
            DeviceKind.WATER_QUALITY: DeviceClass(count=3, interval_s=2),
            DeviceKind.ENV_STATION: DeviceClass(count=4, interval_s=5),
            DeviceKind.PIPE_NODE: DeviceClass(count=4, interval_s=5),
        },
        # Just after the replay of the last 20 minutes has caught up with real time.
        incidents=[
            Scheduled(kind=EventKind.CONTAMINATION, at_s=20 * MINUTE + 10, duration_s=120, target=f"t{uid}-wq-0002")
        ],
    )
    city = build_city(scenario)
    stack.register(city.devices)
    common = {"topic_prefix": topics.prefix, "pg_dsn": database}
    try:
        async with (
            StreamService(
                StreamSettings(**common, group_id=f"stream-{uid}", metrics_port=0, maintenance_interval_s=2.0)
            ) as stream,
            Gateway(
                GatewaySettings(**common, mqtt_client_id=f"gw-{uid}", mqtt_clean_session=True, metrics_port=0)
            ) as gw,
        ):
            pipeline = {
                "gateway": f"http://127.0.0.1:{gw.metrics_port}/metrics",
                "stream": f"http://127.0.0.1:{stream.metrics_port}/metrics",
            }
            settings = ioc_settings(topics, database, uid, tick_s=1.0, status_s=1.0, pipeline_urls=pipeline)
            async with ApiServer(settings) as api, asyncio.TaskGroup() as tasks:
                async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
                    await schema.upsert_devices(conn, city.devices)
                    await schema.upsert_districts(conn, city.outlines())
                    # A name with markup (outlines may come from anyone's GIS export) stays text.
                    await schema.upsert_districts(conn, {HOSTILE: [(52.366, 4.895), (52.366, 4.896), (52.367, 4.896)]})
                services = [tasks.create_task(stream.run()), tasks.create_task(gw.run())]
                async with Simulator(SimSettings(**common), scenario) as sim:
                    assert sim.sim is not None
                    run = tasks.create_task(sim.run(until_us=sim.sim.t0 + 24 * MINUTE * 1_000_000))
                    await _watch(api, browser, len(city.devices), city.districts)
                    run.cancel()
                for task in services:
                    task.cancel()
    finally:
        stack.unregister([d.device_id for d in city.devices])


async def _watch(api: ApiServer, browser: Browser, devices: int, districts: list[str]) -> None:
    page = await browser.new_page(viewport={"width": 1920, "height": 1080})
    strays = await _local_only(page, api.url)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await _login(page, api.url)

    # The map: the districts' outlines with their names, every device as a marker.
    for name in districts:
        await expect(page.locator(f".district-label:text-is('{name}')")).to_be_visible()
    await expect(page.locator(".district-label", has_text=HOSTILE)).to_have_count(1)
    assert await page.evaluate("() => window.cityopsPwned") is None
    shown = await page.evaluate("() => window.cityopsState.devices.size")
    assert shown == devices
    # The city reports: devices come online and readings flow, the pipeline is healthy.
    await expect(page.locator("[data-kpi=devices] b")).to_have_text(f"{devices} / {devices}", timeout=60_000)
    await expect(page.locator("[data-kpi=rate] b")).not_to_have_text("0.0", timeout=30_000)
    await expect(page.locator("[data-kpi=latency] b")).to_have_text(re.compile(r"^\d+\.\d\d s$"), timeout=30_000)
    assert "down" not in await page.locator("[data-kpi=lag]").inner_text()

    # The simulated contamination: an incident opened by the IOC shows within seconds.
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
        token = (await http.post("/token", data={"username": "viewer", "password": "viewer"})).json()["access_token"]
        http.headers["Authorization"] = f"Bearer {token}"

        async def opened() -> list[dict[str, Any]]:
            return [i for i in (await http.get("/incidents")).json() if i["type"] == "water_contamination"]

        await eventually(opened, timeout=90, interval=0.25)
        (incident,) = await opened()
    seen = time.monotonic()
    row = page.locator(f"#incidents tr[data-id='{incident['incident_id']}']")
    await expect(row).to_be_visible(timeout=5_000)
    print(f"\nincident on the wall {time.monotonic() - seen:.2f} s after the API had it")
    await expect(row).to_contain_text(incident["district"] or "–")
    await expect(page.locator(f".incident-marker[data-id='{incident['incident_id']}']")).to_be_visible()
    wq = incident["assets"][0]
    await page.wait_for_function(f"() => window.cityopsState.devices.get({wq!r}).state === 'alerting'")

    # Clicking it shows the timeline and the sensor chart with the anomalous points.
    await row.click()
    detail = page.locator("#detail")
    await expect(detail).to_be_visible()
    await expect(page.locator("#d-timeline li").first).to_contain_text("opened by system")
    await expect(page.locator("#d-charts .chart canvas").first).to_be_visible(timeout=10_000)
    charts = await page.evaluate("() => window.cityopsCharts()")
    assert charts and all(c["points"] > 50 for c in charts) and sum(c["anomalous"] for c in charts) >= 1
    await expect(page.locator(".chart-title").first).to_contain_text("expected")
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "wall-incident.png"))
    # By keyboard: Escape closes, arrows and Enter open again.
    await page.keyboard.press("Escape")
    await expect(detail).to_be_hidden()
    await page.locator("body").press("ArrowDown")
    await page.keyboard.press("Enter")
    await expect(detail).to_be_visible()
    await page.keyboard.press("Escape")

    # A dropped connection greys the screen out and says so; it comes back by itself and
    # resumes from its last event: a change made while it was away shows.
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    await page.evaluate("() => window.cityopsDropConnection(4000)")
    await expect(page.locator("#lost-banner")).to_be_visible()
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
        token = (await http.post("/token", data={"username": "operator", "password": "operator"})).json()
        http.headers["Authorization"] = f"Bearer {token['access_token']}"
        now = datetime.now(UTC)
        window = {"device_id": wq, "starts_at": now.isoformat(), "ends_at": (now + timedelta(hours=1)).isoformat()}
        resp = await http.post("/maintenance", json={**window, "reason": "probe swap while the wall was away"})
        assert resp.status_code == 201, resp.text
    await expect(page.locator("#lost-banner")).to_be_hidden(timeout=15_000)
    await expect(page.locator("#state")).to_have_text("live")
    await expect(page.locator("#maintenance")).to_contain_text("probe swap while the wall was away")
    assert sockets and "last_event_id=" in sockets[-1], sockets

    # Everything on one 1920x1080 screen, without scrolling.
    overflow = await page.evaluate(
        "() => [document.documentElement.scrollHeight, document.documentElement.scrollWidth]"
    )
    assert overflow[0] <= 1080 and overflow[1] <= 1920, overflow
    await page.screenshot(path=str(ARTIFACTS / "wall-city.png"))
    assert not strays, f"requests left the IOC: {strays}"
    assert not errors, errors
    await page.close()
