"""The IOC API on the real database and alerts topic."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
import websockets

from cityops.core import contracts, schema
from cityops.core.contracts import Alert, Topics
from cityops.core.kafka import make_producer
from cityops.core.registry import Device
from cityops.devstack import Stack
from ioc import ApiServer
from ioc.errors import IocError
from tests import helpers
from tests.helpers import eventually
from tests.ioc.conftest import ioc_settings, token

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


async def _viewer(api: ApiServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=api.url, headers={"Authorization": f"Bearer {await token(api, 'viewer')}"})


def make_alert(device: str, seq: int) -> Alert:
    return helpers.make_alert(device, contracts.to_us(T0 + timedelta(seconds=seq)), seq)


async def test_alerts_are_stored_once_and_pushed_once(stack: Stack, topics: Topics, api: ApiServer) -> None:
    alert = make_alert("pipe-9", 3)
    async with websockets.connect(f"ws://127.0.0.1:{api.port}/ws/wall?token={await token(api, 'viewer')}") as ws:
        assert json.loads(await ws.recv())["type"] == "snapshot"
        producer = make_producer(stack.settings.kafka_bootstrap, client_id="test")
        await producer.start()
        try:
            for _ in range(2):  # a replayed alert has the same id
                await producer.send_and_wait(topics.alerts, contracts.encode(alert), key=b"pipe-9")
            await producer.send_and_wait(topics.alerts, b"\xc1 garbage", key=b"x")
            second = make_alert("pipe-9", 4)
            await producer.send_and_wait(topics.alerts, contracts.encode(second), key=b"pipe-9")
        finally:
            await producer.stop()
        pushed: list[dict[str, object]] = []
        ids: list[int] = []
        while len(pushed) < 2:  # in one batch or two, as Kafka delivers them
            event = json.loads(await asyncio.wait_for(ws.recv(), 20))
            assert event["type"] == "alerts"
            pushed += event["alerts"]
            ids.append(event["id"])
        assert [p["alert_id"] for p in pushed] == [alert.alert_id, second.alert_id]
        # pipe-9 is not in the registry: shown, but no incident (nobody to send, nowhere to go).
        assert [p["incident_id"] for p in pushed] == [None, None]
        assert pushed[0]["ts"] == T0.replace(second=3).isoformat()
        assert ids == sorted(set(ids))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 1.0)  # the duplicate was not pushed

    async with await _viewer(api) as http:
        body = (await http.get("/alerts")).json()
        assert [a["alert_id"] for a in body] == [second.alert_id, alert.alert_id]  # newest first
        assert body[0]["value"] == 510.0 and body[0]["window_size"] == 60 and body[0]["detectors"] == ["ewma", "robust"]
        only_first = (await http.get("/alerts", params={"since": "2026-11-21T10:00:04Z"})).json()
        assert [a["seq"] for a in only_first] == [4]


async def test_devices_and_readings(api: ApiServer, database: str, fleet: list[Device]) -> None:
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await schema.upsert_devices(conn, fleet)
        pipe = next(d for d in fleet if d.kind == "pipe_node")
        await schema.ensure_partitions(conn, [T0.date()])
        for i in range(5):
            ts = T0 + timedelta(minutes=i)
            await conn.execute(
                "INSERT INTO readings (ts, device_id, metric, value, seq, gateway_at) VALUES (%s, %s, %s, %s, %s, %s)",
                (ts, pipe.device_id, "pressure_kpa", 400.0 + i, i, ts),
            )
    async with await _viewer(api) as http:
        devices = (await http.get("/devices")).json()
        assert {d["device_id"] for d in devices} == {d.device_id for d in fleet}
        got = next(d for d in devices if d["device_id"] == pipe.device_id)
        assert (got["lat"], got["lon"], got["district"]) == pytest.approx((pipe.lat, pipe.lon, pipe.district))
        assert got["attrs"] == pipe.attrs
        lamps = (await http.get("/devices", params={"kind": "lamp_pole"})).json()
        assert lamps and all(d["kind"] == "lamp_pole" for d in lamps)

        params = {
            "device_id": pipe.device_id,
            "metric": "pressure_kpa",
            "start": "2026-11-21T10:01:00Z",
            "end": "2026-11-21T10:04:00Z",
        }
        resp = await http.get("/readings", params=params)
        assert resp.status_code == 200, resp.text
        readings = resp.json()
        assert [r["value"] for r in readings] == [401.0, 402.0, 403.0]
        assert (await http.get("/readings", params={**params, "limit": 2})).json()[-1]["seq"] == 2


@pytest.mark.parametrize(
    ("path", "params", "status", "detail"),
    [
        (
            "/readings",
            {"device_id": "d", "metric": "m", "start": "2026-11-21T10:00:00", "end": "2026-11-21T11:00:00Z"},
            400,
            "timezone",
        ),
        (
            "/readings",
            {"device_id": "d", "metric": "m", "start": "2026-11-21T11:00:00Z", "end": "2026-11-21T10:00:00Z"},
            400,
            "end must be after start",
        ),
        (
            "/readings",
            {
                "device_id": "d",
                "metric": "m",
                "start": "2026-11-21T10:00:00Z",
                "end": "2026-11-21T11:00:00Z",
                "limit": 501,
            },
            400,
            "at most 500",
        ),
        ("/readings", {"device_id": "d"}, 422, "metric"),
        (
            "/readings",
            {"device_id": "d", "metric": "m", "start": "tuesday", "end": "2026-11-21T11:00:00Z"},
            422,
            "start",
        ),
        ("/alerts", {"limit": 0}, 422, "limit"),
        ("/alerts", {"since": "2026-11-21T10:00:00"}, 400, "timezone"),
    ],
)
async def test_bad_requests_get_4xx_with_a_message(
    api: ApiServer, path: str, params: dict[str, object], status: int, detail: str
) -> None:
    async with await _viewer(api) as http:
        resp = await http.get(path, params=params)
    assert resp.status_code == status
    assert detail in json.dumps(resp.json())


async def test_metrics_and_health(api: ApiServer) -> None:
    async with httpx.AsyncClient(base_url=api.url, follow_redirects=True) as http:
        health = (await http.get("/healthz")).json()
        assert health["status"] == "ok" and health["centre"] == "running"
        text = (await http.get("/metrics")).text
        assert "cityops_ioc_alerts_in_total" in text and "cityops_ioc_latency_seconds_bucket" in text
        page = await http.get("/")
        assert page.status_code == 200 and "/wall/wall.js" in page.text
        # The page's scripts and styles, and the libraries it uses, come from the IOC itself.
        for asset in (
            "/wall/wall.js",
            "/wall/wall.css",
            "/vendor/leaflet/leaflet.js",
            "/vendor/uplot/uPlot.iife.min.js",
        ):
            assert (await http.get(asset)).status_code == 200, asset
        assert "/ws/wall" in (await http.get("/wall/wall.js")).text


async def test_websocket_clients_that_leave_do_not_linger(api: ApiServer) -> None:
    viewer = await token(api, "viewer")
    for _ in range(3):
        async with websockets.connect(f"ws://127.0.0.1:{api.port}/ws/wall?token={viewer}") as ws:
            await ws.recv()
    async with httpx.AsyncClient(base_url=api.url) as http:
        await eventually(lambda: _ws_clients(http, 0), timeout=5)


async def _ws_clients(http: httpx.AsyncClient, n: int) -> bool:
    return bool((await http.get("/healthz")).json()["ws_clients"] == n)


@pytest.mark.fault
async def test_a_failing_alert_feed_is_reported_and_stops_the_server(
    stack: Stack, topics: Topics, database: str, uid: str
) -> None:
    async with ApiServer(ioc_settings(topics, database, uid)) as server:
        async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
            await conn.execute("DROP TABLE alerts")  # the feed's next insert fails
        producer = make_producer(stack.settings.kafka_bootstrap, client_id="test")
        await producer.start()
        try:
            await producer.send_and_wait(topics.alerts, contracts.encode(make_alert("pipe-1", 1)), key=b"pipe-1")
        finally:
            await producer.stop()
        async with httpx.AsyncClient(base_url=server.url) as http:
            await eventually(lambda: _status(http, "/healthz", 503), timeout=20)
            body = (await http.get("/healthz")).json()
        assert body["status"] == "failing" and "alerts" in body["centre"]
        with pytest.raises(IocError, match="operations centre failed"):
            await asyncio.wait_for(server.wait(), 20)


async def _status(http: httpx.AsyncClient, path: str, status: int) -> bool:
    return (await http.get(path)).status_code == status
