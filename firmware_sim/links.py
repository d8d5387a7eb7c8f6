"""MQTT links as field hardware keeps them: one session, reconnecting, buffering while offline.

A link publishes what it is given in order, at QoS 1 by default, and forgets a message
only when the broker acknowledged it. While the broker is unreachable, messages wait in a
bounded outbox (the oldest are dropped beyond it, and counted) and are sent with their
original timestamps after reconnecting. Reconnects back off exponentially, with jitter so
that a fleet does not reconnect in lockstep after a broker restart.

Delivery: at-least-once from the link to the broker. A message whose acknowledgement was
lost in a disconnect is sent again; the gateway counts the repeat as a duplicate sequence
number and storage absorbs it. Messages dropped from a full outbox are lost (counted in
``Stats.dropped``).
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from cityops.core import log
from cityops.core.aio import AsyncService
from cityops.core.errors import BrokerError
from cityops.core.mqtt import MqttConfig, MqttSession

_log = log.get("sim.link")


@dataclass(frozen=True)
class Outgoing:
    topic: str
    payload: bytes
    readings: int = 1
    values: int = 0
    # (device id, sequence number) of each reading in the payload: what an ``on_ack`` observer
    # (the fault benchmark's ledger) counts as acknowledged.
    keys: tuple[tuple[str, int], ...] = ()


AckObserver = Callable[[Outgoing], None]


@dataclass
class Stats:
    """What the simulator did; shared by all links of a run."""

    devices: int = 0
    links: int = 0
    connected: int = 0
    sent: int = 0  # readings handed to the links
    acked: int = 0  # readings the broker acknowledged
    values_acked: int = 0  # metric values in them: rows the pipeline must store
    dropped: int = 0  # readings dropped from full outboxes
    reconnects: int = 0
    refused: int = 0  # connection attempts the broker refused (credentials, ACL)
    injected: dict[str, int] = field(default_factory=dict)  # ground-truth events by category
    platform_faults: int = 0  # extra bad messages sent (not counted in sent/acked)
    buffered: int = 0  # readings waiting in outboxes (refreshed by the simulator)


@dataclass(frozen=True)
class LinkConfig:
    host: str
    port: int
    qos: int = 1
    buffer_readings: int = 10_000
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0


class Link(AsyncService):
    def __init__(
        self,
        config: LinkConfig,
        *,
        username: str,
        password: str,
        client_id: str,
        stats: Stats,
        rng: random.Random,
        on_ack: AckObserver | None = None,
    ) -> None:
        self.config = config
        self.username = username
        self._password = password
        self._client_id = client_id
        self._stats = stats
        self._rng = rng
        self._on_ack = on_ack
        self.outbox: deque[Outgoing] = deque()
        self.buffered = 0  # readings in the outbox
        self.connected = False
        self._wake = asyncio.Event()
        self._up = asyncio.Event()
        self._powered = asyncio.Event()
        self._powered.set()

    async def start(self) -> None:
        """Nothing to open here: run() connects, and reconnects for as long as it runs."""

    async def stop(self) -> None:
        self.connected = False

    def submit(self, item: Outgoing) -> None:
        self.outbox.append(item)
        self.buffered += item.readings
        while self.buffered > self.config.buffer_readings and len(self.outbox) > 1:
            lost = self.outbox.popleft()
            self.buffered -= lost.readings
            self._stats.dropped += lost.readings
        self._wake.set()

    def power(self, on: bool) -> None:
        """Switch the hardware off (its session closes after the publish in flight, and it stays
        away) or on again. While off, what the simulator submits waits in the outbox, as far as
        it holds."""
        if on:
            self._powered.set()
        else:
            self._powered.clear()
        self._wake.set()

    async def wait_connected(self) -> None:
        await self._up.wait()

    async def run(self) -> None:
        """Connect, publish the outbox as it fills, reconnect on failure; until cancelled.

        A refused connection (revoked or wrong credentials) is retried too, as field hardware
        does, but only every ``backoff_max_s``: hammering the broker cannot make it accept."""
        attempt = 0
        refused = False
        session_config = MqttConfig(
            self.config.host,
            self.config.port,
            username=self.username,
            password=self._password,
            client_id=self._client_id,
            clean_session=False,
            keepalive_s=10,
        )
        while True:
            await self._powered.wait()
            try:
                async with MqttSession(session_config) as session:
                    if attempt:
                        self._stats.reconnects += 1
                    attempt = 0
                    refused = False
                    self._set_connected(True)
                    try:
                        await self._drain(session)
                    finally:
                        self._set_connected(False)
            except BrokerError as exc:
                if exc.retriable:
                    delay = min(self.config.backoff_max_s, self.config.backoff_initial_s * 2**attempt)
                else:
                    delay = self.config.backoff_max_s
                    self._stats.refused += 1
                delay *= 0.5 + self._rng.random()  # jitter: +-50 %
                # A refusal is worth a warning once per link, not once per retry of a fleet.
                report = _log.warning if not exc.retriable and not refused else _log.debug
                report("link down", client=self._client_id, error=str(exc), retry_in_s=round(delay, 2))
                refused = not exc.retriable
                attempt += 1
                await asyncio.sleep(delay)

    def _set_connected(self, up: bool) -> None:
        if up != self.connected:
            self._stats.connected += 1 if up else -1
        self.connected = up
        if up:
            self._up.set()
        else:
            self._up.clear()

    async def _drain(self, session: MqttSession) -> None:
        while True:
            while not self.outbox or not self._powered.is_set():
                if not self._powered.is_set():
                    return
                self._wake.clear()
                await self._wake.wait()
            item = self.outbox[0]
            # Fails as soon as the connection drops: firmware starts buffering at once.
            await session.publish(item.topic, item.payload, qos=self.config.qos)
            # The item may have been dropped from a full outbox while we waited for the ack.
            if self.outbox and self.outbox[0] is item:
                self.outbox.popleft()
                self.buffered -= item.readings
            self._stats.acked += item.readings
            self._stats.values_acked += item.values
            if self._on_ack is not None:
                self._on_ack(item)
