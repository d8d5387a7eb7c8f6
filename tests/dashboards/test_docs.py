"""A dispatcher drives an incident from the API docs page, offline, as a person would click it."""

from __future__ import annotations

import json

import pytest
from playwright.async_api import Browser, Page, Route

from cityops.core.registry import Device
from ioc import ApiServer
from ioc.clock import ManualClock
from tests.dashboards.conftest import ARTIFACTS
from tests.ioc.conftest import alert, centre_of


async def _try(page: Page, operation: str, params: dict[str, str], body: dict[str, object] | None = None) -> object:
    """Open an operation, fill it, press Execute; returns the JSON answer (and checks the page shows it)."""
    block = page.locator(f"#operations-{operation}")
    if not await block.locator(".opblock-body").is_visible():
        await block.locator(".opblock-summary").click()
    try_out = block.locator("button.try-out__btn:has-text('Try it out')")
    if await try_out.count():
        await try_out.click()
    for name, value in params.items():
        await block.locator(f"tr[data-param-name='{name}'] input").fill(value)
    if body is not None:
        await block.locator("textarea.body-param__text").fill(json.dumps(body))
    async with page.expect_response(lambda r: r.request.method != "OPTIONS" and "/static" not in r.url) as answer:
        await block.locator("button.execute").click()
    response = await answer.value
    assert response.status == 200, await response.text()
    shown = block.locator(".live-responses-table tr.response td.response-col_status").first
    await shown.filter(has_text="200").wait_for(timeout=10_000)
    return await response.json()


@pytest.mark.slow
async def test_a_dispatcher_drives_an_incident_to_closure_from_the_docs_page(
    api: ApiServer, registered: list[Device], clock: ManualClock, browser: Browser
) -> None:
    await centre_of(api).receive([alert(registered[0], "voltage_v", clock.now, detector="limit")])
    page = await browser.new_page(viewport={"width": 1600, "height": 1200})
    outside: list[str] = []

    async def local_only(route: Route) -> None:
        # The docs page must work without internet: anything not served by the IOC fails the test.
        if route.request.url.startswith(api.url):
            await route.continue_()
        else:
            outside.append(route.request.url)
            await route.abort()

    await page.route("**/*", local_only)
    await page.goto(f"{api.url}/docs")
    await page.locator(".swagger-ui .info .title").filter(has_text="cityops IOC").wait_for(timeout=15_000)

    await page.locator("button.authorize").first.click()
    await page.fill("#oauth_username", "dispatcher")
    await page.fill("#oauth_password", "dispatcher")
    await page.locator(".auth-btn-wrapper button.authorize").click()
    await page.locator(".auth-container").filter(has_text="Authorized").wait_for(timeout=10_000)
    await page.locator("button:has-text('Close')").click()

    incidents = await _try(page, "incidents-list_incidents_incidents_get", {})
    assert isinstance(incidents, list) and len(incidents) == 1
    incident_id = str(incidents[0]["incident_id"])
    move = "incidents-move_incident_incidents__incident_id__transitions_post"
    for body in (
        {"to": "acknowledged", "note": "from the docs page"},
        {"to": "dispatched", "crew_id": "E1"},
        {"to": "on_site"},
        {"to": "resolved", "override_reason": "fuse replaced, checked on site"},
        {"to": "closed"},
    ):
        moved = await _try(page, move, {"incident_id": incident_id}, body)
        assert isinstance(moved, dict) and moved["state"] == body["to"]
    audit = await _try(page, "incidents-incident_audit_incidents__incident_id__audit_get", {"incident_id": incident_id})
    assert isinstance(audit, list)
    assert [a["action"] for a in audit] == ["opened", "acknowledged", "dispatched", "on_site", "resolved", "closed"]
    assert {a["actor"] for a in audit[1:]} == {"dispatcher"}
    assert outside == []
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "docs.png"))
