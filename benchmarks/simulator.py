"""Publish rate of the simulated device fleet on this machine: concentrator packs (SenML JSON and
SenML CBOR) and one MQTT session per device, side by side in one run.

* Concentrator mode: concentrators publish SenML packs of ``--pack`` readings for ``--devices``
  lamp poles (one MQTT session per ``--per-concentrator`` devices). The scenario starts a day in
  the past, so the simulator catches up, generating and publishing flat out, held back only by
  its backpressure (``--max-buffered`` readings waiting in the outboxes), ``--chunk`` readings per
  loop iteration (see :class:`PacedClock`). Measured: readings per second that the broker
  acknowledged (QoS 1), and the process's CPU seconds per wall second, which shows that the
  simulator (single-threaded asyncio) runs on one core.
* Realistic mode: ``--realistic-devices`` devices, each with its own MQTT session, report every
  ``--interval`` seconds in real time. Measured: acknowledged readings per second against the
  target, the CPU fraction used, and from it the devices one core could run at that rate.

The benchmark starts its own Mosquitto (the project's configuration, a free port, a temporary
state directory) rather than using the shared stack's broker, whose gateway keeps a persistent
session that would queue every benchmark message. Nobody subscribes, so the broker only
acknowledges and discards: the figures measure the simulator. The broker's own CPU use is
printed too, since it shares the machine. Needs the Mosquitto binary that `cityops stack up`
installs.

    python -m benchmarks.simulator [--devices 10000] [--per-concentrator 10000] [--pack 200] [--seconds 15]
                                   [--realistic-devices 1000] [--interval 1.0] [--realistic-seconds 15]
                                   [--warmup 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rich.console import Console
from rich.status import Status

from cityops.core import log
from cityops.core.contracts import DeviceKind, PayloadFormat, now_us
from cityops.core.registry import Device
from cityops.devstack.mosquitto import Mosquitto
from firmware_sim import Scenario, SimSettings, Simulator, Stats, build_city
from firmware_sim.layout import City
from firmware_sim.links import Link
from firmware_sim.scenario import CityConfig, Concentrator, DeviceClass, Firmware, Truth

console = Console(stderr=True)

PackFormat = Literal[PayloadFormat.SENML_JSON, PayloadFormat.SENML_CBOR]
FORMATS: tuple[PackFormat, ...] = (PayloadFormat.SENML_JSON, PayloadFormat.SENML_CBOR)
# The project's Mosquitto configuration (max_packet_size) and a lamp pole's reading in a SenML JSON pack.
MAX_PACKET_BYTES = 262_144
LAMP_READING_BYTES = 420


@dataclass
class Sample:
    wall: float
    cpu: float
    broker_cpu: float
    acked: int
    values: int
    connected: int


@dataclass
class Window:
    """What happened between two samples, after the warm-up."""

    seconds: float
    readings_per_s: float
    values_per_s: float
    cpu: float  # process CPU seconds per wall second
    broker_cpu: float
    connected: int  # sessions up at the end
    stats: Stats

    @classmethod
    def between(cls, a: Sample, b: Sample, stats: Stats) -> Window:
        dt = b.wall - a.wall
        return cls(
            dt,
            (b.acked - a.acked) / dt,
            (b.values - a.values) / dt,
            (b.cpu - a.cpu) / dt,
            (b.broker_cpu - a.broker_cpu) / dt,
            b.connected,
            stats,
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _process_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) of another process so far; 0 if it is gone."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    # After the command: state is field 3 of stat(5), utime and stime are 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def private_broker(devices: list[Device], settings: SimSettings) -> Iterator[Mosquitto]:
    """A Mosquitto of our own, with accounts for ``devices`` (or their concentrators)."""
    state = Path(tempfile.mkdtemp(prefix="cityops-bench-broker-"))
    state.chmod(0o755)  # as root, the broker drops to the mosquitto user
    broker = Mosquitto(state, "127.0.0.1", _free_port())
    try:
        broker.write_credentials(
            devices, fleet_secret=settings.fleet_secret.get_secret_value(), gateway_user="gw", gateway_password="gw"
        )
        broker.start()
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(state, ignore_errors=True)


class PacedClock:
    """The simulator's wall clock in concentrator mode: it starts at real time and advances
    ``step_us`` each time it is read, except while the links' outboxes hold more than
    ``max_buffered`` readings.

    The simulator's catch-up loop generates, in one go, every reading due between its cursor
    and ``speed`` times the wall time since it started; its backpressure decides only whether
    to generate, not how much. When generating is slower than the speed demands, each batch
    takes longer than the last, so the next is larger still, until memory runs out. The
    simulator reads its clock once per loop iteration, so with ``speed = 1`` this clock makes
    every batch ``step_us`` of simulated time, and the loop runs flat out.
    """

    def __init__(self, step_us: int, max_buffered: int) -> None:
        self.step_us = step_us
        self.max_buffered = max_buffered
        self.links: list[Link] = []
        self._now: int | None = None

    def __call__(self) -> int:
        if self._now is None:
            self._now = now_us()
        elif sum(link.buffered for link in self.links) <= self.max_buffered:
            self._now += self.step_us
        return self._now


def concentrator_scenario(uid: str, fmt: PackFormat, args: argparse.Namespace) -> Scenario:
    # A day behind: the simulator catches up (generating flat out) for the whole run.
    return Scenario(
        seed=1,
        start="-1d",
        speed=1,
        mode="concentrator",
        city=CityConfig(id_prefix=f"bs{uid}-{fmt.value.split('+')[1]}-"),
        devices={DeviceKind.LAMP_POLE: DeviceClass(count=args.devices, interval_s=args.interval)},
        concentrator=Concentrator(devices_per_concentrator=args.per_concentrator, pack_readings=args.pack, format=fmt),
        # Backpressure is the simulator's max_buffered: the outboxes must not drop anything.
        firmware=Firmware(buffer_readings=10 * args.max_buffered),
        truth=Truth(file="", kafka=False),
    )


def realistic_scenario(uid: str, args: argparse.Namespace) -> Scenario:
    return Scenario(
        seed=1,
        start="now",
        speed=1,
        mode="realistic",
        city=CityConfig(id_prefix=f"bs{uid}-rt-"),
        devices={
            DeviceKind.LAMP_POLE: DeviceClass(
                count=args.realistic_devices, interval_s=args.interval, format=PayloadFormat(args.realistic_format)
            )
        },
        truth=Truth(file="", kafka=False),
    )


async def measure(
    settings: SimSettings,
    scenario: Scenario,
    city: City,
    broker: Mosquitto,
    *,
    warmup_s: float,
    seconds: float,
    status: Status,
    label: str,
    clock: PacedClock | None = None,
) -> Window:
    """Run the simulator; sample from the end of the warm-up for ``seconds``; stop it."""
    broker_pid = broker.daemon.pid()
    sim = Simulator(settings, scenario, city=city, clock=clock or now_us)
    if clock is not None:
        clock.links = sim.links  # filled in by start()

    def sample() -> Sample:
        return Sample(
            time.monotonic(),
            time.process_time(),
            _process_cpu(broker_pid),
            sim.stats.acked,
            sim.stats.values_acked,
            sim.stats.connected,
        )

    async with sim:
        runner = asyncio.create_task(sim.run())
        try:
            status.update(f"{label}: connecting {len(sim.links)} sessions")
            connected = asyncio.create_task(sim.wait_connected(timeout_s=120))
            await asyncio.wait({connected, runner}, return_when=asyncio.FIRST_COMPLETED)
            if runner.done():
                connected.cancel()
                await runner  # raises what stopped it
                raise RuntimeError("the simulator stopped before its links connected")
            await connected
            status.update(f"{label}: warming up")
            await asyncio.sleep(warmup_s)
            first = last = sample()
            while last.wall - first.wall < seconds:
                await asyncio.sleep(min(1.0, seconds - (last.wall - first.wall)))
                now = sample()
                rate = (now.acked - last.acked) / (now.wall - last.wall)
                cpu = (now.cpu - last.cpu) / (now.wall - last.wall)
                status.update(
                    f"{label}: {now.wall - first.wall:.0f}/{seconds:.0f} s, {rate:,.0f} readings/s, cpu {cpu:.2f}"
                )
                last = now
                if runner.done():
                    await runner
                    raise RuntimeError("the simulator stopped during the measurement")
            window = Window.between(first, last, sim.stats)
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
    return window


async def run_all(
    settings: SimSettings,
    broker: Mosquitto,
    concentrator: dict[PackFormat, tuple[Scenario, City]],
    realistic: tuple[Scenario, City] | None,
    args: argparse.Namespace,
    status: Status,
) -> list[str]:
    figures: list[str] = []
    for fmt, (scenario, city) in concentrator.items():
        name = f"concentrator_{fmt.value.replace('+', '_')}"
        w = await measure(
            settings,
            scenario,
            city,
            broker,
            warmup_s=args.warmup,
            seconds=args.seconds,
            status=status,
            label=f"concentrator {fmt.value}",
            clock=PacedClock(round(args.chunk * args.interval / args.devices * 1e6), args.max_buffered),
        )
        console.log(f"{name}: {w.readings_per_s:,.0f} readings/s at {w.cpu:.2f} CPU s/s")
        figures += [
            f"{name}_devices: {args.devices} devices",
            f"{name}_sessions: {w.stats.links} sessions",
            f"{name}_sessions_connected: {w.connected} sessions",
            f"{name}_readings_acked: {w.readings_per_s:.0f} readings/s",
            f"{name}_values_acked: {w.values_per_s:.0f} values/s",
            f"{name}_process_cpu: {w.cpu:.2f} cpu_s/s",
            f"{name}_cpu_per_reading: {w.cpu / w.readings_per_s * 1e6 if w.readings_per_s else 0:.1f} us",
            f"{name}_broker_cpu: {w.broker_cpu:.2f} cpu_s/s",
            f"{name}_dropped: {w.stats.dropped} readings",
        ]
    if realistic is not None:
        scenario, city = realistic
        n = args.realistic_devices
        target = n / args.interval
        w = await measure(
            settings,
            scenario,
            city,
            broker,
            warmup_s=args.warmup,
            seconds=args.realistic_seconds,
            status=status,
            label=f"realistic, {n} sessions",
        )
        console.log(f"realistic: {w.readings_per_s:,.0f} of {target:,.0f} readings/s at {w.cpu:.3f} CPU s/s")
        figures += [
            f"realistic_devices: {n} devices",
            f"realistic_interval: {args.interval:g} s",
            f"realistic_sessions_connected: {w.connected} sessions",
            f"realistic_readings_target: {target:.0f} readings/s",
            f"realistic_readings_acked: {w.readings_per_s:.0f} readings/s",
            f"realistic_readings_achieved: {100 * w.readings_per_s / target:.1f} %",
            f"realistic_process_cpu: {w.cpu:.3f} cpu_s/s",
            f"realistic_cpu_per_reading: {w.cpu / w.readings_per_s * 1e6 if w.readings_per_s else 0:.0f} us",
            f"realistic_broker_cpu: {w.broker_cpu:.3f} cpu_s/s",
            f"realistic_devices_per_core: {n / w.cpu if w.cpu else float('inf'):.0f} devices",
            f"realistic_dropped: {w.stats.dropped} readings",
        ]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000, help="devices in concentrator mode")
    parser.add_argument("--per-concentrator", type=int, default=10_000, help="devices per concentrator session")
    parser.add_argument("--pack", type=int, default=200, help="readings per SenML pack (one MQTT message)")
    parser.add_argument("--max-buffered", type=int, default=100_000, help="simulator backpressure, readings")
    parser.add_argument("--chunk", type=int, default=4_000, help="readings generated per simulator loop iteration")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per concentrator format")
    parser.add_argument("--realistic-devices", type=int, default=1_000, help="devices in realistic mode (0: skip)")
    parser.add_argument("--realistic-format", choices=[f.value for f in PayloadFormat], default="json")
    parser.add_argument("--realistic-seconds", type=float, default=15.0, help="measured seconds in realistic mode")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between two readings of a device")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds after connecting before measuring")
    args = parser.parse_args()
    if args.pack * LAMP_READING_BYTES > MAX_PACKET_BYTES:
        parser.error(f"--pack {args.pack}: packs would exceed the broker's {MAX_PACKET_BYTES} byte packet limit")
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        raise SystemExit("Mosquitto is not installed: run `cityops stack up` first")
    log.configure(level="WARNING")  # to stderr: stdout is for the figures
    started = time.monotonic()
    uid = uuid.uuid4().hex[:6]
    with console.status("building the cities"):
        concentrator = {}
        for fmt in FORMATS:
            scenario = concentrator_scenario(uid, fmt, args)
            concentrator[fmt] = (scenario, build_city(scenario))
        realistic = None
        if args.realistic_devices > 0:
            scenario = realistic_scenario(uid, args)
            realistic = (scenario, build_city(scenario))
    devices = [d for _, city in [*concentrator.values(), *([realistic] if realistic else [])] for d in city.devices]
    base = SimSettings(tick_s=0.1, max_buffered=args.max_buffered, drain_timeout_s=0.0)
    with console.status("starting a private Mosquitto") as status, private_broker(devices, base) as broker:
        console.log(f"private Mosquitto on {broker.host}:{broker.port}, {len(devices)} devices")
        settings = base.model_copy(update={"mqtt_host": broker.host, "mqtt_port": broker.port})
        figures = asyncio.run(run_all(settings, broker, concentrator, realistic, args, status))
    console.log(f"done in {time.monotonic() - started:.0f} s")
    print("\n".join(figures))


if __name__ == "__main__":
    main()
