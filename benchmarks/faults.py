"""Faults on the real stack: what each one loses, duplicates and costs in availability.

A private stack (its own Mosquitto, Kafka and PostgreSQL on free ports, in a temporary state
directory) runs the gateway, the stream service and the IOC API as separate processes, as in
production; simulated devices publish QoS 1 at a steady rate and a wall client listens on
``/ws/wall``. Each fault is injected while they publish, then undone:

==================  =====================================================================
mosquitto_restart   the broker stopped (SIGTERM) for the outage, then started
mosquitto_crash     the gateway frozen (SIGSTOP) so the broker holds a backlog, the broker
                    SIGKILLed and started again, the gateway thawed (default autosave)
mosquitto_crash_    the same with ``autosave_on_changes`` (a save at every message)
  saved
kafka_kill          the Kafka broker SIGKILLed, started again after the outage
postgres_stop       PostgreSQL stopped for the outage, then started
stream_kill         the stream service SIGKILLed mid-batch, restarted 5 s later
gateway_kill        the gateway SIGKILLed, restarted 5 s later
ioc_kill            the IOC API SIGKILLed, restarted 5 s later
==================  =====================================================================

Counting is by the devices' own sequence numbers: a reading is *acknowledged* when the broker
PUBACKed it to the device (the simulator's ``on_ack``), *stored* when its rows are in
``readings``, *lost* when acknowledged and not stored once the pipeline has settled, a
*duplicate* when a (device, metric, seq) is stored twice. *Recovery* is the time from the
fault's end (the dependency back, or the killed service restarted) until every service's
``/healthz`` is 200, a reading stamped by the gateway after that moment is stored and the wall
client is connected. *Hand* names the services that exited during the fault and had to be
started by the harness (none should). *Reported* names the services whose ``/healthz`` said
the dependency was down during the outage.

The costs of closing the one-machine stack's loss windows are measured side by side:
Mosquitto with ``autosave_on_changes`` (a save per message) against the default 5 s autosave
(acknowledged messages per second while the broker queues a backlog, its CPU, the bytes
it writes), and Kafka with ``log.flush.interval.messages=1`` (fsync per message) against the
default (producer throughput and latency).

The private stack runs the binaries and the Kafka jars that ``cityops stack up`` installed (run
that once); the shared stack is left alone, so the benchmark can run beside other work. About
15 minutes with the default 60 s outages.

    python -m benchmarks.faults [--devices 60] [--rate 300] [--outage 60] [--faults a,b,...]
                                [--no-costs]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import websockets
from rich.console import Console
from rich.table import Table

from cityops.core import log, schema
from cityops.core.contracts import DeviceKind, to_datetime
from cityops.core.kafka import ensure_topics, make_producer
from cityops.devstack import Stack, StackSettings
from cityops.devstack.mosquitto import Persistence
from firmware_sim import City, EventKind, Scenario, Scheduled, SimSettings, Simulator, build_city
from firmware_sim.links import Outgoing
from firmware_sim.scenario import CityConfig, DeviceClass, Truth

console = Console(stderr=True, width=120)

SERVICES = ("gateway", "stream", "ioc")
# What each service depends on, as its /healthz names it.
DEPENDS = {"gateway": ("mqtt", "kafka"), "stream": ("postgres", "kafka"), "ioc": ("postgres", "kafka")}
SPIKE_METRIC = {
    "lamp_pole": "voltage_v",
    "pipe_node": "pressure_kpa",
    "water_quality": "conductivity_uscm",
    "env_station": "no2_ugm3",
    "drainage": "level_cm",
}


@dataclass(frozen=True)
class Fault:
    name: str
    # The dependency that goes away ("mqtt", "kafka", "postgres"), or the service killed.
    target: str
    what: str


FAULTS: dict[str, Fault] = {
    f.name: f
    for f in (
        Fault("mosquitto_restart", "mqtt", "Mosquitto stopped for the outage and restarted"),
        Fault("mosquitto_crash", "mqtt", "Mosquitto SIGKILLed with a backlog queued (autosave every 5 s)"),
        Fault("mosquitto_crash_saved", "mqtt", "the same with autosave_on_changes (a save per message)"),
        Fault("kafka_kill", "kafka", "Kafka SIGKILLed, started again after the outage"),
        Fault("postgres_stop", "postgres", "PostgreSQL stopped for the outage"),
        Fault("stream_kill", "stream", "the stream service SIGKILLed mid-batch, restarted 5 s later"),
        Fault("gateway_kill", "gateway", "the gateway SIGKILLed, restarted 5 s later"),
        Fault("ioc_kill", "ioc", "the IOC API SIGKILLed, restarted 5 s later"),
    )
}
RESTART_AFTER_S = 5.0


@dataclass
class FaultResult:
    fault: str
    acknowledged: int
    stored: int
    lost: int
    duplicates: int
    recovery_s: float | None  # None: not flowing again within the deadline
    hand: list[str]  # services that exited and were started by the harness
    reported: list[str]  # services whose /healthz said the dependency was down
    wall_events: int  # numbered events the wall client received
    wall_missed: int  # numbered events it never received
    wall_disconnects: int
    outage_s: float


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the services, as processes ------------------------------------------------------------------


class Service:
    """One of the product's services as a child process (``python -m cityops <command>``)."""

    def __init__(self, name: str, command: str, env: dict[str, str], health_port: int, log: Path) -> None:
        self.name = name
        self.command = command
        self.env = env
        self.health_port = health_port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cityops", self.command],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None and self.alive():
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM; SIGKILL after ``timeout_s``. Returns the exit code (None: it had to be killed)."""
        if self.proc is None:
            return None
        if self.alive():
            self.proc.send_signal(signal.SIGCONT)  # a frozen process cannot act on SIGTERM
            self.proc.terminate()
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    async def healthz(self) -> tuple[int, dict[str, Any]] | None:
        """The service's /healthz (status, body), or None while it does not answer."""
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                response = await client.get(f"http://127.0.0.1:{self.health_port}/healthz")
            return response.status_code, response.json()
        except (httpx.HTTPError, ValueError):
            return None

    async def healthy(self) -> bool:
        answer = await self.healthz()
        return answer is not None and answer[0] == 200

    def down_dependencies(self, answer: tuple[int, dict[str, Any]] | None) -> set[str]:
        if answer is None or answer[0] == 200:
            return set()
        deps = answer[1].get("dependencies", {})
        return {name for name, state in deps.items() if isinstance(state, dict) and not state.get("up", True)}


