"""The city at a glance: map outlines, device states, vital signs, pipeline health, and the
wall's pulses; and the incident chart's evidence."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta

import httpx
import psycopg
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from cityops.core import schema
from cityops.core.contracts import DeviceKind, Topics
from cityops.core.metrics import MetricsServer
from cityops.core.registry import Device
from ioc import ApiServer
from ioc.clock import ManualClock
from ioc.pipeline import Pipeline, quantile
from tests.ioc.conftest import alert, centre_of, insert_readings, ioc_settings

FIELD = (52.36, 4.90)


async def _rollup(dsn: str, around: datetime) -> None:
    """Bring readings_1m up to date: native mode refreshes it; TimescaleDB's is real-time."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        if await schema.storage_mode(conn) is schema.StorageMode.NATIVE:
            await schema.mark_dirty(conn, around - timedelta(hours=1), around + timedelta(minutes=1))
            await schema.refresh_rollups(conn)


def _devices(uid: str) -> list[Device]:
    lat, lon = FIELD
    return [
        Device(f"ok-{uid}", DeviceKind.ENV_STATION, lat, lon, "Noord"),
        Device(f"quiet-{uid}", DeviceKind.ENV_STATION, lat + 0.001, lon, "Noord"),
        Device(f"loud-{uid}", DeviceKind.PIPE_NODE, lat, lon + 0.002, "Noord", {"dma": f"DMA-{uid}"}),
        Device(f"fixing-{uid}", DeviceKind.PIPE_NODE, lat + 0.002, lon + 0.002, "Oost", {"dma": f"DMB-{uid}"}),
        # Alerting and in maintenance: the window explains it. Alerting and silent: an incident's.
        Device(f"noisy-fix-{uid}", DeviceKind.PIPE_NODE, lat + 0.003, lon + 0.002, "Oost", {"dma": f"DMB-{uid}"}),
        Device(f"loud-quiet-{uid}", DeviceKind.PIPE_NODE, lat - 0.004, lon - 0.004, "Zuid", {"dma": f"DMC-{uid}"}),
    ]


async def test_every_device_has_a_state_and_the_wall_gets_the_truth_every_pulse(
    api: ApiServer, login: Callable[[str], httpx.AsyncClient], clock: ManualClock, database: str, uid: str
) -> None:
    devices = _devices(uid)
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await schema.upsert_devices(conn, devices)
        await schema.upsert_districts(conn, {"Noord": [(52.35, 4.88), (52.35, 4.92), (52.37, 4.92), (52.37, 4.88)]})
    clock.now = clock.now.replace(microsecond=0)
    # "ok", "loud" and "noisy-fix" reported a minute ago; "quiet" 20 minutes ago; the others never.
    for d, ago in ((devices[0], 60), (devices[1], 1200), (devices[2], 60), (devices[4], 60)):
        await insert_readings(database, d.device_id, "x", clock.now - timedelta(seconds=ago), [1.0] * 6)
    await _rollup(database, clock.now)
    centre = centre_of(api)
    await centre.receive(
        [alert(d, "pressure_kpa", clock.now - timedelta(seconds=30)) for d in (devices[2], devices[5])]
    )
    viewer, operator = login("viewer"), login("operator")
    resp = await operator.post(
        "/maintenance",
        json={
            "group_key": f"dma:DMB-{uid}",
            "starts_at": clock.now.isoformat(),
            "ends_at": (clock.now + timedelta(hours=1)).isoformat(),
            "reason": "valve",
        },
    )
    assert resp.status_code == 201, resp.text
    await centre.receive([alert(devices[4], "pressure_kpa", clock.now - timedelta(seconds=20))])

    status = (await viewer.get("/city")).json()
    states = {d["device_id"]: d["state"] for d in status["devices"]}
    assert states == {
        f"ok-{uid}": "healthy",
        f"quiet-{uid}": "offline",
        f"loud-{uid}": "alerting",
        f"fixing-{uid}": "maintenance",  # silent too, but the window explains it
        f"noisy-fix-{uid}": "maintenance",  # alerting too, but inside the window
        f"loud-quiet-{uid}": "alerting",  # silent too, but an incident's asset
    }
    vitals = status["vitals"]
    assert vitals["devices"] == 6 and vitals["devices_online"] == 3
    assert vitals["devices_by_state"] == {"healthy": 1, "alerting": 2, "offline": 1, "maintenance": 2}
    # The maintenance window of a group is drawn around the devices it covers.
    (area,) = status["maintenance_areas"]
    assert area["reason"] == "valve" and area["area"]["type"] == "Polygon"

    # The map: the registered outline, and a hull around the devices of a district without one.
    outlines = (await login("crew").get("/map")).json()["outlines"]["features"]
    by_name = {f["properties"]["district"]: f for f in outlines}
    assert by_name["Noord"]["properties"]["registered"] is True
    assert by_name["Oost"]["properties"]["registered"] is False
    assert by_name["Oost"]["geometry"]["type"] == "Polygon"

    # Each pulse names every device that is not healthy, goes to the wall's subscribers
    # unnumbered, and is not stored (a quiet city writes nothing).
    wall = centre.hub.subscribe({"wall"})
    pulse = await centre.status()
    assert pulse["devices"] == {d: s for d, s in states.items() if s != "healthy"}
    sent = wall.queue.get_nowait()
    assert sent["type"] == "pulse" and "id" not in sent and sent["vitals"]["devices_online"] == 3
    await insert_readings(database, devices[1].device_id, "x", clock.now - timedelta(seconds=30), [2.0] * 3)
    await _rollup(database, clock.now)
    pulse = await centre.status()
    assert f"quiet-{uid}" not in pulse["devices"] and pulse["vitals"]["devices_online"] == 4
    assert wall.queue.qsize() == 1
    async with centre.events.read() as unit:
        stored = await centre.events.since(unit, ["wall"], 0) or []
    assert {e["type"] for e in stored} <= {"incident", "alerts", "maintenance"}
    centre.hub.unsubscribe(wall)


