"""Crews and dispatch: ranking, priority, the queue, data-confirmed resolution, KPIs, CAP, audit."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import timedelta
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest

from cityops.core import contracts, schema
from cityops.core.registry import Device
from ioc import ApiServer
from ioc.clock import ManualClock
from tests.ioc.conftest import alert, centre_of, insert_readings

CAP = "{urn:oasis:names:tc:emergency:cap:1.2}"


async def _only(http: httpx.AsyncClient) -> dict[str, object]:
    (incident,) = (await http.get("/incidents", params={"open_only": False})).json()
    return dict(incident)


async def _move(http: httpx.AsyncClient, incident_id: object, **body: object) -> httpx.Response:
    return await http.post(f"/incidents/{incident_id}/transitions", json=body)


async def _put_crew(admin: httpx.AsyncClient, crew_id: str, lat: float, lon: float, **extra: object) -> None:
    body = {"name": crew_id, "skills": ["water_mains"], "lat": lat, "lon": lon, **extra}
    resp = await admin.put(f"/crews/{crew_id}", json=body)
    assert resp.status_code == 200, resp.text


async def test_recommendation_ranks_by_skill_shift_distance_and_workload(
    api: ApiServer, registered: list[Device], login: Callable[[str], httpx.AsyncClient], clock: ManualClock
) -> None:
    c = centre_of(api)
    admin, dispatcher = login("admin"), login("dispatcher")
    pipes = [d for d in registered if d.kind == "pipe_node"]
    await c.receive([alert(pipes[0], "pressure_kpa", clock.now)])
    incident = await _only(dispatcher)
    lat, lon = float(incident["lat"]), float(incident["lon"])  # type: ignore[arg-type]
    # Near (~110 m), middle (~1.1 km), far (~5.5 km); an electrician next door; one off shift.
    await _put_crew(admin, "NEAR", lat + 0.001, lon)
    await _put_crew(admin, "MID", lat + 0.01, lon)
    await _put_crew(admin, "FAR", lat + 0.05, lon)
    await _put_crew(admin, "SPARKS", lat, lon, skills=["electrical"])
    local = clock.now.astimezone(ZoneInfo(c.settings.city_timezone))
    off = {
        "shift_start": (local + timedelta(hours=2)).strftime("%H:%M"),
        "shift_end": (local + timedelta(hours=3)).strftime("%H:%M"),
    }
    await _put_crew(admin, "ASLEEP", lat, lon, **off)

    ranked = (await dispatcher.get(f"/incidents/{incident['incident_id']}/recommendations")).json()
    ids = [r["crew_id"] for r in ranked]
    assert "SPARKS" not in ids and "ASLEEP" not in ids
    assert ids.index("NEAR") < ids.index("MID") < ids.index("FAR")
    near = next(r for r in ranked if r["crew_id"] == "NEAR")
    assert near["distance_m"] == pytest.approx(111, rel=0.05) and near["rank"] == ids.index("NEAR") + 1

    # Two jobs in hand weigh 2 x workload_km = 4 km: MID (1.1 km, idle) now beats NEAR (0.1 + 4).
    for i in (1, 2):
        clock.advance(c.settings.correlation_window_s + 1)
        await c.receive([alert(pipes[i % len(pipes)], "flow_m3h", clock.now)])
    others = [i for i in (await dispatcher.get("/incidents")).json() if i["incident_id"] != incident["incident_id"]]
    for other in others:
        assert (await _move(dispatcher, other["incident_id"], to="acknowledged")).status_code == 200
        assert (await _move(dispatcher, other["incident_id"], to="dispatched", crew_id="NEAR")).status_code == 200
    ranked = (await dispatcher.get(f"/incidents/{incident['incident_id']}/recommendations")).json()
    ids = [r["crew_id"] for r in ranked]
    assert ids.index("MID") < ids.index("NEAR") < ids.index("FAR")
    assert next(r for r in ranked if r["crew_id"] == "NEAR")["jobs"] == sorted(o["incident_id"] for o in others)


async def test_priority_counts_assets_and_critical_sites_and_orders_the_queue(
    api: ApiServer, registered: list[Device], login: Callable[[str], httpx.AsyncClient], clock: ManualClock
) -> None:
    c = centre_of(api)
    viewer = login("viewer")
    env = next(d for d in registered if d.kind == "env_station")
    lamps = [d for d in registered if d.kind == "lamp_pole"]
    async with await psycopg.AsyncConnection.connect(c.settings.pg_dsn, autocommit=True) as conn:
        await conn.execute("DELETE FROM critical_sites")  # the demo city's, which may lie anywhere here
    site = {"name": "hospital", "kind": "hospital", "weight": 5, "lat": env.lat, "lon": env.lon + 0.001}
    assert (await viewer.put("/sites/H", json=site)).status_code == 403
    assert (await login("admin").put("/sites/H", json=site)).status_code == 200
    await c.receive([alert(env, "pm25_ugm3", clock.now)])
    await c.receive([alert(lamp, "voltage_v", clock.now, detector="limit") for lamp in lamps])
    queue = (await viewer.get("/incidents/queue")).json()
    by_type = {i["type"]: i for i in queue}
    air, cab = by_type["air_pollution"], by_type["cabinet_power_loss"]
    assert air["impact"] == 1 + 5  # one asset, a hospital ~70 m away
    assert cab["impact"] == len(lamps)  # no critical site near the lamps
    assert air["priority"] == air["severity"] * air["impact"] and cab["priority"] == cab["severity"] * cab["impact"]
    assert [i["priority"] for i in queue] == sorted((i["priority"] for i in queue), reverse=True)


async def test_resolving_waits_for_the_sensors_unless_a_dispatcher_overrides(
    api: ApiServer, registered: list[Device], login: Callable[[str], httpx.AsyncClient], clock: ManualClock
) -> None:
    c = centre_of(api)
    operator, dispatcher, crew = login("operator"), login("dispatcher"), login("crew")
    pipe = next(d for d in registered if d.kind == "pipe_node")
    dsn = c.settings.pg_dsn
    start = clock.now - timedelta(minutes=30)
    await insert_readings(dsn, pipe.device_id, "pressure_kpa", start, [400 + (i % 5) for i in range(150)])  # normal
    await insert_readings(dsn, pipe.device_id, "pressure_kpa", clock.now, [120.0] * 3)  # the burst
    await c.receive([alert(pipe, "pressure_kpa", clock.now, value=120.0, baseline=402.0)])
    incident_id = (await _only(operator))["incident_id"]
    await _move(dispatcher, incident_id, to="acknowledged")
    await _move(dispatcher, incident_id, to="dispatched", crew_id="W1")
    assert (await crew.post(f"/crew/jobs/{incident_id}/acknowledge", json={"note": "on it"})).status_code == 200
    assert (await crew.post(f"/crew/jobs/{incident_id}/on_site", json={})).status_code == 200

    clock.advance(60)
    done = await crew.post(f"/crew/jobs/{incident_id}/done", json={"note": "valve closed"})
    assert done.status_code == 202, done.text
    assert "waiting for the sensors" in done.json()["detail"] and done.json()["recovery"]["waiting"]
    assert (await _only(operator))["state"] == "on_site" and (await _only(operator))["resolve_pending"] is True
    assert (await c.tick())["resolved"] == 0  # still no data back

    # Pressure back to normal for longer than the recovery period: the timer resolves it.
    await insert_readings(dsn, pipe.device_id, "pressure_kpa", clock.now, [401.0 + (i % 3) for i in range(20)])
    clock.advance(20 * 10)
    assert (await c.tick())["resolved"] == 1
    resolved = await _only(operator)
    assert resolved["state"] == "resolved" and resolved["resolve_pending"] is False
    audit = [(a["action"], a["actor"]) for a in (await operator.get(f"/incidents/{incident_id}/audit")).json()]
    assert audit == [
        ("opened", "system"),
        ("acknowledged", "dispatcher"),
        ("dispatched", "dispatcher"),
        ("crew_acknowledged", "crew-w1"),
        ("on_site", "crew-w1"),
        ("resolve_requested", "crew-w1"),
        ("resolved", "system"),
    ]

    # Another one, never recovered: an operator cannot override, a dispatcher can, with a reason.
    clock.advance(c.settings.correlation_window_s + 1)
    await c.receive([alert(pipe, "flow_m3h", clock.now)])
    second = next(i for i in (await operator.get("/incidents")).json())["incident_id"]
    assert (await _move(operator, second, to="acknowledged")).status_code == 200
    assert (await _move(operator, second, to="resolved", override_reason="seen on site")).status_code == 403
    resp = await _move(dispatcher, second, to="resolved", override_reason="meter replaced; reads zero until refit")
    assert resp.status_code == 200 and resp.json()["state"] == "resolved"
    last = (await operator.get(f"/incidents/{second}/audit")).json()[-1]
    assert last["data"]["override"] == "meter replaced; reads zero until refit"
    assert last["data"]["recovery"]["recovered"] is False


async def test_an_unattended_incident_whose_sensors_recover_clears_itself(
    api: ApiServer, registered: list[Device], login: Callable[[str], httpx.AsyncClient], clock: ManualClock
) -> None:
    c = centre_of(api)
    viewer = login("viewer")
    env = next(d for d in registered if d.kind == "env_station")
    dsn = c.settings.pg_dsn
    await insert_readings(
        dsn, env.device_id, "pm25_ugm3", clock.now - timedelta(minutes=20), [10.0 + i % 4 for i in range(100)]
    )
    await c.receive([alert(env, "pm25_ugm3", clock.now, value=300.0, baseline=11.0)])  # a spike
    await insert_readings(dsn, env.device_id, "pm25_ugm3", clock.now + timedelta(seconds=10), [11.0] * 30)
    clock.advance(c.settings.recovery_s / 2)
    assert (await c.tick())["resolved"] == 0  # not quiet for long enough yet
    clock.advance(c.settings.recovery_s)
    assert (await c.tick())["resolved"] == 1
    incident = await _only(viewer)
    assert incident["state"] == "resolved" and incident["acknowledged_at"] is None


async def test_crews_report_their_position_and_see_only_their_jobs(
    api: ApiServer, registered: list[Device], login: Callable[[str], httpx.AsyncClient], clock: ManualClock
) -> None:
    crew, viewer = login("crew"), login("viewer")
    resp = await crew.post("/crew/location", json={"lat": 52.37, "lon": 4.9})
    assert resp.status_code == 200 and resp.json()["crew_id"] == "W1"
    w1 = next(x for x in (await viewer.get("/crews")).json() if x["crew_id"] == "W1")
    assert (w1["lat"], w1["lon"]) == pytest.approx((52.37, 4.9)) and w1["located_at"] is not None
    assert (await crew.post("/crew/location", json={"lat": 91, "lon": 4.9})).status_code == 422
    assert (await crew.get("/crew/jobs")).json() == []


async def test_kpis_through_the_api_and_prometheus(
    api: ApiServer, registered: list[Device], login: Callable[[str], httpx.AsyncClient], clock: ManualClock
) -> None:
    c = centre_of(api)
    dispatcher = login("dispatcher")
    wq = next(d for d in registered if d.kind == "water_quality")
    detected = clock.now - timedelta(seconds=30)  # the anomalous reading, 30 s before the IOC saw it
    await c.receive([alert(wq, "chlorine_mgl", detected, value=0.01, baseline=0.4)])
    incident_id = (await _only(dispatcher))["incident_id"]
    clock.advance(90)
    await _move(dispatcher, incident_id, to="acknowledged")
    clock.advance(60)
    await _move(dispatcher, incident_id, to="dispatched", crew_id="W2")
    kpis = (await dispatcher.get("/kpis")).json()
    overall = kpis["overall"]
    assert overall["incidents"] == 1
    assert overall["detect_s"] == pytest.approx(30) and overall["acknowledge_s"] == pytest.approx(120)
    assert overall["dispatch_s"] == pytest.approx(180) and overall["arrive_s"] is None
    assert kpis["open_by_severity"] == {"1": 0, "2": 0, "3": 0, "4": 1}
    (group,) = kpis["groups"]
    assert (group["district"], group["type"]) == (wq.district, "water_contamination")
    c._last_kpi = -float("inf")  # export at the next tick rather than in 15 s
    await c.tick()
    text = (await dispatcher.get("/metrics")).text
    assert f'cityops_ioc_open_incidents{{district="{wq.district}",severity="4",type="water_contamination"}} 1.0' in text
    assert (
        f'cityops_ioc_kpi_seconds{{district="{wq.district}",milestone="acknowledge",type="water_contamination"}} 120.0'
        in text
    )


async def test_a_public_warning_in_cap_then_its_update(
    api: ApiServer, registered: list[Device], login: Callable[[str], httpx.AsyncClient], clock: ManualClock
) -> None:
    c = centre_of(api)
    dispatcher, viewer = login("dispatcher"), login("viewer")
    wq = next(d for d in registered if d.kind == "water_quality")
    await c.receive([alert(wq, "chlorine_mgl", clock.now, value=0.01, baseline=0.4)])
    incident_id = (await _only(viewer))["incident_id"]
    assert (await viewer.get(f"/incidents/{incident_id}/cap")).status_code == 404  # none issued yet
    assert (await viewer.post(f"/incidents/{incident_id}/cap")).status_code == 403
    first = await dispatcher.post(f"/incidents/{incident_id}/cap")
    assert first.status_code == 200 and first.headers["content-type"] == "application/cap+xml"
    doc = ET.fromstring(first.content)
    assert doc.findtext(f"{CAP}msgType") == "Alert" and doc.findtext(f"{CAP}status") == "Exercise"
    assert doc.findtext(f"{CAP}info/{CAP}category") == "Health"
    assert (await dispatcher.post(f"/incidents/{incident_id}/cap")).content == first.content  # unchanged: same
    assert (await viewer.get(f"/incidents/{incident_id}/cap")).content == first.content

    clock.advance(600)
    await _move(dispatcher, incident_id, to="resolved", override_reason="flushed and sampled clean")
    update = ET.fromstring((await dispatcher.post(f"/incidents/{incident_id}/cap")).content)
    assert update.findtext(f"{CAP}msgType") == "Update"
    assert update.findtext(f"{CAP}references") == ",".join(
        [doc.findtext(f"{CAP}sender") or "", doc.findtext(f"{CAP}identifier") or "", doc.findtext(f"{CAP}sent") or ""]
    )
    assert update.findtext(f"{CAP}info/{CAP}responseType") == "AllClear"


async def test_the_audit_log_refuses_changes(api: ApiServer, registered: list[Device], clock: ManualClock) -> None:
    c = centre_of(api)
    await c.receive([alert(registered[0], "voltage_v", clock.now)])
    async with await psycopg.AsyncConnection.connect(c.settings.pg_dsn, autocommit=True) as conn:
        for statement in ("UPDATE audit_log SET note = 'edited'", "DELETE FROM audit_log", "TRUNCATE audit_log"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                await conn.execute(statement.encode())
        cur = await conn.execute("SELECT count(*) FROM audit_log")
        assert (await cur.fetchone()) == (1,)


async def test_recovery_counts_the_daily_cycle_as_normal(
    api: ApiServer, registered: list[Device], login: Callable[[str], httpx.AsyncClient], clock: ManualClock
) -> None:
    """The hour before read 40-60, but the day before swung 0-100: 90 is normal, 150 is not."""
    c = centre_of(api)
    viewer = login("viewer")
    env = next(d for d in registered if d.kind == "env_station")
    dsn = c.settings.pg_dsn
    day_start = clock.now - timedelta(hours=6)
    cycle = [50 + 50 * math.sin(i / 30) for i in range(300)]  # 5 h, one reading a minute
    await insert_readings(dsn, env.device_id, "no2_ugm3", day_start, cycle, step_s=60)
    await insert_readings(
        dsn, env.device_id, "no2_ugm3", clock.now - timedelta(minutes=59), [40 + i % 20 for i in range(59)], step_s=60
    )
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await schema.mark_dirty(conn, day_start, clock.now)
        await schema.refresh_rollups(conn)
    await c.receive([alert(env, "no2_ugm3", clock.now, value=400.0, baseline=50.0)])
    incident = await _only(viewer)
    await insert_readings(dsn, env.device_id, "no2_ugm3", clock.now + timedelta(seconds=5), [150.0] * 12)
    clock.advance(c.settings.recovery_s + 10)
    assert (await c.tick())["resolved"] == 0
    async with c.events.read() as unit:
        _, detail = await c.desk.recovered(unit, await c.desk.get(unit, int(incident["incident_id"])))  # type: ignore[call-overload]
    assert detail["waiting"] and "read 150..150" in detail["waiting"][0]

    await insert_readings(dsn, env.device_id, "no2_ugm3", clock.now + timedelta(seconds=5), [90.0] * 12)
    clock.advance(c.settings.recovery_s + 10)
    assert (await c.tick())["resolved"] == 1
    assert (await _only(viewer))["state"] == "resolved"


async def test_a_sensor_fault_is_low_priority_maintenance_work_not_an_emergency(
    api: ApiServer, registered: list[Device], login: Callable[[str], httpx.AsyncClient], clock: ManualClock
) -> None:
    """The stream judged the alert a sensor fault: it opens that device's maintenance work
    (severity 1, below any incident in the queue), nothing else joins it, it joins nothing, and
    it is no public warning."""
    c = centre_of(api)
    dispatcher = login("dispatcher")
    pipes = [d for d in registered if d.kind == "pipe_node"]
    stuck = contracts.TruthCategory.SENSOR_FAULT
    await c.receive([alert(pipes[0], "pressure_kpa", clock.now, detector="flatline", alert_class=stuck)])
    clock.advance(5)
    # The same device's flow meter alerting for the city: that is an incident of its own.
    await c.receive([alert(pipes[0], "flow_m3h", clock.now)])
    clock.advance(5)
    await c.receive([alert(pipes[0], "pressure_kpa", clock.now, detector="physical", alert_class=stuck)])
    incidents = (await dispatcher.get("/incidents")).json()
    work = [i for i in incidents if i["type"] == "sensor_fault"]
    other = [i for i in incidents if i["type"] != "sensor_fault"]
    assert len(work) == 1 and work[0]["assets"] == [pipes[0].device_id] and work[0]["severity"] == 1
    assert work[0]["title"].startswith(f"Sensor fault — {pipes[0].device_id}") and work[0]["alert_count"] == 2
    assert len(other) == 1 and other[0]["assets"] == [pipes[0].device_id] and other[0]["alert_count"] == 1
    queue = [i["incident_id"] for i in (await dispatcher.get("/incidents/queue")).json()]
    assert queue.index(other[0]["incident_id"]) < queue.index(work[0]["incident_id"])
    refused = await dispatcher.post(f"/incidents/{work[0]['incident_id']}/cap")
    assert refused.status_code == 409 and "not a public warning" in refused.json()["detail"]