# -- the wall client ------------------------------------------------------------------------------


@dataclass
class WallWatch:
    """A wall screen on ``/ws/wall``: logs in, resumes from its last event after every drop.

    Event ids are shared by every channel (a crew's, the supervisors'), so a gap in the wall's
    ids is not a miss: :meth:`missed` compares what arrived with the wall's events stored."""

    port: int
    ids: list[int] = field(default_factory=list)
    disconnects: int = 0
    connected: bool = False
    # Ids up to which the state came whole, in a snapshot (the first, or a resume refused).
    covered: list[tuple[int, int]] = field(default_factory=list)
    _last_id: int | None = None

    async def _token(self, client: httpx.AsyncClient) -> str:
        response = await client.post(
            f"http://127.0.0.1:{self.port}/token", data={"username": "viewer", "password": "viewer"}
        )
        response.raise_for_status()
        return str(response.json()["access_token"])

    def _take(self, message: dict[str, Any]) -> None:
        if message.get("type") == "snapshot":  # the whole state, current to this event
            upto = int(message["id"])
            self.covered.append((-1 if self._last_id is None else self._last_id, upto))
            self._last_id = max(upto, self._last_id or 0)
        elif "id" in message:
            event = int(message["id"])
            self._last_id = max(event, self._last_id or 0)
            self.ids.append(event)

    async def missed(self, dsn: str) -> int:
        """Wall events stored while it watched that it neither received nor got in a snapshot."""
        if self._last_id is None or not self.covered:
            return 0
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            cur = await conn.execute(
                "SELECT event_id FROM ioc_events WHERE channel = 'wall' AND event_id > %s AND event_id <= %s",
                (self.covered[0][1], self._last_id),
            )
            stored = {int(row[0]) for row in await cur.fetchall()}
        inside = {e for e in stored if any(lo < e <= hi for lo, hi in self.covered)}
        return len(stored - set(self.ids) - inside)

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=5.0) as client:
            while True:
                try:
                    token = await self._token(client)
                    url = f"ws://127.0.0.1:{self.port}/ws/wall?token={token}"
                    if self._last_id is not None:
                        url += f"&last_event_id={self._last_id}"
                    async with websockets.connect(url, max_size=None, open_timeout=5) as ws:
                        self.connected = True
                        async for raw in ws:
                            self._take(json.loads(raw))
                except (OSError, httpx.HTTPError, websockets.WebSocketException, TimeoutError, ValueError):
                    pass
                if self.connected:
                    self.disconnects += 1
                self.connected = False
                await asyncio.sleep(0.5)


