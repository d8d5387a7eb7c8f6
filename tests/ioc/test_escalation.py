"""Escalation and maintenance windows on a driven clock; deadlines survive a restart."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta

import httpx
import psycopg
import pytest

from cityops.core.contracts import Topics
from cityops.core.registry import Device
from ioc import ApiServer
from ioc.clock import ManualClock
from tests.helpers import eventually
from tests.ioc.conftest import alert, centre_of, ioc_settings, token


async def _incident(api: ApiServer, http: httpx.AsyncClient) -> dict[str, object]:
    incidents = (await http.get("/incidents", params={"open_only": False})).json()
    assert isinstance(incidents, list) and len(incidents) == 1, incidents
    return dict(incidents[0])


async def test_an_unacknowledged_incident_escalates_once_and_tells_the_supervisors(
    api: ApiServer, registered: list[Device], login: Callable[[str], httpx.AsyncClient], clock: ManualClock
) -> None:
    c = centre_of(api)
    viewer = login("viewer")
    wq = next(d for d in registered if d.kind == "water_quality")
    await c.receive([alert(wq, "chlorine_mgl", clock.now, value=0.01, baseline=0.4)])  # contamination: severity 4
    incident = await _incident(api, viewer)
    assert incident["severity"] == 4 and incident["type"] == "water_contamination"
    ack_s = c.settings.ack_s[3]
    assert incident["ack_due"] == (clock.now + timedelta(seconds=ack_s)).isoformat().replace("+00:00", "Z")
    priority = float(incident["priority"])  # type: ignore[arg-type]

    clock.advance(ack_s - 1)
    assert (await c.tick())["ack_breaches"] == 0
    clock.advance(2)
    assert (await c.tick())["ack_breaches"] == 1
    assert (await c.tick())["ack_breaches"] == 0  # once
    after = await _incident(api, viewer)
    assert after["ack_breached"] is True and float(after["priority"]) > priority  # type: ignore[arg-type]
    audit = (await viewer.get(f"/incidents/{after['incident_id']}/audit")).json()
    assert [a["action"] for a in audit] == ["opened", "escalated_ack"]
    assert audit[-1]["actor"] == "system" and audit[-1]["role"] == "system"
    async with await psycopg.AsyncConnection.connect(c.settings.pg_dsn) as conn:
        cur = await conn.execute("SELECT body FROM ioc_events WHERE channel = 'supervisor'")
        (event,) = [r[0] for r in await cur.fetchall()]
    assert event["type"] == "escalation" and event["breach"] == "ack"
    assert event["incident"]["incident_id"] == after["incident_id"]


async def test_a_crew_that_does_not_arrive_in_time_escalates(
    api: ApiServer, registered: list[Device], login: Callable[[str], httpx.AsyncClient], clock: ManualClock
) -> None:
    c = centre_of(api)
    dispatcher = login("dispatcher")
    pipe = next(d for d in registered if d.kind == "pipe_node")
    await c.receive([alert(pipe, "pressure_kpa", clock.now)])
    incident_id = (await _incident(api, dispatcher))["incident_id"]
    for move in ({"to": "acknowledged"}, {"to": "dispatched", "crew_id": "W1"}):
        assert (await dispatcher.post(f"/incidents/{incident_id}/transitions", json=move)).status_code == 200
    severity = int((await _incident(api, dispatcher))["severity"])  # type: ignore[call-overload]
    clock.advance(c.settings.arrive_s[severity - 1] + 1)
    done = await c.tick()
    assert done["arrive_breaches"] == 1 and done["ack_breaches"] == 0  # it was acknowledged in time
    assert (await _incident(api, dispatcher))["arrive_breached"] is True


async def test_escalation_deadlines_survive_a_restart(
    topics: Topics, database: str, uid: str, registered: list[Device], clock: ManualClock
) -> None:
    settings = ioc_settings(topics, database, uid)
    wq = next(d for d in registered if d.kind == "water_quality")
    async with ApiServer(settings, clock=clock) as first:
        await centre_of(first).receive([alert(wq, "turbidity_ntu", clock.now, value=9.0, baseline=0.2)])
    # Down across the deadline: the new process finds it in the database.
    clock.advance(settings.ack_s[3] + 60)
    async with ApiServer(settings, clock=clock) as second:
        # Its timers tick once at start: the breach is found without any new alert.
        async with httpx.AsyncClient(
            base_url=second.url, headers={"Authorization": f"Bearer {await token(second, 'viewer')}"}
        ) as http:

            async def breached() -> bool:
                return (await _incident(second, http))["ack_breached"] is True

            await eventually(breached, timeout=10)
            assert (await centre_of(second).tick())["ack_breaches"] == 0  # and only once
            incident_id = (await _incident(second, http))["incident_id"]
            audit = (await http.get(f"/incidents/{incident_id}/audit")).json()
            assert [a["action"] for a in audit] == ["opened", "escalated_ack"]


async def test_alerts_in_a_maintenance_window_open_no_incident_until_it_expires(
    api: ApiServer, registered: list[Device], login: Callable[[str], httpx.AsyncClient], clock: ManualClock
) -> None:
    c = centre_of(api)
    operator, viewer = login("operator"), login("viewer")
    lamps = [d for d in registered if d.kind == "lamp_pole"]
    pipe = next(d for d in registered if d.kind == "pipe_node")
    cabinet = lamps[0].attrs["cabinet"]
    window = {
        "starts_at": clock.now.isoformat(),
        "ends_at": (clock.now + timedelta(hours=1)).isoformat(),
        "reason": "cabinet rewiring",
        "group_key": f"cabinet:{cabinet}",
    }
    assert (await viewer.post("/maintenance", json=window)).status_code == 403
    created = await operator.post("/maintenance", json=window)
    assert created.status_code == 201, created.text
    window_id = created.json()["window_id"]
    shown = (await viewer.get("/maintenance")).json()
    assert [w["window_id"] for w in shown] == [window_id] and shown[0]["reason"] == "cabinet rewiring"

    clock.advance(60)
    await c.receive([alert(lamp, "voltage_v", clock.now, detector="limit") for lamp in lamps])
    await c.receive([alert(pipe, "pressure_kpa", clock.now)])  # outside the window
    incidents = (await viewer.get("/incidents")).json()
    assert [i["assets"] for i in incidents] == [[pipe.device_id]]
    stored = (await viewer.get("/alerts")).json()
    assert {a["device_id"] for a in stored if a["maintenance_id"] == window_id} == {d.device_id for d in lamps}
    assert all(a["incident_id"] is None for a in stored if a["maintenance_id"] is not None)

    clock.advance(3600)  # the window expires by itself
    await c.tick()
    assert (await viewer.get("/maintenance")).json() == []
    await c.receive([alert(lamps[0], "voltage_v", clock.now, detector="limit")])
    assert lamps[0].device_id in {a for i in (await viewer.get("/incidents")).json() for a in i["assets"]}
    async with await psycopg.AsyncConnection.connect(c.settings.pg_dsn) as conn:
        cur = await conn.execute("SELECT body FROM ioc_events WHERE body->>'type' = 'maintenance' ORDER BY event_id")
        events = [r[0] for r in await cur.fetchall()]
    assert [e["active"] for e in events] == [True, False]  # created, then expired (told to the wall)


async def test_maintenance_by_device_and_by_map_area(
    api: ApiServer, registered: list[Device], login: Callable[[str], httpx.AsyncClient], clock: ManualClock
) -> None:
    c = centre_of(api)
    operator = login("operator")
    env, pipe, drain = (
        next(d for d in registered if d.kind == kind) for kind in ("env_station", "pipe_node", "drainage")
    )
    box = 0.0005
    area = {
        "type": "Polygon",
        "coordinates": [
            [
                [pipe.lon - box, pipe.lat - box],
                [pipe.lon + box, pipe.lat - box],
                [pipe.lon + box, pipe.lat + box],
                [pipe.lon - box, pipe.lat + box],
                [pipe.lon - box, pipe.lat - box],
            ]
        ],
    }
    end = (clock.now + timedelta(hours=2)).isoformat()
    for scope in ({"device_id": env.device_id}, {"area": area}):
        resp = await operator.post(
            "/maintenance", json={"starts_at": clock.now.isoformat(), "ends_at": end, "reason": "works", **scope}
        )
        assert resp.status_code == 201, resp.text
    await c.receive(
        [
            alert(env, "pm25_ugm3", clock.now),
            alert(pipe, "pressure_kpa", clock.now),
            alert(drain, "level_cm", clock.now),
        ]
    )
    incidents = (await operator.get("/incidents")).json()
    assert [i["assets"] for i in incidents] == [[drain.device_id]]


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"group_key": "cabinet:X", "device_id": "d"}, "exactly one"),
        ({"group_key": "street:X"}, "group_key must look like"),
        ({"area": {"type": "Point", "coordinates": [4.9, 52.3]}}, "Polygon"),
        ({"area": {"type": "Polygon", "coordinates": "x"}}, "coordinates"),
        ({"area": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 2]]]}}, "end where it starts"),
        ({"area": {"type": "Polygon", "coordinates": [[[500, 0], [1, 0], [1, 1], [500, 0]]]}}, "less than or equal"),
        ({"area": {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}}, "not a valid"),
        ({"device_id": "d", "ends_at": "2020-01-01T00:00:00Z"}, "ends_at must be after"),
        ({"device_id": "d", "starts_at": "2026-01-01T00:00:00"}, "timezone"),
    ],
)
async def test_bad_maintenance_windows_get_a_clear_400(
    login: Callable[[str], httpx.AsyncClient], clock: ManualClock, body: dict[str, object], detail: str
) -> None:
    window = {
        "starts_at": clock.now.isoformat(),
        "ends_at": (clock.now + timedelta(hours=1)).isoformat(),
        "reason": "works",
        **body,
    }
    resp = await login("operator").post("/maintenance", json=window)
    # Our checks answer 400; the schema's (types, ranges) 422; both say what is wrong.
    assert resp.status_code in (400, 422) and detail in json.dumps(resp.json()), resp.text
