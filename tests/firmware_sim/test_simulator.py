"""The simulator against the real stack: Mosquitto, the gateway, Kafka."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from cityops.core import contracts
from cityops.core.contracts import DeviceKind, PayloadFormat, Topics, TruthCategory
from cityops.core.registry import Device
from cityops.devstack import Stack
from firmware_sim import City, PlatformFault, Scenario, SimSettings, Simulator, build_city
from firmware_sim.scenario import Concentrator, DeviceClass, Truth
from firmware_sim.truth import read_file
from gateway import Gateway, GatewaySettings
from tests.helpers import read_topic, small_scenario


@pytest.fixture
def register(stack: Stack) -> Iterator[Callable[[Scenario], City]]:
    """Register a scenario's city with the broker (devices or their concentrators); revoke afterwards."""
    registered: list[Device] = []

    def _register(scenario: Scenario) -> City:
        city = build_city(scenario)
        stack.register(city.devices)
        registered.extend(city.devices)
        return city

    yield _register
    stack.unregister([d.device_id for d in registered])


@pytest.fixture
async def gateway(stack: Stack, topics: Topics, uid: str) -> AsyncIterator[Gateway]:
    settings = GatewaySettings(
        topic_prefix=topics.prefix, metrics_port=-1, mqtt_client_id=f"gw-{uid}", mqtt_clean_session=True
    )
    async with Gateway(settings) as gw, asyncio.TaskGroup() as tasks:
        runner = tasks.create_task(gw.run())
        yield gw
        runner.cancel()


@pytest.mark.slow
async def test_concentrators_publish_for_many_devices_and_the_gateway_takes_every_reading(
    stack: Stack, topics: Topics, gateway: Gateway, register: Callable[[Scenario], City], uid: str
) -> None:
    scenario = small_scenario(
        uid,
        mode="concentrator",
        # Ten minutes of history replayed fast, then live: readings carry their sample times.
        start="-10m",
        speed=200,
        devices={
            DeviceKind.LAMP_POLE: DeviceClass(count=120, interval_s=5),
            DeviceKind.ENV_STATION: DeviceClass(count=30, interval_s=5),
        },
        concentrator=Concentrator(devices_per_concentrator=50, pack_readings=40, format=PayloadFormat.SENML_CBOR),
    )
    city = register(scenario)
    assert {d.concentrator for d in city.devices} == {f"t{uid}-conc-lamp-{i:03d}" for i in (1, 2, 3)} | {
        f"t{uid}-conc-env-001"
    }
    acked: list[tuple[str, int]] = []
    async with Simulator(
        SimSettings(topic_prefix=topics.prefix), scenario, city=city, on_ack=lambda item: acked.extend(item.keys)
    ) as sim:
        assert sim.sim is not None
        stats = await sim.run(until_us=sim.sim.t0 + 9 * 60 * 1_000_000)
    assert stats.links == 4 and stats.acked == stats.sent == 150 * 9 * 12  # 9 min, one reading per 5 s
    readings = [
        contracts.decode_reading(v)
        for v in await read_topic(stack.settings.kafka_bootstrap, topics.readings, expect=stats.acked, timeout=60)
    ]
    assert len({(r.device_id, r.seq) for r in readings}) == stats.acked
    # The acknowledgement observer names exactly the readings that reached the gateway.
    assert len(acked) == len(set(acked)) == stats.acked
    assert set(acked) == {(r.device_id, r.seq) for r in readings}
    assert sum(len(r.metrics) for r in readings) == stats.values_acked
    assert {r.kind for r in readings} == {"lamp_pole", "env_station"}
    lamp = next(r for r in readings if r.kind == "lamp_pole")
    assert set(lamp.metrics) == set(contracts.METRICS[DeviceKind.LAMP_POLE])


@pytest.mark.slow
async def test_every_format_and_every_platform_fault_through_the_gateway(
    stack: Stack,
    topics: Topics,
    gateway: Gateway,
    register: Callable[[Scenario], City],
    uid: str,
    tmp_path: Path,
) -> None:
    truth_file = tmp_path / "truth.jsonl"
    scenario = small_scenario(
        uid,
        start="-5m",
        speed=100,
        devices={
            DeviceKind.LAMP_POLE: DeviceClass(count=3, interval_s=2, format=PayloadFormat.JSON),
            DeviceKind.PIPE_NODE: DeviceClass(count=3, interval_s=2, format=PayloadFormat.SENML_CBOR),
            DeviceKind.DRAINAGE: DeviceClass(count=3, interval_s=2, format=PayloadFormat.SENML_JSON),
        },
        platform_rates={fault: 60.0 for fault in PlatformFault},  # per device-hour: ~3 % of readings each
        truth=Truth(file=str(truth_file), kafka=True),
    )
    register(scenario)
    async with Simulator(SimSettings(topic_prefix=topics.prefix), scenario) as sim:
        assert sim.sim is not None
        stats = await sim.run(until_us=sim.sim.t0 + 5 * 60 * 1_000_000)
        assert sim.truth is not None
        truths = list(sim.truth.events)

    injected = Counter(t.kind for t in truths if t.category is TruthCategory.PLATFORM)
    assert set(injected) == {f.value for f in PlatformFault}, injected
    assert stats.acked == stats.sent == 9 * 150
    # Everything valid arrived; duplicates arrive twice, copies on another device's topic never
    # (the broker's ACL drops them).
    readings = [
        contracts.decode_reading(v)
        for v in await read_topic(
            stack.settings.kafka_bootstrap, topics.readings, expect=stats.acked + injected["duplicate"], timeout=60
        )
    ]
    assert len(readings) == stats.acked + injected["duplicate"]
    assert len({(r.device_id, r.seq) for r in readings}) == stats.acked
    # Pressure went out in Pa and flow in m3/s (SenML units) and came back in kPa and m3/h.
    pressure = [r.metrics["pressure_kpa"] for r in readings if r.kind == "pipe_node"]
    assert 10 < sorted(pressure)[len(pressure) // 2] < 1000  # in Pa it would be 1000x
    # Malformed and oversized messages were dead-lettered, each with its reason.
    bad = injected["malformed"] + injected["oversized"]
    letters = [
        contracts.decode_dead_letter(v)
        for v in await read_topic(stack.settings.kafka_bootstrap, topics.dead_letter, expect=bad, timeout=60)
    ]
    assert len(letters) == bad
    assert sum("exceeds" in x.reason for x in letters) == injected["oversized"]
    # The ground truth went to the file and to the truth topic, identically.
    assert read_file(truth_file) == truths
    on_kafka = [
        contracts.decode_ground_truth(v)
        for v in await read_topic(stack.settings.kafka_bootstrap, topics.ground_truth, expect=len(truths))
    ]
    assert sorted(t.event_id for t in on_kafka) == sorted(t.event_id for t in truths)
