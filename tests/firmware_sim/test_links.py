"""Firmware behaviour against a real Mosquitto that is stopped and restarted under it.

The broker is a private instance (own port, own state) so that stopping it does not pull
the shared stack's broker from under other tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime
from random import Random

import aiomqtt
import pytest

from cityops.core import senml
from cityops.core.contracts import MQTT_READINGS_FILTER, DeviceKind, PayloadFormat, mqtt_readings_topic
from cityops.core.registry import Device, device_password
from cityops.devstack.mosquitto import Mosquitto
from firmware_sim import Scenario, SimSettings, Simulator, build_city
from firmware_sim.links import Link, LinkConfig, Outgoing, Stats
from firmware_sim.scenario import DeviceClass, Firmware
from tests.helpers import eventually, small_scenario

GATEWAY = ("gw", "gw-secret")


def _scenario(uid: str) -> Scenario:
    return small_scenario(
        uid,
        devices={
            DeviceKind.ENV_STATION: DeviceClass(count=1, interval_s=0.1, format=PayloadFormat.SENML_JSON),
            DeviceKind.LAMP_POLE: DeviceClass(count=1, interval_s=0.1, format=PayloadFormat.JSON),
        },
        firmware=Firmware(backoff_initial_s=0.2, backoff_max_s=1.0),
    )


@contextlib.asynccontextmanager
async def _collector(broker: Mosquitto, received: list[tuple[str, bytes, float]]) -> AsyncIterator[None]:
    """A gateway-like subscriber with a persistent session that reconnects after broker restarts."""

    async def listen() -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    broker.host,
                    broker.port,
                    username=GATEWAY[0],
                    password=GATEWAY[1],
                    identifier="collector",
                    clean_session=False,
                ) as client:
                    await client.subscribe(MQTT_READINGS_FILTER, qos=1)
                    async for message in client.messages:
                        assert isinstance(message.payload, bytes)
                        received.append((message.topic.value, message.payload, time.time()))
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)

    task = asyncio.create_task(listen())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _decode(topic: str, payload: bytes) -> tuple[str, int, float]:
    device = topic.split("/")[3]
    if payload.startswith(b"{"):
        body = json.loads(payload)
        return device, int(body["seq"]), datetime.fromisoformat(body["ts"]).timestamp()
    (first, *_) = senml.resolve(senml.loads_json(payload), now=0)
    return device, int(first.extensions["seq"]), first.time


@pytest.mark.fault
async def test_devices_buffer_while_the_broker_is_down_and_replay_with_original_timestamps(
    broker: Mosquitto, uid: str
) -> None:
    scenario = _scenario(uid)
    city = build_city(scenario)
    broker.write_credentials(city.devices, fleet_secret="s3cret", gateway_user=GATEWAY[0], gateway_password=GATEWAY[1])
    broker.start()
    settings = SimSettings(mqtt_port=broker.port, fleet_secret="s3cret", tick_s=0.05, drain_timeout_s=20)
    received: list[tuple[str, bytes, float]] = []
    async with _collector(broker, received), Simulator(settings, scenario, city=city) as sim:
        running = asyncio.create_task(sim.run(duration_s=7.0))
        await sim.wait_connected(timeout_s=10)
        await asyncio.sleep(1.5)
        await asyncio.to_thread(broker.stop)
        down_at = time.time()
        await eventually(lambda: _true(sim.stats.connected == 0 and sim.stats.buffered > 5), timeout=10)
        await asyncio.sleep(2.0)
        buffered_while_down = sim.stats.buffered
        up_at = time.time()
        await asyncio.to_thread(broker.start)
        stats = await running
        await eventually(lambda: _true(len(received) >= stats.acked), timeout=20)

    assert stats.dropped == 0 and stats.reconnects >= len(city.devices)
    assert buffered_while_down >= 2 * 2.0 / 0.1 * 0.8  # two devices, 10 readings/s each, for 2 s at least
    assert stats.acked == stats.sent
    by_device: dict[str, list[tuple[int, float, float]]] = {}
    for topic, payload, arrived in received:
        device, seq, ts = _decode(topic, payload)
        by_device.setdefault(device, []).append((seq, ts, arrived))
    assert set(by_device) == {d.device_id for d in city.devices}
    for readings in by_device.values():
        seqs = sorted({seq for seq, _, _ in readings})
        # Every reading arrived (some maybe twice, if an ack was lost), numbered without a
        # gap or a restart across the reconnect...
        assert seqs == list(range(len(seqs))) and len(seqs) >= 60  # 7 s at 10 readings/s
        # ...and those sampled while the broker was down arrived after it came back, carrying
        # the time they were sampled, 0.1 s apart, not the time they were sent.
        replayed = sorted((seq, ts, arrived) for seq, ts, arrived in readings if down_at < ts < up_at)
        assert len(replayed) >= 10 and all(arrived > up_at for _, _, arrived in replayed)
        gaps = [b[1] - a[1] for a, b in itertools.pairwise(replayed) if b[0] == a[0] + 1]
        assert gaps and all(abs(g - 0.1) < 1e-3 for g in gaps)


async def _true(value: bool) -> bool:
    return value


async def test_a_refused_device_retries_slowly_and_connects_once_its_credentials_are_accepted(
    broker: Mosquitto, uid: str
) -> None:
    device = Device(f"env-{uid}", DeviceKind.ENV_STATION, 52.0, 13.0, "d1")
    broker.write_credentials([], fleet_secret="s3cret", gateway_user=GATEWAY[0], gateway_password=GATEWAY[1])
    broker.start()
    stats = Stats()
    config = LinkConfig(broker.host, broker.port, backoff_initial_s=0.01, backoff_max_s=0.5)
    password = device_password("s3cret", device.device_id)
    link = Link(config, username=device.device_id, password=password, client_id=uid, stats=stats, rng=Random(1))
    async with link, asyncio.TaskGroup() as tasks:
        running = tasks.create_task(link.run())
        started = time.monotonic()
        await eventually(lambda: _true(stats.refused >= 3), timeout=20)
        # A refusal waits backoff_max_s (+-50 %), not the initial backoff: 3 take >= 0.5 s.
        assert time.monotonic() - started >= 0.5 and stats.connected == 0
        broker.write_credentials([device], fleet_secret="s3cret", gateway_user=GATEWAY[0], gateway_password=GATEWAY[1])
        broker.reload()
        await asyncio.wait_for(link.wait_connected(), timeout=20)
        link.submit(Outgoing(mqtt_readings_topic(device.kind, device.device_id), b"{}"))
        await eventually(lambda: _true(stats.acked == 1), timeout=10)
        running.cancel()


async def test_a_link_switched_off_goes_away_and_resumes_its_outbox_when_on(broker: Mosquitto, uid: str) -> None:
    device = Device(f"env-{uid}", DeviceKind.ENV_STATION, 52.0, 13.0, "d1")
    broker.write_credentials([device], fleet_secret="s3cret", gateway_user=GATEWAY[0], gateway_password=GATEWAY[1])
    broker.start()
    stats = Stats()
    config = LinkConfig(broker.host, broker.port, backoff_initial_s=0.01, backoff_max_s=0.5)
    password = device_password("s3cret", device.device_id)
    link = Link(config, username=device.device_id, password=password, client_id=uid, stats=stats, rng=Random(1))
    topic = mqtt_readings_topic(device.kind, device.device_id)
    async with link, asyncio.TaskGroup() as tasks:
        running = tasks.create_task(link.run())
        await asyncio.wait_for(link.wait_connected(), timeout=20)
        link.submit(Outgoing(topic, b"{}"))
        await eventually(lambda: _true(stats.acked == 1), timeout=10)
        link.power(False)
        await eventually(lambda: _true(not link.connected and stats.connected == 0), timeout=10)
        link.submit(Outgoing(topic, b"{}"))
        link.submit(Outgoing(topic, b"{}"))
        with pytest.raises(AssertionError):  # off means off: no reconnect, nothing published
            await eventually(lambda: _true(link.connected or stats.acked > 1), timeout=1.5)
        link.power(True)
        await eventually(lambda: _true(stats.acked == 3 and not link.outbox), timeout=20)
        running.cancel()