# -- the ledger of acknowledged readings ----------------------------------------------------------


class Ledger:
    """Every reading the broker acknowledged to a device: (device, seq) -> metric values."""

    def __init__(self) -> None:
        self.acked: dict[tuple[str, int], int] = {}

    def ack(self, item: Outgoing) -> None:
        per_reading = item.values if len(item.keys) == 1 else 1
        for key in item.keys:
            self.acked[key] = per_reading

    async def stored(self, dsn: str, prefix: str) -> tuple[int, int]:
        """(acknowledged readings with all their rows stored, duplicate rows)."""
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            cur = await conn.execute(
                "SELECT device_id, seq, count(*), count(DISTINCT metric) FROM readings"
                " WHERE device_id LIKE %s GROUP BY 1, 2",
                (prefix + "%",),
            )
            rows = await cur.fetchall()
        stored = duplicates = 0
        for device_id, seq, n, distinct in rows:
            duplicates += int(n) - int(distinct)
            want = self.acked.get((str(device_id), int(seq)))
            if want is not None and int(distinct) >= want:
                stored += 1
        return stored, duplicates


# -- the harness ------------------------------------------------------------------------------------


class Harness:
    """A private stack with the three services as processes; one fault at a time on it.

    An async context manager: ``start()`` brings the stack and the services up, ``stop()``
    stops the services (SIGTERM) and the stack, and removes its state.
    """

    def __init__(self, *, devices: int = 60, rate: float = 300.0, keep: bool = False) -> None:
        self.devices = devices
        self.rate = rate
        self.keep = keep
        self.state = Path(tempfile.mkdtemp(prefix="cityops-faults-"))
        self.state.chmod(0o755)  # PostgreSQL and Mosquitto drop to their own users
        pg_port = _free_port()
        self.settings = StackSettings(
            state_dir=self.state,
            mqtt_port=_free_port(),
            kafka_bootstrap=f"127.0.0.1:{_free_port()}",
            kafka_controller_port=_free_port(),
            pg_dsn=f"postgresql://cityops:cityops@127.0.0.1:{pg_port}/cityops",
            install_packages=False,
            kafka_heap="384m",
        )
        self.stack = Stack(self.settings)
        ports = {name: _free_port() for name in SERVICES}
        env = {
            "CITYOPS_STATE_DIR": str(self.state),
            "CITYOPS_MQTT_PORT": str(self.settings.mqtt_port),
            "CITYOPS_KAFKA_BOOTSTRAP": self.settings.kafka_bootstrap,
            "CITYOPS_PG_DSN": self.settings.pg_dsn,
            "CITYOPS_LOG_FORMAT": "json",
            "CITYOPS_GATEWAY_METRICS_PORT": str(ports["gateway"]),
            "CITYOPS_STREAM_METRICS_PORT": str(ports["stream"]),
            "CITYOPS_API_PORT": str(ports["ioc"]),
            "CITYOPS_API_STATUS_S": "1",
        }
        logs = self.state / "logs"
        self.services = {
            "gateway": Service("gateway", "gateway", env, ports["gateway"], logs / "gateway.log"),
            "stream": Service("stream", "stream", env, ports["stream"], logs / "stream.log"),
            "ioc": Service("ioc", "api", env, ports["ioc"], logs / "ioc.log"),
        }

    async def __aenter__(self) -> Harness:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def start(self) -> None:
        await asyncio.to_thread(self.stack.up)
        async with await psycopg.AsyncConnection.connect(self.settings.pg_dsn, autocommit=True) as conn:
            await schema.apply(conn, mode=self.settings.storage_mode)
        await ensure_topics(self.settings.kafka_bootstrap, self.settings.topics.all(), partitions=6)
        for service in self.services.values():
            service.start()
        await self.until_healthy(deadline_s=180)

    async def stop(self) -> None:
        for service in self.services.values():
            await asyncio.to_thread(service.stop)
        # A private, throw-away stack: no need for a controlled shutdown.
        self.stack.kafka.daemon.kill()
        self.stack.mosquitto.daemon.kill()
        await asyncio.to_thread(self.stack.postgres.stop)
        if not self.keep:
            shutil.rmtree(self.state, ignore_errors=True)

    async def until_healthy(self, *, deadline_s: float) -> None:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            answers = [await s.healthy() for s in self.services.values()]
            if all(answers):
                return
            for service in self.services.values():
                if not service.alive():
                    tail = service.log.read_text(errors="replace").splitlines()[-15:]
                    raise RuntimeError(f"{service.name} exited while starting:\n" + "\n".join(tail))
            await asyncio.sleep(0.25)
        raise TimeoutError(f"services not healthy within {deadline_s:.0f} s (logs in {self.state / 'logs'})")

    # -- one fault --------------------------------------------------------------------------------

    def _scenario(self, prefix: str) -> tuple[Scenario, City]:
        per_kind = max(1, self.devices // len(DeviceKind))
        interval = per_kind * len(DeviceKind) / self.rate
        # A spike on one device every few seconds, after the detectors' warm-up, so the wall
        # gets numbered events throughout.
        probe = Scenario(
            seed=7,
            start="now",
            city=CityConfig(id_prefix=prefix),
            devices={k: DeviceClass(count=per_kind, interval_s=interval) for k in DeviceKind},
            truth=Truth(file="", kafka=False),
        )
        city = build_city(probe)
        devices = city.devices
        warm = 40 * interval
        spikes = [
            Scheduled(
                kind=EventKind.SPIKE,
                at_s=warm + 3.0 * i,
                target=d.device_id,
                metric=SPIKE_METRIC[d.kind],
                magnitude=40,
            )
            for i, d in enumerate(devices * 20)
        ]
        return probe.model_copy(update={"incidents": spikes}), city

    def simulator(self, scenario: Scenario, city: City, ledger: Ledger) -> Simulator:
        """Simulated devices on the private broker; ``ledger`` notes what the broker acknowledged.
        Cancelled, not drained, at the end: only what was acknowledged counts."""
        settings = SimSettings(
            mqtt_port=self.settings.mqtt_port,
            kafka_bootstrap=self.settings.kafka_bootstrap,
            state_dir=self.state,
            drain_timeout_s=0.0,
        )
        return Simulator(settings, scenario, city=city, on_ack=ledger.ack)

    async def _flowing_since(self, prefix: str, since_us: int) -> bool:
        """A reading the gateway stamped after ``since_us`` is stored."""
        try:
            async with await psycopg.AsyncConnection.connect(self.settings.pg_dsn, connect_timeout=2) as conn:
                cur = await conn.execute(
                    "SELECT 1 FROM readings WHERE device_id LIKE %s AND gateway_at > %s LIMIT 1",
                    (prefix + "%", to_datetime(since_us)),
                )
                return await cur.fetchone() is not None
        except psycopg.Error:
            return False

    async def run_fault(
        self,
        fault: Fault | str,
        *,
        outage_s: float,
        lead_s: float = 5.0,
        tail_s: float = 5.0,
        recovery_deadline_s: float = 120.0,
        settle_s: float = 60.0,
    ) -> FaultResult:
        fault = FAULTS[fault] if isinstance(fault, str) else fault
        prefix = f"f{uuid.uuid4().hex[:6]}-"
        scenario, city = self._scenario(prefix)
        await asyncio.to_thread(self.stack.register, city.devices)
        async with await psycopg.AsyncConnection.connect(self.settings.pg_dsn, autocommit=True) as conn:
            await schema.upsert_devices(conn, city.devices)
            await schema.upsert_districts(conn, city.outlines())
        ledger = Ledger()
        sim = self.simulator(scenario, city, ledger)
        wall = WallWatch(self.services["ioc"].health_port)
        reported: set[str] = set()
        hand: list[str] = []
        async with sim, asyncio.TaskGroup() as tasks:
            sim_task = tasks.create_task(sim.run())
            wall_task = tasks.create_task(wall.run())
            try:
                started = time.monotonic()
                while not (await self._flowing_since(prefix, 0) and wall.connected):
                    if time.monotonic() - started > 60:
                        raise TimeoutError("no reading stored within 60 s of the devices starting")
                    await asyncio.sleep(0.25)
                await asyncio.sleep(lead_s)
                watch = asyncio.Event()
                watcher = tasks.create_task(self._watch(fault, watch, reported, hand))
                began = time.monotonic()
                restored_us = await self._inject(fault, outage_s)
                outage = time.monotonic() - began
                restored = time.monotonic()
                recovery = await self._recover(prefix, restored_us, hand, recovery_deadline_s)
                recovery_s = None if recovery is None else recovery - restored
                watch.set()
                await watcher
                await asyncio.sleep(tail_s)
            finally:
                sim_task.cancel()
                wall_task.cancel()
        acknowledged = len(ledger.acked)
        stored, duplicates = await self._settle(ledger, prefix, settle_s)
        wall_missed = await wall.missed(self.settings.pg_dsn)
        return FaultResult(
            fault=fault.name,
            acknowledged=acknowledged,
            stored=stored,
            lost=acknowledged - stored,
            duplicates=duplicates,
            recovery_s=recovery_s,
            hand=hand,
            reported=sorted(reported),
            wall_events=len(set(wall.ids)),
            wall_missed=wall_missed,
            wall_disconnects=wall.disconnects,
            outage_s=outage,
        )

    async def _watch(self, fault: Fault, done: asyncio.Event, reported: set[str], hand: list[str]) -> None:
        """Until ``done``: which services say the dependency is down; who exited (and needs a hand)."""
        while not done.is_set():
            for service in self.services.values():
                if service.name == fault.target:
                    continue
                if not service.alive() and service.name not in hand:
                    hand.append(service.name)
                if fault.target in DEPENDS[service.name]:
                    if fault.target in service.down_dependencies(await service.healthz()):
                        reported.add(service.name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.5)

    async def _inject(self, fault: Fault, outage_s: float) -> int:
        """Do the fault and undo it; returns the moment (µs) it was undone."""
        stack = self.stack
        svc = self.services
        match fault.name:
            case "mosquitto_restart":
                await asyncio.to_thread(stack.mosquitto.stop)
                await asyncio.sleep(outage_s)
                await asyncio.to_thread(stack.mosquitto.start)
            case "mosquitto_crash" | "mosquitto_crash_saved":
                saved = fault.name == "mosquitto_crash_saved"
                wanted = Persistence(1, True) if saved else Persistence()
                if stack.mosquitto.persistence != wanted:
                    stack.mosquitto.persistence = wanted
                    await asyncio.to_thread(stack.mosquitto.stop)
                    await asyncio.to_thread(stack.mosquitto.start)
                    await self._until(lambda: svc["gateway"].healthy(), 60)
                svc["gateway"].signal(signal.SIGSTOP)
                await asyncio.sleep(outage_s)  # the broker queues what the devices send
                stack.mosquitto.daemon.kill()
                await asyncio.to_thread(stack.mosquitto.start)
                svc["gateway"].signal(signal.SIGCONT)
                if saved:  # back to the stack's own setting for the faults after this one
                    stack.mosquitto.persistence = Persistence()
            case "kafka_kill":
                stack.kafka.daemon.kill()
                await asyncio.sleep(outage_s)
                await asyncio.to_thread(stack.kafka.start)
            case "postgres_stop":
                await asyncio.to_thread(stack.postgres.stop)
                await asyncio.sleep(outage_s)
                await asyncio.to_thread(stack.postgres.start)
            case "stream_kill" | "gateway_kill" | "ioc_kill":
                service = svc[fault.target]
                service.kill()
                await asyncio.sleep(RESTART_AFTER_S)
                service.start()
            case _:
                raise ValueError(f"unknown fault {fault.name!r}")
        return int(time.time() * 1e6)

    async def _until(self, check: Callable[[], Awaitable[bool]], deadline_s: float) -> bool:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if await check():
                return True
            await asyncio.sleep(0.2)
        return False

    async def _recover(self, prefix: str, since_us: int, hand: list[str], deadline_s: float) -> float | None:
        """The moment everything is well again: all healthy, data flowing, the wall connected.
        A service that exited is started again here, and named in ``hand``."""
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            for service in self.services.values():
                if not service.alive():
                    if service.name not in hand:
                        hand.append(service.name)
                    service.start()
            healthy = [await s.healthy() for s in self.services.values()]
            if all(healthy) and await self._flowing_since(prefix, since_us):
                return time.monotonic()
            await asyncio.sleep(0.2)
        return None

    async def _settle(self, ledger: Ledger, prefix: str, settle_s: float) -> tuple[int, int]:
        """Wait until every acknowledged reading is stored, or nothing more arrives for ``settle_s``."""
        best, duplicates = -1, 0
        quiet_since = time.monotonic()
        while True:
            stored, duplicates = await ledger.stored(self.settings.pg_dsn, prefix)
            if stored >= len(ledger.acked):
                return stored, duplicates
            if stored > best:
                best, quiet_since = stored, time.monotonic()
            elif time.monotonic() - quiet_since > settle_s:
                return stored, duplicates
            await asyncio.sleep(0.5)


# -- costs -------------------------------------------------------------------------------------------


@dataclass
class MosquittoCost:
    acks_per_s: float
    cpu_pct: float
    write_kb_per_s: float


async def mosquitto_cost(harness: Harness, persistence: Persistence, *, seconds: float = 15.0) -> MosquittoCost:
    """The broker's throughput, CPU and disk writes while it queues a backlog (the gateway frozen)
    under ``persistence``: devices publish as fast as the broker acknowledges."""
    stack, gateway = harness.stack, harness.services["gateway"]
    stack.mosquitto.persistence = persistence
    await asyncio.to_thread(stack.mosquitto.stop)
    await asyncio.to_thread(stack.mosquitto.start)
    await harness._until(gateway.healthy, 60)
    prefix = f"c{uuid.uuid4().hex[:6]}-"
    per_kind = max(1, harness.devices // len(DeviceKind))
    scenario = Scenario(
        seed=9,
        start="now",
        city=CityConfig(id_prefix=prefix),
        devices={k: DeviceClass(count=per_kind, interval_s=0.002) for k in DeviceKind},
        truth=Truth(file="", kafka=False),
    )
    city = build_city(scenario)
    await asyncio.to_thread(stack.register, city.devices)
    ledger = Ledger()
    sim = harness.simulator(scenario, city, ledger)
    pid = stack.mosquitto.daemon.pid()
    assert pid is not None
    gateway.signal(signal.SIGSTOP)
    try:
        async with sim:
            task = asyncio.create_task(sim.run(duration_s=seconds + 2))
            try:
                await sim.wait_connected()
                await asyncio.sleep(2)  # past the connect burst
                acks0, cpu0, io0, t0 = len(ledger.acked), _cpu_s(pid), _write_bytes(pid), time.monotonic()
                await asyncio.sleep(seconds)
                acks1, cpu1, io1, t1 = len(ledger.acked), _cpu_s(pid), _write_bytes(pid), time.monotonic()
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        gateway.signal(signal.SIGCONT)
    wall = t1 - t0
    stack.mosquitto.persistence = Persistence()
    await asyncio.to_thread(stack.mosquitto.stop)
    await asyncio.to_thread(stack.mosquitto.start)
    await harness._until(gateway.healthy, 60)
    return MosquittoCost((acks1 - acks0) / wall, 100 * (cpu1 - cpu0) / wall, (io1 - io0) / 1024 / wall)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _write_bytes(pid: int) -> int:
    # Bytes passed to write(2), sockets included: a save that the next one replaces before
    # writeback never reaches the disk's counter (write_bytes), but it is work all the same.
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


@dataclass
class KafkaCost:
    records_per_s: float
    p50_ms: float
    p99_ms: float


async def kafka_cost(harness: Harness, flush_messages: int | None, *, records: int = 20_000) -> KafkaCost:
    """Producer throughput and per-send latency (acks=all, as the gateway sends) with the broker
    flushing every ``flush_messages`` messages (None: the OS decides)."""
    stack = harness.stack
    if stack.kafka.flush_messages != flush_messages:
        stack.kafka.flush_messages = flush_messages
        await asyncio.to_thread(stack.kafka.stop)
        await asyncio.to_thread(stack.kafka.start)
    topic = f"cost.{uuid.uuid4().hex[:6]}"
    await ensure_topics(harness.settings.kafka_bootstrap, [topic], partitions=6)
    producer = make_producer(harness.settings.kafka_bootstrap, client_id="faults-cost")
    await producer.start()
    try:
        payload = b"x" * 200
        latencies: list[float] = []

        async def one(i: int) -> None:
            t = time.perf_counter()
            await (await producer.send(topic, payload, key=str(i % 60).encode()))
            latencies.append((time.perf_counter() - t) * 1000)

        await asyncio.gather(*(one(i) for i in range(500)))  # warm-up: metadata, connections
        latencies.clear()
        started = time.perf_counter()
        window = 1_000  # sends in flight, as a busy gateway has
        for first in range(0, records, window):
            await asyncio.gather(*(one(i) for i in range(first, min(records, first + window))))
        elapsed = time.perf_counter() - started
    finally:
        await producer.stop()
    if flush_messages is not None:  # leave the stack as configured
        stack.kafka.flush_messages = None
        await asyncio.to_thread(stack.kafka.stop)
        await asyncio.to_thread(stack.kafka.start)
        await harness.until_healthy(deadline_s=120)
    lat = np.array(latencies)
    return KafkaCost(records / elapsed, float(np.percentile(lat, 50)), float(np.percentile(lat, 99)))


# -- report --------------------------------------------------------------------------------------------


def table(results: list[FaultResult]) -> Table:
    t = Table(title="faults")
    for column in ("fault", "acked", "stored", "lost", "dups", "recovery s", "hand", "reported by", "wall ev/missed"):
        t.add_column(column, no_wrap=True)
    for r in results:
        t.add_row(
            r.fault,
            f"{r.acknowledged:,}",
            f"{r.stored:,}",
            f"{r.lost:,}",
            f"{r.duplicates:,}",
            "-" if r.recovery_s is None else f"{r.recovery_s:.1f}",
            ", ".join(r.hand) or "no",
            ", ".join(r.reported) or "-",
            f"{r.wall_events} / {r.wall_missed}",
        )
    return t


def figures(results: list[FaultResult]) -> list[str]:
    lines: list[str] = []
    for r in results:
        n = r.fault
        lines += [
            f"{n}_acknowledged: {r.acknowledged} readings",
            f"{n}_stored: {r.stored} readings",
            f"{n}_lost: {r.lost} readings",
            f"{n}_duplicates: {r.duplicates} rows",
            f"{n}_recovery: {'nan' if r.recovery_s is None else f'{r.recovery_s:.1f}'} s",
            f"{n}_hand_needed: {len(r.hand)} services",
            f"{n}_wall_missed: {r.wall_missed} events",
        ]
    return lines


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=60)
    parser.add_argument("--rate", type=float, default=300.0, help="readings per second, all devices together")
    parser.add_argument("--outage", type=float, default=60.0, help="seconds each dependency stays away")
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated, of: " + ", ".join(FAULTS))
    parser.add_argument("--no-costs", action="store_true", help="skip measuring the durability settings' costs")
    parser.add_argument("--keep", action="store_true", help="keep the private stack's state directory (logs)")
    args = parser.parse_args()
    # SIGTERM (a CI timeout, kill) stops the private stack and its processes like Ctrl-C does.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    log.configure("WARNING")  # the simulated devices' reconnects are the fault, not news
    chosen = [FAULTS[name] for name in args.faults.split(",") if name]
    results: list[FaultResult] = []
    lines: list[str] = []
    with console.status("starting a private stack and the services") as status:
        async with Harness(devices=args.devices, rate=args.rate, keep=args.keep) as harness:
            for i, fault in enumerate(chosen, 1):
                status.update(f"fault {i}/{len(chosen)}: {fault.what} ({args.outage:.0f} s)")
                # A crash with a backlog loses what arrived since the last autosave: the backlog
                # builds for the outage, but the broker's own downtime is a restart.
                results.append(await harness.run_fault(fault, outage_s=args.outage))
                console.print(table(results[-1:]))
            if not args.no_costs:
                status.update("cost of autosave_on_changes (a save per message) vs autosave every 5 s")
                base = await mosquitto_cost(harness, Persistence())
                saved = await mosquitto_cost(harness, Persistence(1, True))
                status.update("cost of Kafka log.flush.interval.messages=1 vs the OS flushing")
                kbase = await kafka_cost(harness, None)
                kflush = await kafka_cost(harness, 1)
                lines += [
                    f"mosquitto_autosave_5s_acks: {base.acks_per_s:.0f} msg/s",
                    f"mosquitto_autosave_on_changes_acks: {saved.acks_per_s:.0f} msg/s",
                    f"mosquitto_autosave_5s_cpu: {base.cpu_pct:.1f} %",
                    f"mosquitto_autosave_on_changes_cpu: {saved.cpu_pct:.1f} %",
                    f"mosquitto_autosave_5s_writes: {base.write_kb_per_s:.0f} KB/s",
                    f"mosquitto_autosave_on_changes_writes: {saved.write_kb_per_s:.0f} KB/s",
                    f"kafka_os_flush_throughput: {kbase.records_per_s:.0f} records/s",
                    f"kafka_flush_each_message_throughput: {kflush.records_per_s:.0f} records/s",
                    f"kafka_os_flush_p50: {kbase.p50_ms:.1f} ms",
                    f"kafka_flush_each_message_p50: {kflush.p50_ms:.1f} ms",
                    f"kafka_os_flush_p99: {kbase.p99_ms:.1f} ms",
                    f"kafka_flush_each_message_p99: {kflush.p99_ms:.1f} ms",
                ]
    console.print(table(results))
    for line in figures(results) + lines:
        print(line)


if __name__ == "__main__":
    asyncio.run(main())
