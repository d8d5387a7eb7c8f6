"""Simulated field devices publishing over authenticated MQTT, one connection per device, QoS 1."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiomqtt
import msgspec

from cityops import log
from cityops.contracts import DeviceKind, mqtt_readings_topic
from cityops.lifecycle import AsyncService
from cityops.registry import Device, device_password
from firmware_sim.settings import SimSettings
from firmware_sim.signals import SIGNALS, spike_value

_log = log.get("sim")


@dataclass(frozen=True)
class Spike:
    """Ground truth: ``metric`` of ``device_id`` jumps far off its signal at sequence ``seq``."""

    device_id: str
    metric: str
    seq: int


@dataclass
class Published:
    """What was sent (and acknowledged by the broker): per device, seq -> (device ts, publish time)."""

    sent: int = 0
    acked: int = 0
    # Metric values acknowledged by the broker: the rows the pipeline must store.
    rows: int = 0
    by_device: dict[str, dict[int, tuple[datetime, datetime]]] = field(default_factory=dict)
    spikes: list[Spike] = field(default_factory=list)


class _Payload(msgspec.Struct):
    seq: int
    ts: str
    metrics: dict[str, float]


_encoder = msgspec.json.Encoder()


class SimDevice:
    """One device: its own credentials, MQTT session and sequence counter."""

    def __init__(self, device: Device, settings: SimSettings, rng: random.Random) -> None:
        self.device = device
        self.topic = mqtt_readings_topic(device.kind, device.device_id)
        self.seq = 0
        self._rng = rng
        self._settings = settings
        self.client: aiomqtt.Client | None = None

    async def start(self, *, attempts: int = 6) -> None:
        """Connect, retrying with exponential backoff and jitter: a device provisioned a moment
        ago may be refused until the broker has reloaded its password file."""
        for attempt in range(attempts):
            try:
                await self._connect()
                return
            except aiomqtt.MqttError:
                await self.stop()
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(min(5.0, 0.2 * 2**attempt) * (0.5 + self._rng.random()))

    async def _connect(self) -> None:
        s = self._settings
        self.client = aiomqtt.Client(
            s.mqtt_host,
            s.mqtt_port,
            username=self.device.device_id,
            password=device_password(s.fleet_secret, self.device.device_id),
            identifier=f"dev-{self.device.device_id}",
            clean_session=False,
        )
        await self.client.__aenter__()

    async def stop(self) -> None:
        if self.client is not None:
            try:
                await self.client.__aexit__(None, None, None)
            except aiomqtt.MqttError:
                pass
            self.client = None

    def sample(self, moment: datetime, spike_metric: str | None = None) -> dict[str, float]:
        signals = SIGNALS[DeviceKind(self.device.kind)]
        values = {name: sig.value(moment, self._rng) for name, sig in signals.items()}
        if spike_metric is not None:
            values[spike_metric] = spike_value(signals[spike_metric], moment, self._rng)
        if self.device.kind == DeviceKind.LAMP_POLE:
            lit = moment.hour >= 17 or moment.hour < 7
            values["lamp_on"] = 1.0 if lit else 0.0
            values["dim_level"] = 100.0 if lit else 0.0
        return {k: round(v, 4) for k, v in values.items()}

    async def publish(self, moment: datetime, spike_metric: str | None = None) -> tuple[int, int]:
        """Publish the next reading; returns (seq, number of metrics) once the broker acknowledged it."""
        assert self.client is not None, "start() first"
        seq = self.seq
        self.seq += 1
        body = _Payload(
            seq=seq, ts=moment.isoformat(timespec="microseconds"), metrics=self.sample(moment, spike_metric)
        )
        await self.client.publish(self.topic, _encoder.encode(body), qos=1)
        return seq, len(body.metrics)


class Simulator(AsyncService):
    def __init__(
        self,
        settings: SimSettings,
        devices: list[Device],
        *,
        spikes: list[Spike] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        rng = random.Random(settings.seed)
        self.devices = [SimDevice(d, settings, random.Random(rng.random())) for d in devices]
        self._rng = rng
        self._planned = {(s.device_id, s.seq): s.metric for s in spikes or []}
        self._clock = clock
        self.published = Published()

    async def start(self) -> None:
        async with asyncio.TaskGroup() as tasks:  # one failed connection cancels the others
            for device in self.devices:
                tasks.create_task(device.start())
        _log.info("simulator connected", devices=len(self.devices))

    async def stop(self) -> None:
        await asyncio.gather(*(d.stop() for d in self.devices))

    async def run(
        self,
        *,
        count: int | None = None,
        duration_s: float | None = None,
        on_tick: Callable[[Published], None] | None = None,
    ) -> Published:
        """Every device publishes every ``interval_s`` until ``count`` readings each or ``duration_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + duration_s if duration_s else None
        spike_p = self.settings.spikes_per_device_hour * self.settings.interval_s / 3600

        async def device_loop(dev: SimDevice) -> None:
            log_ = self.published.by_device.setdefault(dev.device.device_id, {})
            next_at = loop.time()
            while (count is None or dev.seq < count) and (deadline is None or loop.time() < deadline):
                moment = self._clock()
                metric = self._planned.get((dev.device.device_id, dev.seq))
                if metric is None and spike_p > 0 and self._rng.random() < spike_p:
                    metric = self._rng.choice(sorted(SIGNALS[DeviceKind(dev.device.kind)]))
                if metric is not None:
                    self.published.spikes.append(Spike(dev.device.device_id, metric, dev.seq))
                self.published.sent += 1
                seq, n_metrics = await dev.publish(moment, metric)
                log_[seq] = (moment, self._clock())
                self.published.acked += 1
                self.published.rows += n_metrics
                if on_tick is not None:
                    on_tick(self.published)
                next_at += self.settings.interval_s
                await asyncio.sleep(max(0.0, next_at - loop.time()))

        await asyncio.gather(*(device_loop(d) for d in self.devices))
        return self.published