async def test_a_failing_status_check_does_not_stop_the_centre(topics: Topics, database: str, uid: str) -> None:
    async with ApiServer(ioc_settings(topics, database, uid, status_s=0.05)) as api:
        async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
            await conn.execute("ALTER TABLE devices RENAME TO devices_gone")
            try:
                with pytest.raises(psycopg.errors.UndefinedTable):
                    await centre_of(api).status()
                await asyncio.sleep(0.5)  # about ten failed rounds of the loop
                # Each was logged; the alert feed and the timers still run.
                assert not api.app.state.runner.done()
            finally:
                await conn.execute("ALTER TABLE devices_gone RENAME TO devices")
        async with httpx.AsyncClient(base_url=api.url) as http:
            assert (await http.get("/healthz")).json()["status"] == "ok"


async def test_readings_per_second_come_from_settled_minutes(
    api: ApiServer, login: Callable[[str], httpx.AsyncClient], clock: ManualClock, database: str, uid: str
) -> None:
    clock.now = clock.now.replace(second=0, microsecond=0)
    # 10 minutes x 12 readings a minute (every 5 s), for two series: 24 a minute = 0.4 per second.
    for metric in ("a", "b"):
        await insert_readings(database, f"rate-{uid}", metric, clock.now - timedelta(minutes=10), [1.0] * 120, step_s=5)
    # A burst in the last two minutes, which are still filling, does not count (yet).
    await insert_readings(database, f"rate-{uid}", "c", clock.now - timedelta(minutes=2), [1.0] * 120, step_s=1)
    await _rollup(database, clock.now)
    vitals = (await login("viewer").get("/city")).json()["vitals"]
    assert vitals["readings_per_s"] == pytest.approx(0.4)


