"""The gateway between the real Mosquitto broker and the real Kafka broker."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import aiomqtt
import pytest
from aiokafka.errors import KafkaError

from cityops.core import contracts
from cityops.core.contracts import Topics, mqtt_readings_topic
from cityops.core.registry import Device
from cityops.devstack import Stack
from gateway import Gateway, GatewaySettings
from gateway.errors import GatewayError
from tests.gateway.conftest import RunningGateway, fail_sends
from tests.helpers import device_client, read_topic


@pytest.fixture
def gateway(running_gateway: RunningGateway) -> Gateway:
    return running_gateway.gateway


def _client(stack: Stack, device: Device) -> aiomqtt.Client:
    return device_client(stack, device)


def _body(seq: int, metrics: dict[str, float]) -> bytes:
    return json.dumps({"seq": seq, "ts": datetime.now(UTC).isoformat(), "metrics": metrics}).encode()


async def test_valid_partial_and_malformed_messages(
    stack: Stack, topics: Topics, fleet: list[Device], gateway: Gateway
) -> None:
    pipe = next(d for d in fleet if d.kind == "pipe_node")
    topic = mqtt_readings_topic(pipe.kind, pipe.device_id)
    async with _client(stack, pipe) as client:
        await client.publish(topic, _body(0, {"pressure_kpa": 410.0, "flow_m3h": 80.0}), qos=1)
        await client.publish(topic, b'{"seq": 1, "ts": "yesterday"', qos=1)  # malformed
        await client.publish(topic, _body(2, {"pressure_kpa": 411.0, "flow_m3h": 1e9}), qos=1)  # partial

    readings = [
        contracts.decode_reading(v) for v in await read_topic(stack.settings.kafka_bootstrap, topics.readings, expect=2)
    ]
    assert [(r.seq, r.metrics) for r in sorted(readings, key=lambda r: r.seq)] == [
        (0, {"pressure_kpa": 410.0, "flow_m3h": 80.0}),
        (2, {"pressure_kpa": 411.0}),
    ]
    assert all(r.device_id == pipe.device_id and r.kind == "pipe_node" for r in readings)

    letters = [
        contracts.decode_dead_letter(v)
        for v in await read_topic(stack.settings.kafka_bootstrap, topics.dead_letter, expect=2)
    ]
    reasons = sorted(letter.reason for letter in letters)
    assert len(letters) == 2
    assert reasons[0].startswith("invalid payload: ")
    assert reasons[1].startswith("rejected: flow_m3h")
    assert all(letter.device_id == pipe.device_id for letter in letters)
    assert b'"yesterday"' in next(x.payload for x in letters if x.reason.startswith("invalid"))


async def test_broker_refuses_a_device_on_another_devices_topic(
    stack: Stack, topics: Topics, fleet: list[Device], gateway: Gateway
) -> None:
    intruder, victim = fleet[0], fleet[1]
    async with _client(stack, intruder) as client:
        # MQTT 3.1.1 has no negative PUBACK: the broker acknowledges and discards.
        await client.publish(mqtt_readings_topic(victim.kind, victim.device_id), _body(0, {"power_w": 100.0}), qos=1)
        await client.publish(
            mqtt_readings_topic(intruder.kind, intruder.device_id), _body(0, {"power_w": 101.0}), qos=1
        )
    readings = [
        contracts.decode_reading(v)
        for v in await read_topic(stack.settings.kafka_bootstrap, topics.readings, expect=2, timeout=5)
    ]
    assert [(r.device_id, r.metrics) for r in readings] == [(intruder.device_id, {"power_w": 101.0})]


async def test_wrong_password_is_refused(stack: Stack, fleet: list[Device]) -> None:
    client = aiomqtt.Client(
        stack.settings.mqtt_host, stack.settings.mqtt_port, username=fleet[0].device_id, password="not-the-password"
    )
    with pytest.raises(aiomqtt.MqttError):
        async with client:
            pass


@pytest.mark.fault
async def test_messages_published_while_the_gateway_is_down_are_delivered_after_restart(
    stack: Stack, topics: Topics, fleet: list[Device], uid: str
) -> None:
    settings = GatewaySettings(
        topic_prefix=topics.prefix, metrics_port=0, mqtt_client_id=f"gw-persist-{uid}", mqtt_clean_session=False
    )
    env = next(d for d in fleet if d.kind == "env_station")
    topic = mqtt_readings_topic(env.kind, env.device_id)
    async with Gateway(settings):
        pass  # registers the persistent session and its subscription, then goes away
    async with _client(stack, env) as client:
        for seq in range(5):
            await client.publish(topic, _body(seq, {"pm25_ugm3": 10.0 + seq}), qos=1)
    async with Gateway(settings) as gw, asyncio.TaskGroup() as tasks:
        runner = tasks.create_task(gw.run())
        values = await read_topic(stack.settings.kafka_bootstrap, topics.readings, expect=5)
        runner.cancel()
    # Clean up the persistent session so the broker stops queueing for it.
    async with Gateway(settings.model_copy(update={"mqtt_clean_session": True})):
        pass
    assert sorted(contracts.decode_reading(v).seq for v in values) == [0, 1, 2, 3, 4]


@pytest.mark.fault
async def test_a_message_kafka_did_not_take_is_not_acknowledged_and_comes_back(
    stack: Stack, topics: Topics, fleet: list[Device], uid: str
) -> None:
    settings = GatewaySettings(
        topic_prefix=topics.prefix, metrics_port=-1, mqtt_client_id=f"gw-nack-{uid}", mqtt_clean_session=False
    )
    env = next(d for d in fleet if d.kind == "env_station")
    async with Gateway(settings) as gw:
        fail_sends(gw, KafkaError("injected: Kafka refused the batch"))
        async with _client(stack, env) as client:
            await client.publish(mqtt_readings_topic(env.kind, env.device_id), _body(7, {"pm25_ugm3": 12.0}), qos=1)
        with pytest.raises(GatewayError, match="Kafka did not accept"):
            await asyncio.wait_for(gw.run(), 20)
    # The broker still holds the unacknowledged message for the session and redelivers it.
    async with Gateway(settings) as gw, asyncio.TaskGroup() as tasks:
        runner = tasks.create_task(gw.run())
        values = await read_topic(stack.settings.kafka_bootstrap, topics.readings, expect=1, timeout=15)
        runner.cancel()
    async with Gateway(settings.model_copy(update={"mqtt_clean_session": True})):
        pass
    assert [contracts.decode_reading(v).seq for v in values] == [7]
