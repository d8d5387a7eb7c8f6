"""The one MQTT adapter: an MQTT session as the gateway and the simulated hardware use it.

This is the only module that touches aiomqtt's private parts. It relies on two facts of
aiomqtt 2.x (< 3), which ``tests/cityops/core/test_mqtt.py`` checks against the installed
version and a real broker, so that an upgrade that changes them fails the tests, not the city:

- ``Client._client`` is the paho client. aiomqtt acknowledges a QoS 1 message as soon as it
  arrives; ``manual_ack_set(True)`` on the paho client before connecting leaves the PUBACK to
  us, and ``ack(mid, qos)`` sends it. The gateway acknowledges only after Kafka has what was
  made of a message, so a crash in between leaves the message with the broker (redelivered to
  the persistent session: at-least-once, never loss).
- ``Client._disconnected`` is a future that completes when the connection drops. aiomqtt's
  ``publish()`` waits for its acknowledgement until its timeout even when the connection is
  already gone; firmware notices the drop at once and starts buffering.

Errors are the core's (:mod:`cityops.core.errors`): :class:`BrokerUnavailable` (retriable)
when the broker cannot be reached or the connection drops, :class:`BrokerRefused` (not
retriable) when it refuses the client. No aiomqtt exception leaves this module.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiomqtt
from aiomqtt.exceptions import MqttConnectError

from cityops.core.aio import AsyncService
from cityops.core.errors import BrokerRefused, BrokerUnavailable

# CONNACK refusals after which connecting again cannot help until someone changes the
# credentials, the client id or the broker's configuration: MQTT 3.1.1 return codes 1, 2, 4, 5
# (3.2.2.3), which paho 2 reports as the MQTT 5 reason codes 0x84-0x87 (and 0x8C, bad auth method).
_REFUSALS = frozenset({1, 2, 4, 5, 0x84, 0x85, 0x86, 0x87, 0x8C})


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """Where and as whom to connect. ``clean_session=False`` keeps the broker's session (its
    subscriptions and queued QoS 1 messages) while the client is away."""

    host: str
    port: int
    username: str
    password: str = field(repr=False)
    client_id: str
    clean_session: bool = False
    keepalive_s: int = 60
    # Acknowledge received QoS 1 messages only through :meth:`MqttSession.ack`.
    manual_ack: bool = False


@dataclass(frozen=True, slots=True)
class Receipt:
    """What :meth:`MqttSession.ack` needs of a message, without holding on to its payload."""

    mid: int
    qos: int


@dataclass(frozen=True, slots=True)
class Inbound:
    """A received message."""

    topic: str
    payload: bytes
    receipt: Receipt


class MqttSession(AsyncService):
    """One connection to the broker: ``start()`` connects, ``stop()`` disconnects.

    A session that lost its connection stays lost: callers that reconnect (the simulator's
    links, the gateway) open a new session.
    """

    def __init__(self, config: MqttConfig) -> None:
        self.config = config
        self._client: aiomqtt.Client | None = None

    async def start(self) -> None:
        c = self.config
        client = aiomqtt.Client(
            c.host,
            c.port,
            username=c.username,
            password=c.password,
            identifier=c.client_id,
            clean_session=c.clean_session,
            keepalive=c.keepalive_s,
        )
        if c.manual_ack:
            client._client.manual_ack_set(True)
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as exc:
            raise _translate(exc, f"{c.host}:{c.port} as {c.username!r}") from exc
        self._client = client

    async def stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError):  # already gone: nothing left to close
                await client.__aexit__(None, None, None)

    @property
    def connected(self) -> bool:
        return self._client is not None and not self._client._disconnected.done()

    async def subscribe(self, topic_filter: str, *, qos: int = 1) -> None:
        try:
            await self._connection().subscribe(topic_filter, qos=qos)
        except aiomqtt.MqttError as exc:
            raise _translate(exc, f"subscribe {topic_filter}") from exc

    async def messages(self) -> AsyncIterator[Inbound]:
        """Received messages in arrival order, until the connection drops (BrokerUnavailable)."""
        try:
            async for message in self._connection().messages:
                payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
                yield Inbound(message.topic.value, payload, Receipt(message.mid, message.qos))
        except aiomqtt.MqttError as exc:
            raise _translate(exc, "receiving") from exc

    def ack(self, receipt: Receipt) -> None:
        """Acknowledge a message received with ``manual_ack`` (QoS 0 needs none)."""
        if receipt.qos > 0:
            self._connection()._client.ack(receipt.mid, receipt.qos)

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1) -> None:
        """Publish and wait for the broker's acknowledgement (QoS 1), or raise
        :class:`BrokerUnavailable` as soon as the connection drops."""
        client = self._connection()
        disconnected = client._disconnected
        publish = asyncio.ensure_future(client.publish(topic, payload, qos=qos))
        try:
            await asyncio.wait({publish, disconnected}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not publish.done():
                publish.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await publish
        if publish.cancelled():
            if disconnected.done() and not disconnected.cancelled():
                disconnected.exception()  # retrieved: no "never retrieved" warning
            raise BrokerUnavailable("connection lost while waiting for the broker's acknowledgement")
        try:
            publish.result()
        except aiomqtt.MqttError as exc:
            raise _translate(exc, f"publish {topic}") from exc

    def _connection(self) -> aiomqtt.Client:
        if self._client is None:
            raise BrokerUnavailable("not connected: start() first, or the session was stopped")
        return self._client


def _translate(exc: aiomqtt.MqttError, what: str) -> BrokerUnavailable | BrokerRefused:
    if isinstance(exc, MqttConnectError):
        code = getattr(exc.rc, "value", exc.rc)
        if isinstance(code, int) and code in _REFUSALS:
            return BrokerRefused(f"the broker refused {what}: {exc}", code=code)
    return BrokerUnavailable(f"MQTT broker unavailable ({what}): {exc}")