async def test_the_incident_chart_has_its_readings_and_anomalous_points(
    api: ApiServer, login: Callable[[str], httpx.AsyncClient], clock: ManualClock, database: str, uid: str
) -> None:
    (pipe,) = [d for d in _devices(uid) if d.device_id == f"loud-{uid}"]
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await schema.upsert_devices(conn, [pipe])
    clock.now = clock.now.replace(microsecond=0)
    start = clock.now - timedelta(minutes=10)
    values = [400.0] * 55 + [120.0, 118.0, 119.0] + [400.0] * 2
    await insert_readings(database, pipe.device_id, "pressure_kpa", start, values)
    spikes = [start + timedelta(seconds=10 * i) for i in (55, 56)]
    await centre_of(api).receive(
        [alert(pipe, "pressure_kpa", at, value=values[55 + k], baseline=400.0) for k, at in enumerate(spikes)]
    )
    viewer = login("viewer")
    (incident,) = (await viewer.get("/incidents")).json()
    chart = (await viewer.get(f"/incidents/{incident['incident_id']}/chart")).json()
    assert chart["resolution"] == "raw"
    (series,) = chart["series"]
    assert (series["device_id"], series["metric"]) == (pipe.device_id, "pressure_kpa")
    # From 15 minutes before the first anomaly: every reading we wrote is in range.
    assert [p["value"] for p in series["points"]] == values
    assert [a["value"] for a in series["alerts"]] == [120.0, 118.0]
    assert series["alerts"][0]["explanation"] == "pressure_kpa = 120, expected 400"
    assert (await viewer.get("/incidents/999999/chart")).status_code == 404


async def test_pipeline_health_from_the_services_metrics(uid: str) -> None:
    # A registry of our own, shaped as the services' are, served over real HTTP.
    registry = CollectorRegistry()
    latency = Histogram("cityops_stream_latency_seconds", "x", buckets=(0.1, 0.5, 1.0, 5.0), registry=registry)
    lag = Gauge("cityops_stream_consumer_lag", "x", ["partition"], registry=registry)
    messages = Counter("cityops_gateway_messages_in", "x", registry=registry)
    lag.labels("0").set(7)
    lag.labels("1").set(5)
    for _ in range(100):
        latency.observe(0.05)  # before the first check: not in the quantiles of the second
    async with MetricsServer("127.0.0.1", 0, registry=registry) as server:
        url = f"http://127.0.0.1:{server.port}/metrics"
        now = [0.0]
        async with Pipeline(
            {"stream": url, "gateway": url, "gone": "http://127.0.0.1:9/metrics"}, clock=lambda: now[0]
        ) as p:
            first = await p.check()
            assert first["stream_lag"] == 12 and first["latency_p95_s"] is None
            assert first["services"]["gone"]["up"] is False and first["services"]["stream"]["up"] is True
            for v in [0.3] * 50 + [0.8] * 50:
                latency.observe(v)
            messages.inc(200)
            now[0] = 10.0
            second = await p.check()
    assert second["latency_p50_s"] == pytest.approx(0.5)
    assert second["latency_p95_s"] == pytest.approx(0.5 + 0.5 * 0.9)
    assert second["gateway_messages_per_s"] == pytest.approx(20.0)


async def test_a_restarted_service_gives_no_difference_across_its_restart() -> None:
    registry = CollectorRegistry()
    latency = Histogram("cityops_stream_latency_seconds", "x", buckets=(0.1, 1.0), registry=registry)
    started = Gauge("process_start_time_seconds", "x", registry=registry)
    started.set(1000)
    latency.observe(0.05)
    async with MetricsServer("127.0.0.1", 0, registry=registry) as server:
        url = f"http://127.0.0.1:{server.port}/metrics"
        async with Pipeline({"stream": url}) as p:
            await p.check()
            started.set(2000)  # a new process, whose counts happen to be above the old ones
            for _ in range(5):
                latency.observe(0.5)
            assert (await p.check())["latency_p50_s"] is None
            latency.observe(0.5)
            assert (await p.check())["latency_p50_s"] == pytest.approx(0.55)


def test_quantiles_follow_promql() -> None:
    buckets = [(0.1, 10.0), (1.0, 20.0), (float("inf"), 20.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.75, buckets) == pytest.approx(0.1 + 0.9 * 0.5)
    assert quantile(0.99, [(1.0, 0.0), (float("inf"), 5.0)]) == 1.0  # only +Inf: the top finite bound
    assert quantile(0.5, [(1.0, 0.0), (float("inf"), 0.0)]) is None
