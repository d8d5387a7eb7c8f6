"""End to end on the real stack: simulated devices -> Mosquitto -> gateway -> Kafka -> stream
-> PostgreSQL and alerts -> IOC -> a real WebSocket client."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from typing import Any

import aiomqtt
import httpx
import psycopg
import pytest
import websockets

from cityops.core import contracts, schema
from cityops.core.contracts import GroundTruth, Topics, mqtt_readings_topic
from cityops.core.registry import Device, device_password
from cityops.devstack import Stack
from firmware_sim import EventKind, Scheduled, SimSettings, Simulator
from gateway import Gateway, GatewaySettings
from ioc import ApiServer, IocSettings
from stream import StreamService, StreamSettings
from tests.helpers import count_rows, eventually, read_topic, small_scenario

PER_DEVICE = 60
SPIKE_SEQ = 45
INTERVAL_S = 0.02


@pytest.mark.slow
async def test_reading_to_websocket_alert(
    stack: Stack, topics: Topics, database: str, fleet: list[Device], uid: str
) -> None:
    common = {"topic_prefix": topics.prefix, "pg_dsn": database}
    pipe = next(d for d in fleet if d.kind == "pipe_node")
    # A spike in the pipe node's pressure at its 45th reading, after the detector's warm-up.
    spike = Scheduled(
        kind=EventKind.SPIKE, at_s=SPIKE_SEQ * INTERVAL_S, target=pipe.device_id, metric="pressure_kpa", magnitude=40
    )
    scenario = small_scenario(uid, interval_s=INTERVAL_S, incidents=[spike])
    sim = Simulator(SimSettings(**common, tick_s=0.005), scenario)

    async with (
        StreamService(StreamSettings(**common, group_id=f"stream-{uid}", metrics_port=0)) as stream,
        ApiServer(IocSettings(**common, group_id=f"ioc-{uid}", port=0)) as api,
        Gateway(
            GatewaySettings(**common, mqtt_client_id=f"gw-{uid}", mqtt_clean_session=True, metrics_port=0)
        ) as gateway,
        asyncio.TaskGroup() as tasks,
    ):
        services = [tasks.create_task(stream.run()), tasks.create_task(gateway.run())]
        async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
            await schema.upsert_devices(conn, fleet)

        received: list[tuple[float, dict[str, object]]] = []
        async with websockets.connect(f"ws://127.0.0.1:{api.port}/ws/wall?token={api.token()}") as ws:
            assert json.loads(await ws.recv())["type"] == "snapshot"

            async def listen() -> None:
                async for raw in ws:
                    event = json.loads(raw)
                    received.extend((time.time(), a) for a in event.get("alerts", []))

            listener = tasks.create_task(listen())
            async with sim:
                published = await sim.run(readings_per_device=PER_DEVICE)
                assert sim.truth is not None
                (truth,) = [t for t in sim.truth.events if t.kind == "spike"]
            # A malformed payload from an authenticated device goes to the dead-letter topic.
            async with aiomqtt.Client(
                stack.settings.mqtt_host,
                stack.settings.mqtt_port,
                username=pipe.device_id,
                password=device_password(stack.settings.fleet_secret.get_secret_value(), pipe.device_id),
            ) as c:
                await c.publish(mqtt_readings_topic(pipe.kind, pipe.device_id), b"\x00 not json", qos=1)

            assert published.acked == PER_DEVICE * len(fleet)
            await eventually(lambda: _spike_seen(received, truth), timeout=30)
            await eventually(lambda: _equals(count_rows(database), published.values_acked), timeout=30)
            listener.cancel()
            scraped = {
                name: _scrape(port)
                for name, port in (("gateway", gateway.metrics_port), ("stream", stream.metrics_port))
            }
            async with httpx.AsyncClient() as http:
                scraped["ioc"] = (await http.get(f"{api.url}/metrics")).text
        for task in services:
            task.cancel()

    assert await count_rows(database) == published.values_acked  # exactly: nothing lost, nothing doubled
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cur = await conn.execute("SELECT count(DISTINCT (device_id, seq)) FROM readings")
        assert (await cur.fetchone()) == (PER_DEVICE * len(fleet),)
    letters = [
        contracts.decode_dead_letter(v)
        for v in await read_topic(stack.settings.kafka_bootstrap, topics.dead_letter, expect=1)
    ]
    assert [(x.device_id, x.payload) for x in letters] == [(pipe.device_id, b"\x00 not json")]
    assert letters[0].reason.startswith("invalid payload")

    arrival, alert = next((t, a) for t, a in received if _is_spike(a, truth))
    latency_ms = (arrival - truth.start_us / 1e6) * 1000
    rows, messages = published.values_acked, published.acked
    print(f"\nsample-to-WebSocket latency: {latency_ms:.1f} ms (rows {rows}, messages {messages})")
    assert alert["value"] > alert["baseline"]  # type: ignore[operator]
    assert latency_ms < 30_000

    # Every service exports its counters, batch sizes, lag and latency histograms.
    gw, st, ioc = scraped["gateway"], scraped["stream"], scraped["ioc"]
    assert _sample(gw, "cityops_gateway_messages_in_total") >= published.acked + 1
    assert _sample(gw, "cityops_gateway_dead_letters_total") >= 1
    assert _sample(gw, "cityops_gateway_latency_seconds_count") >= published.acked
    assert 'cityops_gateway_sequence_events_total{event="next"}' in gw
    assert _sample(st, "cityops_stream_rows_stored_total") >= published.values_acked
    assert _sample(st, "cityops_stream_batch_messages_count") >= 1
    assert _sample(st, "cityops_stream_alerts_out_total") >= 1
    assert "cityops_stream_consumer_lag" in st and "cityops_stream_latency_seconds_bucket" in st
    assert _sample(ioc, "cityops_ioc_alerts_stored_total") >= 1
    assert _sample(ioc, "cityops_ioc_latency_seconds_count") >= 1


def _scrape(port: int | None) -> str:
    assert port is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def _sample(text: str, name: str) -> float:
    """Sum of a metric's samples (over labels) in Prometheus text format."""
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#") and line[len(name)] in " {"
    ]
    assert values, f"{name} not exported"
    return sum(values)


def _is_spike(alert: dict[str, Any], spike: GroundTruth) -> bool:
    return (
        alert["device_id"] in spike.device_ids
        and alert["metric"] in spike.metrics
        and spike.start_us <= alert["ts_us"] < spike.end_us
    )


async def _spike_seen(received: list[tuple[float, dict[str, object]]], spike: GroundTruth) -> bool:
    return any(_is_spike(e, spike) for _, e in received)


async def _equals(value: object, expected: int) -> bool:
    return await value == expected  # type: ignore[misc]
