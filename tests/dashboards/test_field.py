"""The crew's phone page as a crew member's phone shows it: headless Chromium at 390x844 with
touch, against the IOC API on the real stack. Every tap is checked where it matters: in the
incident's state and audit log, through the API."""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    Geolocation,
    Page,
    Response,
    Route,
    WebSocketRoute,
    expect,
)

from cityops.core.contracts import Topics
from cityops.core.registry import Device
from cityops.devstack import Stack
from ioc import ApiServer
from ioc.centre import Centre
from ioc.clock import ManualClock
from tests.dashboards.conftest import ARTIFACTS
from tests.helpers import eventually
from tests.ioc.conftest import alert, centre_of, insert_readings, ioc_settings, token

PHONE: dict[str, Any] = {
    "viewport": {"width": 390, "height": 844},
    "device_scale_factor": 2,
    "is_mobile": True,
    "has_touch": True,
}
WAIT_MS = 10_000


@dataclass
class Phone:
    context: BrowserContext
    page: Page
    outside: list[str] = field(default_factory=list)  # requests that tried to leave the IOC
    errors: list[str] = field(default_factory=list)  # uncaught errors in the page's script
    sockets: list[str] = field(default_factory=list)  # WebSocket URLs the page opened

    def check(self) -> None:
        assert self.outside == [], f"requests left the IOC: {self.outside}"
        assert self.errors == [], f"script errors: {self.errors}"


@pytest.fixture
async def dispatcher(api: ApiServer) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {await token(api, 'dispatcher')}"}
    async with httpx.AsyncClient(base_url=api.url, timeout=30, headers=headers) as client:
        yield client


@pytest.fixture
async def phone(browser: Browser, api: ApiServer) -> AsyncIterator[Callable[..., Any]]:
    """``await phone(**context_options)``: a phone-sized page on the crew page's origin, watched."""
    contexts: list[BrowserContext] = []

    async def make(**options: Any) -> Phone:
        context = await browser.new_context(**PHONE, **options)
        contexts.append(context)
        page = await context.new_page()
        p = Phone(context, page)

        async def local_only(route: Route) -> None:
            # Phones in the field may have no internet: nothing may come from anywhere but the IOC.
            if route.request.url.startswith(api.url):
                await route.continue_()
            else:
                p.outside.append(route.request.url)
                await route.abort()

        await context.route("**/*", local_only)
        page.on("pageerror", lambda e: p.errors.append(str(e)))
        page.on("websocket", lambda ws: p.sockets.append(ws.url))
        await page.goto(f"{api.url}/field/")
        return p

    yield make
    for context in contexts:
        await context.close()


async def _log_in(page: Page, user: str, password: str | None = None) -> None:
    await page.fill("#username", user)
    await page.fill("#password", user if password is None else password)
    await page.locator("#login-btn").tap()


async def _open_incident(c: Centre, http: httpx.AsyncClient, device: Device, metric: str, **kw: Any) -> dict[str, Any]:
    clock: ManualClock = c.clock  # type: ignore[assignment]
    await c.receive([alert(device, metric, clock.now, **kw)])
    incidents = (await http.get("/incidents", params={"open_only": False})).json()
    return dict(next(i for i in incidents if device.device_id in i["assets"]))


async def _dispatch(dispatcher: httpx.AsyncClient, incident_id: int, crew_id: str = "W1") -> None:
    for body in ({"to": "acknowledged"}, {"to": "dispatched", "crew_id": crew_id, "note": "nearest crew"}):
        resp = await dispatcher.post(f"/incidents/{incident_id}/transitions", json=body)
        assert resp.status_code == 200, resp.text


async def _tap(page: Page, incident_id: int, action: str, note: str = "") -> Response:
    card = page.locator(f"#job-{incident_id}")
    if note:
        await card.locator("textarea.note").fill(note)
    async with page.expect_response(lambda r: r.url.endswith(f"/crew/jobs/{incident_id}/{action}")) as answer:
        await card.locator(f"button[data-action='{action}']").tap()
    return await answer.value


