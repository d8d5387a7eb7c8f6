"""The gateway rides out outages in-process: it reports the dependency down in /healthz,
reconnects with backoff and forwards what the broker kept for it, losing nothing."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest
from aiokafka.errors import KafkaTimeoutError

from cityops.core import contracts
from cityops.core.contracts import DeviceKind, Topics, mqtt_readings_topic
from cityops.core.health import OUTAGES
from cityops.core.mqtt import MqttConfig, MqttSession
from cityops.core.registry import Device, device_password
from cityops.devstack import Stack
from cityops.devstack.mosquitto import Mosquitto
from gateway import Gateway, GatewaySettings
from tests.gateway.conftest import fail_sends
from tests.helpers import all_up, dependency_down, device_client, eventually, free_port, read_topic

SECRET = "outage-secret"
GATEWAY = ("gw", "gw-secret")


def _on_private_broker(topics: Topics, broker: Mosquitto, *, client_id: str, metrics_port: int) -> GatewaySettings:
    return GatewaySettings(
        topic_prefix=topics.prefix,
        mqtt_port=broker.port,
        mqtt_user=GATEWAY[0],
        mqtt_password=GATEWAY[1],
        mqtt_client_id=client_id,
        metrics_port=metrics_port,
    )


def _body(seq: int) -> bytes:
    return json.dumps({"seq": seq, "ts": datetime.now(UTC).isoformat(), "metrics": {"pm25_ugm3": 10.0 + seq}}).encode()


async def _publish(broker: Mosquitto, device: Device, seqs: range) -> None:
    config = MqttConfig(
        broker.host, broker.port, device.device_id, device_password(SECRET, device.device_id), f"dev-{device.device_id}"
    )
    async with MqttSession(config) as session:
        for seq in seqs:
            await session.publish(mqtt_readings_topic(device.kind, device.device_id), _body(seq), qos=1)


@pytest.mark.fault
async def test_the_gateway_rides_out_a_broker_restart(
    stack: Stack, topics: Topics, broker: Mosquitto, uid: str
) -> None:
    device = Device(f"env-{uid}", DeviceKind.ENV_STATION, 52.0, 13.0, "d1")
    broker.write_credentials([device], fleet_secret=SECRET, gateway_user=GATEWAY[0], gateway_password=GATEWAY[1])
    broker.start()
    settings = _on_private_broker(topics, broker, client_id=f"gw-{uid}", metrics_port=0)
    outages = OUTAGES.labels("gateway", "mqtt")
    before = outages._value.get()
    async with Gateway(settings) as gw, asyncio.TaskGroup() as tasks:
        runner = tasks.create_task(gw.run())
        port = gw.metrics_port
        assert port is not None and await all_up(port)
        await _publish(broker, device, range(0, 5))
        await read_topic(stack.settings.kafka_bootstrap, topics.readings, expect=5)

        await asyncio.to_thread(broker.stop)
        await eventually(lambda: dependency_down(port, "mqtt"))
        assert not runner.done()
        await asyncio.to_thread(broker.start)
        await eventually(lambda: all_up(port))
        await _publish(broker, device, range(5, 10))
        await eventually(lambda: _seqs_seen(stack, topics, 10))
        assert not runner.done()
        assert outages._value.get() == before + 1
        runner.cancel()


async def _seqs_seen(stack: Stack, topics: Topics, n: int) -> bool:
    """Every sequence number below ``n`` is in Kafka. Messages whose acknowledgement the
    stopping broker never took come again (at-least-once; storage deduplicates them)."""
    values = await read_topic(stack.settings.kafka_bootstrap, topics.readings, expect=10**6, timeout=1.5)
    return sorted({contracts.decode_reading(v).seq for v in values}) == list(range(n))


@pytest.mark.fault
async def test_a_send_kafka_times_out_comes_back_through_the_broker_in_the_same_run(
    stack: Stack, topics: Topics, fleet: list[Device], uid: str
) -> None:
    settings = GatewaySettings(
        topic_prefix=topics.prefix, metrics_port=0, mqtt_client_id=f"gw-timeout-{uid}", mqtt_clean_session=False
    )
    env = next(d for d in fleet if d.kind == "env_station")
    outages = OUTAGES.labels("gateway", "kafka")
    before = outages._value.get()
    async with Gateway(settings) as gw, asyncio.TaskGroup() as tasks:
        # Only this producer fails: the gateway replaces it, as it does a producer whose broker died.
        fail_sends(gw, KafkaTimeoutError("injected: no leader within the request timeout"))
        runner = tasks.create_task(gw.run())
        async with device_client(stack, env) as client:
            await client.publish(mqtt_readings_topic(env.kind, env.device_id), _body(7), qos=1)
        values = await read_topic(stack.settings.kafka_bootstrap, topics.readings, expect=1, timeout=20)
        assert not runner.done()
        assert outages._value.get() == before + 1
        runner.cancel()
    async with Gateway(settings.model_copy(update={"mqtt_clean_session": True})):
        pass
    assert [contracts.decode_reading(v).seq for v in values] == [7]


@pytest.mark.fault
async def test_a_gateway_started_before_its_broker_waits_for_it(
    stack: Stack, topics: Topics, broker: Mosquitto, uid: str
) -> None:
    broker.write_credentials([], fleet_secret=SECRET, gateway_user=GATEWAY[0], gateway_password=GATEWAY[1])
    settings = _on_private_broker(topics, broker, client_id=f"gw-early-{uid}", metrics_port=free_port())
    gateway = Gateway(settings)
    async with asyncio.TaskGroup() as tasks:
        starting = tasks.create_task(gateway.start())
        try:
            await eventually(lambda: dependency_down(settings.metrics_port, "mqtt"))
            assert not starting.done()
            await asyncio.to_thread(broker.start)
            await asyncio.wait_for(starting, 30)
            assert await all_up(settings.metrics_port)
        finally:
            await gateway.stop()
