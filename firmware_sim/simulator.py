"""The simulator: the engine's readings put on MQTT as field hardware would, with ground truth.

Two modes (the scenario's ``mode``):

* ``realistic``: every device keeps its own MQTT session with its own credentials, and its
  own offline buffer and sequence counter (:mod:`firmware_sim.links`).
* ``concentrator``: one session per concentrator publishes SenML packs for up to
  ``devices_per_concentrator`` devices, as street-lighting segment controllers and LoRaWAN
  network servers do; each reading still carries its device's name and sequence number.

The simulated clock runs at the scenario's ``speed`` from its ``start`` until it catches up
with real time, then in real time: ``start = "-6h"`` with ``speed = 600`` replays six hours
in 36 s and goes on live. Readings carry their simulated sample time.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cityops.core import log
from cityops.core.aio import AsyncService
from cityops.core.contracts import (
    DeviceKind,
    GroundTruth,
    PayloadFormat,
    TruthCategory,
    mqtt_concentrator_topic,
    mqtt_readings_topic,
    now_us,
    senml_records,
    to_datetime,
    to_us,
)
from cityops.core.registry import device_password
from firmware_sim import noise
from firmware_sim.engine import Batch, Simulation
from firmware_sim.layout import City, build_city
from firmware_sim.links import AckObserver, Link, LinkConfig, Outgoing, Stats
from firmware_sim.payloads import device_payload, pack_payload
from firmware_sim.scenario import PlatformFault, Scenario
from firmware_sim.settings import SimSettings
from firmware_sim.truth import TruthSink

_log = log.get("sim")

# Larger than any gateway's default limit (64 KiB).
OVERSIZED_BYTES = 70 * 1024


@dataclass
class _DeviceOut:
    device_id: str
    topic: str
    link: Link
    number: int  # position in the whole fleet: keys platform-fault draws
    held: Outgoing | None = None  # a reading held back to be sent out of order


class Simulator(AsyncService):
    def __init__(
        self,
        settings: SimSettings,
        scenario: Scenario,
        *,
        city: City | None = None,
        clock: Callable[[], int] = now_us,
        on_ack: AckObserver | None = None,
    ) -> None:
        """``on_ack`` sees every message the broker acknowledged, with the readings it held."""
        self.settings = settings
        self._on_ack = on_ack
        self.scenario = scenario
        self.city = city
        self._clock = clock
        self.stats = Stats()
        self.sim: Simulation | None = None
        self.truth: TruthSink | None = None
        self.links: list[Link] = []
        self._out: dict[DeviceKind, list[_DeviceOut]] = {}
        self._concentrator_of: dict[DeviceKind, np.ndarray] = {}
        self._wall_start = 0
        self._max_step_us = 1

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self.city is None:
            # Loading the water network imports WNTR (pandas, scipy): seconds, off the loop.
            self.city = await asyncio.to_thread(build_city, self.scenario)
        city = self.city
        self._wall_start = self._clock()
        t0 = to_us(self.scenario.start_time(to_datetime(self._wall_start)))
        self.sim = Simulation(self.scenario, city, t0)
        truth_file = self._truth_path()
        self.truth = TruthSink(
            truth_file,
            kafka_bootstrap=self.settings.kafka_bootstrap if self.scenario.truth.kafka else None,
            topic=self.settings.topics.ground_truth,
        )
        await self.truth.start()
        fw = self.scenario.firmware
        config = LinkConfig(
            self.settings.mqtt_host,
            self.settings.mqtt_port,
            qos=fw.qos,
            buffer_readings=fw.buffer_readings,
            backoff_initial_s=fw.backoff_initial_s,
            backoff_max_s=fw.backoff_max_s,
        )
        rng = random.Random(self.scenario.seed)
        secret = self.settings.fleet_secret.get_secret_value()
        self.stats.devices = len(city.devices)

        def new_link(account: str, client_id: str) -> int:
            """A session with ``account``'s credentials; returns its position in ``links``."""
            link = Link(
                config,
                username=account,
                password=device_password(secret, account),
                client_id=client_id,
                stats=self.stats,
                rng=random.Random(rng.random()),
                on_ack=self._on_ack,
            )
            self.links.append(link)
            return len(self.links) - 1

        if self.scenario.mode == "realistic":
            number = 0
            for kind, fleet in city.fleets.items():
                outs = []
                for device_id in fleet.ids:
                    link = self.links[new_link(device_id, f"dev-{device_id}")]
                    outs.append(_DeviceOut(device_id, mqtt_readings_topic(kind, device_id), link, number))
                    number += 1
                self._out[kind] = outs
        else:
            position: dict[str, int] = {}
            concentrator = {d.device_id: d.concentrator for d in city.devices}
            for kind, fleet in city.fleets.items():
                positions = []
                for device_id in fleet.ids:
                    cid = concentrator[device_id]
                    assert cid is not None, "a concentrator city is built with concentrated=True"
                    if cid not in position:
                        position[cid] = new_link(cid, f"conc-{cid}")
                    positions.append(position[cid])
                self._concentrator_of[kind] = np.array(positions, dtype=np.intp)
            if self.scenario.platform_rates:
                _log.warning("platform faults are injected in realistic mode only; ignored")
        self.stats.links = len(self.links)
        per_second = sum(len(f) / f.interval_s for f in city.fleets.values()) or 1.0
        self._max_step_us = max(1, int(self.settings.max_step_readings / per_second * 1e6))
        _log.info(
            "simulator ready",
            mode=self.scenario.mode,
            devices=len(city.devices),
            links=len(self.links),
            start=to_datetime(t0).isoformat(),
            truth=str(truth_file) if truth_file else None,
        )

    def _truth_path(self) -> Path | None:
        name = self.scenario.truth.file
        if not name:
            return None
        path = Path(name)
        return path if path.is_absolute() else self.settings.state_dir / path

    async def stop(self) -> None:
        for link in self.links:
            await link.stop()
        if self.truth is not None:
            await self.truth.stop()

    # --- running ---------------------------------------------------------------------------

    def sim_now(self, wall_us: int) -> int:
        """The simulated time at wall time ``wall_us``: ``speed`` times faster until it is now."""
        assert self.sim is not None
        if self.scenario.speed == 1.0:
            return min(wall_us, self.sim.t0 + (wall_us - self._wall_start))
        return min(wall_us, self.sim.t0 + int((wall_us - self._wall_start) * self.scenario.speed))

    async def wait_connected(self, timeout_s: float = 30.0) -> None:
        """Until every link has connected once (links connect when run() runs)."""
        async with asyncio.timeout(timeout_s):
            for link in self.links:
                await link.wait_connected()

    async def run(
        self,
        *,
        duration_s: float | None = None,
        until_us: int | None = None,
        readings_per_device: int | None = None,
        on_tick: Callable[[Stats], None] | None = None,
    ) -> Stats:
        """Publish until ``duration_s`` of wall time, simulated time ``until_us``, ``readings_per_device``
        samples of the slowest kind, or cancelled.

        Then wait (up to ``drain_timeout_s``) for buffered readings to be acknowledged.
        """
        assert self.sim is not None and self.city is not None, "start() first"
        if readings_per_device is not None:
            slowest = max(f.interval_s for f in self.city.fleets.values())
            until_us = self.sim.t0 + round(readings_per_device * slowest * 1e6) - 1
        if duration_s is None and self.scenario.duration_s > 0:
            duration_s = self.scenario.duration_s
        async with asyncio.TaskGroup() as tasks:
            link_tasks = [tasks.create_task(link.run()) for link in self.links]
            try:
                await self._loop(duration_s, until_us, on_tick)
                await self._drain()
            finally:
                for task in link_tasks:
                    task.cancel()
        return self.stats

    async def _loop(
        self, duration_s: float | None, until_us: int | None, on_tick: Callable[[Stats], None] | None
    ) -> None:
        assert self.sim is not None and self.truth is not None
        started = self._clock()
        tick = self.settings.tick_s
        while True:
            wall = self._clock()
            target = self.sim_now(wall)
            if until_us is not None:
                target = min(target, until_us)
            # When catching up faster than readings can be made, bound each step's work (and
            # memory): a step covers at most max_step_readings of the fleet's readings.
            target = min(target, self.sim.cursor + self._max_step_us)
            catching_up = target < wall - 1_000_000
            self._refresh_buffered()
            if not (catching_up and self.stats.buffered > self.settings.max_buffered):
                await self._emit(target)
            if on_tick is not None:
                on_tick(self.stats)
            if until_us is not None and self.sim.cursor >= until_us:
                return
            if duration_s is not None and wall - started >= duration_s * 1e6:
                return
            # Let the links publish; when catching up, only yield.
            await asyncio.sleep(0 if catching_up and self.stats.buffered < self.settings.max_buffered else tick)

    async def _emit(self, target: int) -> None:
        assert self.sim is not None and self.truth is not None
        advance = self.sim.advance(target)
        truths = list(advance.started)
        for batch in advance.batches:
            if self.scenario.mode == "realistic":
                truths += self._route_devices(batch)
            else:
                self._route_packs(batch)
        for t in truths:
            self.stats.injected[t.category.value] = self.stats.injected.get(t.category.value, 0) + 1
        await self.truth.emit(truths)

    async def _drain(self) -> None:
        for out in self._out.values():
            for dev in out:
                if dev.held is not None:
                    dev.link.submit(dev.held)
                    dev.held = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.drain_timeout_s
        while any(link.outbox for link in self.links) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        self._refresh_buffered()

    def _refresh_buffered(self) -> None:
        self.stats.buffered = sum(link.buffered for link in self.links)

    # --- one device, one session -----------------------------------------------------------

    def _route_devices(self, batch: Batch) -> list[GroundTruth]:
        fleet = batch.fleet
        kind = fleet.kind
        outs = self._out[kind]
        names = batch.metrics
        rows = np.round(batch.values, 4).tolist()
        seqs = batch.seq.tolist()
        stamps = batch.ts_us.tolist()
        faults = self._platform_draws(batch)
        truths: list[GroundTruth] = []
        for i, d in enumerate(batch.idx.tolist()):
            metrics = {n: v for n, v in zip(names, rows[i], strict=True) if v == v}  # NaN: no value
            if not metrics:
                continue
            dev = outs[d]
            seq, ts = seqs[i], stamps[i]
            payload = device_payload(fleet.format, kind, seq, ts, metrics)
            item = Outgoing(dev.topic, payload, 1, len(metrics), ((dev.device_id, seq),))
            self.stats.sent += 1
            chosen = [f for f, mask in faults.items() if mask[i]]
            if PlatformFault.OUT_OF_ORDER in chosen and dev.held is None:
                dev.held = item
            else:
                dev.link.submit(item)
                if dev.held is not None:
                    dev.link.submit(dev.held)
                    dev.held = None
            for fault in chosen:
                extra = self._fault_message(fault, dev, outs, item)
                if extra is not None:
                    dev.link.submit(extra)
                    self.stats.platform_faults += 1
                truths.append(
                    GroundTruth(
                        event_id=f"pf-{dev.device_id}-{seq}-{fault.value}",
                        kind=fault.value,
                        category=TruthCategory.PLATFORM,
                        device_ids=[dev.device_id],
                        metrics=[],
                        start_us=ts,
                        end_us=ts + 1,
                        note=f"seq {seq}",
                    )
                )
        return truths

    def _platform_draws(self, batch: Batch) -> dict[PlatformFault, np.ndarray]:
        rates = self.scenario.platform_rates
        if not rates:
            return {}
        outs = self._out[batch.fleet.kind]
        numbers = np.array([outs[d].number for d in batch.idx.tolist()], dtype=np.int64)
        p_per_reading = batch.fleet.interval_s / 3600.0
        return {
            fault: noise.uniform(self.scenario.seed, noise.stream_id("platform", fault), numbers, batch.seq)
            < rate * p_per_reading
            for fault, rate in rates.items()
            if rate > 0
        }

    @staticmethod
    def _fault_message(
        fault: PlatformFault, dev: _DeviceOut, outs: list[_DeviceOut], item: Outgoing
    ) -> Outgoing | None:
        match fault:
            case PlatformFault.MALFORMED:
                return Outgoing(dev.topic, item.payload[: max(1, len(item.payload) // 2)], 0)
            case PlatformFault.OVERSIZED:
                return Outgoing(dev.topic, b'{"pad": "' + b"x" * OVERSIZED_BYTES + b'"}', 0)
            case PlatformFault.DUPLICATE:
                return Outgoing(dev.topic, item.payload, 0)
            case PlatformFault.WRONG_TOPIC:
                other = outs[(outs.index(dev) + 1) % len(outs)]
                return Outgoing(other.topic, item.payload, 0) if other is not dev else None
            case PlatformFault.OUT_OF_ORDER:
                return None  # held back above
        return None

    # --- concentrators ---------------------------------------------------------------------

    def _route_packs(self, batch: Batch) -> None:
        fleet = batch.fleet
        conc = self._concentrator_of[fleet.kind][batch.idx]
        order = np.argsort(conc, kind="stable")  # per concentrator, still in time order
        names = batch.metrics
        rows = np.round(batch.values, 4)[order].tolist()
        idx = batch.idx[order].tolist()
        seqs = batch.seq[order].tolist()
        stamps = batch.ts_us[order].tolist()
        owners = conc[order].tolist()
        per_pack = self.scenario.concentrator.pack_readings
        fmt: PayloadFormat = self.scenario.concentrator.format
        records: list[dict[str, object]] = []
        keys: list[tuple[str, int]] = []
        values = 0
        for i, owner in enumerate(owners):
            metrics = {n: v for n, v in zip(names, rows[i], strict=True) if v == v}
            if metrics:
                device_id = fleet.ids[idx[i]]
                records += senml_records(fleet.kind, device_id, seqs[i], stamps[i], metrics)
                keys.append((device_id, seqs[i]))
                values += len(metrics)
            last = i + 1 == len(owners) or owners[i + 1] != owner
            if records and (len(keys) >= per_pack or last):
                link = self.links[owner]
                payload = pack_payload(fmt, records)
                topic = mqtt_concentrator_topic(link.username)
                link.submit(Outgoing(topic, payload, len(keys), values, tuple(keys)))
                self.stats.sent += len(keys)
                records, keys, values = [], [], 0
