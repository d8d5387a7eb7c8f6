"""The MQTT adapter against a real Mosquitto, and the aiomqtt behaviour it relies on.

If an aiomqtt upgrade changes what the adapter assumes (manual acknowledgement through the
paho client, the disconnect future), these tests fail before the gateway loses a message.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator

import aiomqtt
import pytest

from cityops.core.contracts import MQTT_READINGS_FILTER, DeviceKind, mqtt_readings_topic
from cityops.core.errors import BrokerRefused, BrokerUnavailable
from cityops.core.mqtt import Inbound, MqttConfig, MqttSession
from cityops.core.registry import Device, device_password
from cityops.devstack.mosquitto import Mosquitto
from tests.helpers import free_port

SECRET = "adapter-secret"
READER = ("reader", "reader-secret")


@pytest.fixture
def device(broker: Mosquitto) -> Device:
    d = Device(f"pipe-{uuid.uuid4().hex[:8]}", DeviceKind.PIPE_NODE, 52.0, 13.0, "d1")
    broker.write_credentials([d], fleet_secret=SECRET, gateway_user=READER[0], gateway_password=READER[1])
    broker.start()
    return d


def _device_session(broker: Mosquitto, device: Device) -> MqttSession:
    password = device_password(SECRET, device.device_id)
    return MqttSession(MqttConfig(broker.host, broker.port, device.device_id, password, f"dev-{device.device_id}"))


def _reader(broker: Mosquitto, client_id: str, *, manual_ack: bool) -> MqttSession:
    return MqttSession(
        MqttConfig(broker.host, broker.port, *READER, client_id=client_id, clean_session=False, manual_ack=manual_ack)
    )


async def _send(broker: Mosquitto, device: Device, payload: bytes) -> None:
    async with _device_session(broker, device) as dev:
        await dev.publish(mqtt_readings_topic(device.kind, device.device_id), payload, qos=1)


async def _first(messages: AsyncIterator[Inbound], timeout: float = 10.0) -> Inbound:
    return await asyncio.wait_for(anext(messages), timeout)


async def test_the_installed_aiomqtt_has_the_private_parts_the_adapter_uses() -> None:
    client = aiomqtt.Client("127.0.0.1", 1)  # no I/O until entered
    assert callable(client._client.manual_ack_set) and callable(client._client.ack)
    assert isinstance(client._disconnected, asyncio.Future) and not client._disconnected.done()


async def test_a_message_is_redelivered_until_it_is_acknowledged(broker: Mosquitto, device: Device) -> None:
    topic = mqtt_readings_topic(device.kind, device.device_id)
    reader_id = f"reader-{uuid.uuid4().hex[:8]}"
    async with _reader(broker, reader_id, manual_ack=True) as reader:
        await reader.subscribe(MQTT_READINGS_FILTER, qos=1)
        await _send(broker, device, b"first")
        first = await _first(reader.messages())
        assert (first.topic, first.payload, first.receipt.qos) == (topic, b"first", 1)
    # Not acknowledged: the broker keeps it for the persistent session and sends it again.
    async with _reader(broker, reader_id, manual_ack=True) as reader:
        again = await _first(reader.messages())
        assert again.payload == b"first"
        reader.ack(again.receipt)
        await _send(broker, device, b"second")
        second = await _first(reader.messages())
        assert second.payload == b"second"
        reader.ack(second.receipt)
    # Both acknowledged: the next session's first message is a new one, not a redelivery.
    async with _reader(broker, reader_id, manual_ack=True) as reader:
        await _send(broker, device, b"third")
        third = await _first(reader.messages())
        assert third.payload == b"third"
        reader.ack(third.receipt)


async def test_without_manual_ack_aiomqtt_acknowledges_on_arrival(broker: Mosquitto, device: Device) -> None:
    """The reason for the adapter: aiomqtt's default would acknowledge before Kafka has it."""
    reader_id = f"auto-{uuid.uuid4().hex[:8]}"
    async with _reader(broker, reader_id, manual_ack=False) as reader:
        await reader.subscribe(MQTT_READINGS_FILTER, qos=1)
        await _send(broker, device, b"auto")
        assert (await _first(reader.messages())).payload == b"auto"
    async with _reader(broker, reader_id, manual_ack=False) as reader:
        await _send(broker, device, b"marker")
        assert (await _first(reader.messages())).payload == b"marker"  # "auto" was not redelivered


async def test_publish_fails_at_once_when_the_connection_drops_under_it(broker: Mosquitto, device: Device) -> None:
    topic = mqtt_readings_topic(device.kind, device.device_id)
    async with _device_session(broker, device) as dev:
        await dev.publish(topic, b"before", qos=1)
        pid = broker.daemon.pid()
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # the broker takes the message but never acknowledges it
        publish = asyncio.create_task(dev.publish(topic, b"in flight", qos=1))
        # Sent, and waiting for the acknowledgement that cannot come while the broker is stopped.
        done, _ = await asyncio.wait({publish}, timeout=0.5)
        assert not done
        os.kill(pid, signal.SIGKILL)  # ... and then the connection drops
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable) as caught:
            await publish
        # aiomqtt alone would wait for its 10 s publish timeout.
        assert time.monotonic() - started < 5.0
        assert caught.value.retriable and not dev.connected
        with pytest.raises(BrokerUnavailable):
            await dev.publish(topic, b"after", qos=1)


async def test_refused_credentials_are_final_and_an_absent_broker_is_retriable(
    broker: Mosquitto, device: Device
) -> None:
    wrong = MqttSession(MqttConfig(broker.host, broker.port, device.device_id, "wrong", "wrong-password"))
    with pytest.raises(BrokerRefused) as refused:
        await wrong.start()
    assert not refused.value.retriable and refused.value.code in (4, 5, 0x86, 0x87)
    absent = MqttSession(MqttConfig("127.0.0.1", free_port(), READER[0], READER[1], "nobody-home"))
    with pytest.raises(BrokerUnavailable) as unavailable:
        await absent.start()
    assert unavailable.value.retriable


async def _true(value: bool) -> bool:
    return value