async def _last_audit(http: httpx.AsyncClient, incident_id: int) -> tuple[str, str, str]:
    last = (await http.get(f"/incidents/{incident_id}/audit")).json()[-1]
    return last["action"], last["actor"], last["note"]


async def _screenshot(page: Page, name: str) -> None:
    await page.evaluate("window.scrollTo(0, 0)")  # the header is sticky: a full page from the top
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / name), full_page=True)


async def _true(value: bool) -> bool:
    return value


def _metres(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    h = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * 6371008.8 * math.asin(math.sqrt(h))


async def _position(http: httpx.AsyncClient, crew_id: str = "W1") -> tuple[float, float]:
    crew = next(x for x in (await http.get("/crews")).json() if x["crew_id"] == crew_id)
    return float(crew["lat"]), float(crew["lon"])


def _reports(response: Response, at: Geolocation) -> bool:
    """Whether ``response`` answers the phone's report of position ``at``."""
    if not response.url.endswith("/crew/location"):
        return False
    sent = json.loads(response.request.post_data or "{}")
    return bool(sent.get("lat") == round(at["latitude"], 6) and sent.get("lon") == round(at["longitude"], 6))


async def _fits_a_phone(page: Page) -> None:
    """No sideways scrolling at 390 px, and every button is a thumb's size (48 px) or more."""
    width = await page.evaluate("document.scrollingElement.scrollWidth")
    assert width <= 390, f"the page is {width} px wide on a 390 px screen"
    small = await page.evaluate(
        """[...document.querySelectorAll("button, .distance a")]
        .filter((b) => b.offsetParent !== null)
        .map((b) => [b.textContent, b.getBoundingClientRect().width, b.getBoundingClientRect().height])
        .filter(([, w, h]) => Math.min(w, h) < 48)"""
    )
    assert small == [], f"touch targets under 48 px: {small}"


async def test_a_crew_works_its_jobs_from_the_phone_page(
    api: ApiServer,
    registered: list[Device],
    dispatcher: httpx.AsyncClient,
    clock: ManualClock,
    phone: Callable[..., Any],
) -> None:
    c = centre_of(api)
    pipe = next(d for d in registered if d.kind == "pipe_node")
    dsn = c.settings.pg_dsn
    # A pressure drop on a pipe node with a normal half hour before it, so recovery can be judged.
    await insert_readings(
        dsn, pipe.device_id, "pressure_kpa", clock.now - timedelta(minutes=30), [400 + i % 5 for i in range(150)]
    )
    await insert_readings(dsn, pipe.device_id, "pressure_kpa", clock.now, [120.0] * 3)
    incident = await _open_incident(c, dispatcher, pipe, "pressure_kpa", value=120.0, baseline=402.0)
    job = int(incident["incident_id"])
    await _dispatch(dispatcher, job)

    # The phone stands ~550 m north of the incident and shares its position.
    gps = Geolocation(latitude=float(incident["lat"]) + 0.005, longitude=float(incident["lon"]), accuracy=12)
    p: Phone = await phone(geolocation=gps, permissions=["geolocation"])
    page = p.page
    await _log_in(page, "crew-w1", "wrong")
    await expect(page.locator("#loginerr")).to_have_text("wrong user name or password", timeout=WAIT_MS)
    await _log_in(page, "crew-w1")

    card = page.locator(f"#job-{job}")
    await expect(card).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#current")).to_contain_text(incident["title"])
    await expect(card.locator(".sev")).to_have_text(f"S{incident['severity']} medium")
    await expect(card.locator(".district")).to_have_text(incident["district"])
    await expect(card.locator(".why")).to_have_text(incident["explanation"])
    await expect(card.locator(".state")).to_have_text("Dispatched to you · not acknowledged yet")
    await expect(card.locator(".actions button")).to_have_text(["Acknowledge", "En route"])
    await expect(page.locator("#who")).to_have_text("Water mains 1 (W1) · crew-w1")
    await expect(page.locator("#offline")).to_be_hidden()

    # Its position reached the API, and the card shows both places and the distance between them.
    await expect(page.locator("#geo")).to_contain_text("Position shared", timeout=WAIT_MS)
    await expect(page.locator("#geo")).to_contain_text("(±12 m)")
    assert await _position(dispatcher) == pytest.approx((gps["latitude"], gps["longitude"]), abs=1e-6)
    expected = _metres(gps["latitude"], gps["longitude"], float(incident["lat"]), float(incident["lon"]))
    await expect(card.locator(".distance")).to_contain_text(f"{round(expected)} m away")
    await expect(card.locator(".map path.incident-marker")).to_have_count(1)
    await expect(card.locator(".map path.crew-marker")).to_have_count(1)
    await _fits_a_phone(page)

    # One tap each; the incident and its audit log follow.
    resp = await _tap(page, job, "acknowledge", "seen, leaving the depot")
    assert resp.status == 200, await resp.text()
    await expect(card.locator(".actions button")).to_have_text(["En route"])
    moved = (await dispatcher.get(f"/incidents/{job}")).json()
    assert moved["state"] == "dispatched" and moved["crew_acknowledged_at"] is not None
    assert await _last_audit(dispatcher, job) == ("crew_acknowledged", "crew-w1", "seen, leaving the depot")

    resp = await _tap(page, job, "en_route")
    assert resp.status == 200, await resp.text()
    await expect(card.locator(".actions button")).to_have_text(["On site"])
    await expect(card.locator(".state")).to_contain_text("En route since")
    assert (await dispatcher.get(f"/incidents/{job}")).json()["state"] == "en_route"
    assert await _last_audit(dispatcher, job) == ("en_route", "crew-w1", "")

    # The van moves ~110 m: the page reports the new position by itself.
    gps = Geolocation(latitude=gps["latitude"] - 0.001, longitude=gps["longitude"], accuracy=12)
    async with page.expect_response(lambda r: _reports(r, gps), timeout=WAIT_MS) as located:
        await p.context.set_geolocation(gps)
    assert (await located.value).status == 200
    assert await _position(dispatcher) == pytest.approx((gps["latitude"], gps["longitude"]), abs=1e-6)

    # A second dispatch arrives while the page is open, without a reload, and queues behind the first.
    await page.evaluate("window.sameDocument = true")
    wq = next(d for d in registered if d.kind == "water_quality")
    second = int((await _open_incident(c, dispatcher, wq, "chlorine_mgl", value=0.01, baseline=0.4))["incident_id"])
    await _dispatch(dispatcher, second)
    queued = page.locator(f"#queued #job-{second}")
    await expect(queued).to_be_visible(timeout=WAIT_MS)
    await expect(queued.locator(".actions button")).to_have_text(["Acknowledge", "En route"])
    await expect(page.locator("#queued-h")).to_have_text("Queued (1)")
    await expect(page.locator(f"#current #job-{job}")).to_be_visible()
    await expect(page.locator("#notices")).to_contain_text(f"New job #{second}")
    assert await page.evaluate("window.sameDocument") is True
    await _fits_a_phone(page)
    await _screenshot(page, "crew-jobs.png")

    resp = await _tap(page, job, "on_site", "valve chamber open")
    assert resp.status == 200, await resp.text()
    await expect(card.locator(".actions button")).to_have_text(["Done"])
    assert (await dispatcher.get(f"/incidents/{job}")).json()["state"] == "on_site"
    assert await _last_audit(dispatcher, job) == ("on_site", "crew-w1", "valve chamber open")

    # Done: the sensors are not back yet, so the page says it waits for them (202).
    resp = await _tap(page, job, "done", "valve closed, main isolated")
    assert resp.status == 202, await resp.text()
    await expect(card.locator(".state")).to_have_text("Done reported · waiting for the sensors to confirm recovery")
    await expect(card.locator(".pending")).to_contain_text("waiting for the sensors")
    await expect(card.locator(".actions button")).to_have_count(0)
    pending = (await dispatcher.get(f"/incidents/{job}")).json()
    assert pending["state"] == "on_site" and pending["resolve_pending"] is True
    assert await _last_audit(dispatcher, job) == ("resolve_requested", "crew-w1", "valve closed, main isolated")
    await _fits_a_phone(page)
    await _screenshot(page, "crew-done.png")

    # The pressure is back: the centre resolves the incident, and the phone is told.
    await insert_readings(dsn, pipe.device_id, "pressure_kpa", clock.now, [401.0 + i % 3 for i in range(20)])
    clock.advance(200)
    assert (await c.tick())["resolved"] == 1
    await expect(card).to_have_count(0, timeout=WAIT_MS)
    await expect(page.locator("#notices")).to_contain_text(f"Job #{job}")
    await expect(page.locator("#notices")).to_contain_text("resolved: the sensors confirm recovery")
    await expect(page.locator(f"#current #job-{second}")).to_be_visible()  # next in line
    await expect(page.locator("#queued-h")).to_be_hidden()

    # The phone loses its network: the page says so, and catches up when it is back.
    await p.context.set_offline(True)
    await expect(page.locator("#offline")).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#offline")).to_contain_text("Offline — reconnecting")
    last_id = await page.evaluate("window.cityopsField.lastEventId")
    # Meanwhile the dispatcher reports the crew en route for it (the crew radioed in).
    radio = await dispatcher.post(f"/incidents/{second}/transitions", json={"to": "en_route", "note": "by radio"})
    assert radio.status_code == 200, radio.text
    await p.context.set_offline(False)
    await expect(page.locator("#offline")).to_be_hidden(timeout=WAIT_MS)
    await expect(page.locator(f"#job-{second} .state")).to_contain_text("En route since")
    assert p.sockets[-1].endswith(f"&last_event_id={last_id}"), p.sockets
    await _fits_a_phone(page)
    p.check()


async def test_the_page_shows_what_went_wrong_and_keeps_the_session(
    api: ApiServer,
    registered: list[Device],
    dispatcher: httpx.AsyncClient,
    phone: Callable[..., Any],
) -> None:
    c = centre_of(api)
    pipe = next(d for d in registered if d.kind == "pipe_node")
    job = int((await _open_incident(c, dispatcher, pipe, "pressure_kpa"))["incident_id"])
    await _dispatch(dispatcher, job)

    # Location refused; the channel goes through a relay the test can hold and cut.
    p: Phone = await phone()
    page = p.page
    holding: list[str | bytes] | None = None
    cut = False
    relays: list[tuple[WebSocketRoute, WebSocketRoute]] = []  # (page side, server side)
    refused: list[str] = []

    async def relay(ws: WebSocketRoute) -> None:
        if cut:
            refused.append(ws.url)
            await ws.close(code=1011, reason="test: the centre is unreachable")
            return
        server = ws.connect_to_server()
        relays.append((ws, server))

        def to_page(message: str | bytes) -> None:
            if holding is not None:
                holding.append(message)
            else:
                ws.send(message)

        server.on_message(to_page)

    await page.route_web_socket(re.compile(r"/ws/crew"), relay)

    # A dispatcher's account is not a crew's.
    await _log_in(page, "dispatcher")
    await expect(page.locator("#loginerr")).to_contain_text("is a dispatcher, not a crew member", timeout=WAIT_MS)
    await _screenshot(page, "crew-login.png")
    await _log_in(page, "crew-w1")
    card = page.locator(f"#job-{job}")
    await expect(card).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#geo")).to_contain_text("Location not allowed")
    await expect(card.locator(".distance")).to_contain_text("from your last reported position")

    # The centre moves the job while the phone's channel lags: the tap's refusal is shown, and
    # the card catches up with the job's real state.
    holding = []
    for target in ("en_route", "on_site"):
        resp = await dispatcher.post(f"/incidents/{job}/transitions", json={"to": target})
        assert resp.status_code == 200, resp.text
    await expect(card.locator(".actions button")).to_have_text(["Acknowledge", "En route"])  # not told yet
    answer = await _tap(page, job, "en_route")
    assert answer.status == 409
    await expect(card.locator(".err")).to_contain_text(
        "En route failed: an incident that is on_site cannot become en_route; allowed:"
    )
    await expect(card.locator(".actions button")).to_have_text(["Done"])
    await expect(card.locator(".state")).to_contain_text("On site since")
    await _screenshot(page, "crew-refused.png")
    # The held events arrive late, the older first: it must not take the card back to en route.
    await eventually(lambda: _true(holding is not None and len(holding) == 2), timeout=10)
    held, holding = holding, None
    to_page = relays[-1][0]
    to_page.send(held[0])
    await page.wait_for_function(f"window.cityopsField.lastEventId === {json.loads(held[0])['id']}", timeout=WAIT_MS)
    await expect(card.locator(".actions button")).to_have_text(["Done"])
    to_page.send(held[1])
    await expect(card.locator(".state")).to_contain_text("On site since")

    # The channel is cut and stays down: the banner stays until the centre answers again.
    cut = True
    for side in relays[-1]:
        await side.close(code=1011, reason="test: cut")
    await expect(page.locator("#offline")).to_contain_text("Offline — reconnecting", timeout=WAIT_MS)
    await expect(page.locator("#offline")).to_contain_text("Jobs as of")
    await eventually(lambda: _true(len(refused) >= 1), timeout=10)  # it tried again, and failed
    await expect(page.locator("#offline")).to_be_visible()
    assert "last_event_id=" in refused[0]
    cut = False
    await expect(page.locator("#offline")).to_be_hidden(timeout=20_000)

    # A reload keeps the session (sessionStorage); logging out ends it.
    await page.reload()
    await expect(card).to_be_visible(timeout=WAIT_MS)
    await page.locator("#logout").tap()
    await expect(page.locator("#login")).to_be_visible()
    assert await page.evaluate("sessionStorage.length") == 0
    await page.reload()
    await expect(page.locator("#login")).to_be_visible()
    await expect(card).to_have_count(0)
    # A stored token the centre no longer accepts: back to the login, saying why.
    stale = {"token": "not-a-token", "username": "crew-w1", "crew_id": "W1"}
    await page.evaluate("(s) => sessionStorage.setItem('cityops.field', JSON.stringify(s))", stale)
    await page.reload()
    await expect(page.locator("#loginerr")).to_contain_text("Signed out:", timeout=WAIT_MS)
    await expect(page.locator("#login")).to_be_visible()
    await expect(page.locator("#app")).to_be_hidden()
    p.check()


async def test_a_shift_outlives_the_login(
    stack: Stack, topics: Topics, database: str, uid: str, browser: Browser
) -> None:
    """Tokens last 4 s here (8 h in use): past half its life the page renews its token, so a
    reload after the first one expired keeps the crew logged in."""
    async with ApiServer(ioc_settings(topics, database, uid, token_ttl_s=4)) as server:
        context = await browser.new_context(**PHONE)
        try:
            page = await context.new_page()
            await page.goto(f"{server.url}/field/")
            await _log_in(page, "crew-w1")
            await page.wait_for_function("() => window.cityopsField.socket?.readyState === 1", timeout=WAIT_MS)
            stored = "() => JSON.parse(sessionStorage.getItem('cityops.field')).token"
            first = await page.evaluate(stored)
            claims = "t => JSON.parse(atob(t.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')))"
            await page.wait_for_function(
                f"t => Date.now() / 1000 > ({claims})(t).iat + 2.2", arg=first, timeout=WAIT_MS
            )
            await page.evaluate("() => window.cityopsField.probe()")
            renewed = await page.evaluate(stored)
            assert renewed and renewed != first
            await page.wait_for_function(
                f"t => Date.now() / 1000 > ({claims})(t).exp + 0.5", arg=first, timeout=WAIT_MS
            )
            await page.reload()
            await expect(page.locator("#app")).to_be_visible(timeout=WAIT_MS)
            await expect(page.locator("#login")).to_be_hidden()
        finally:
            await context.close()
