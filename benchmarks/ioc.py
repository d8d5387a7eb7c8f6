"""The operations centre under load: alert ingest, live fan-out to wall screens, and resume.

Side by side in one run, on the real stack's PostgreSQL (each part on a database of its own,
created and dropped here; no Kafka topics: alerts go straight to ``Centre.receive``, as the
alert feed hands them over, with the feed off):

1. Ingest: alerts per second through ``Centre.receive`` (store, maintenance check, correlation,
   incident writes, live events, one transaction per batch) and the latency of each batch:
   - burst: cabinet outages, ``--lamps-per-cabinet`` lamps of one cabinet going dark together,
     ``--cabinets`` of them one after another, in batches of ``--burst-batch`` (what the Kafka
     consumer delivers in one poll): one incident per cabinet, updated by every batch;
   - scattered: ``--scattered-alerts`` alerts on random devices of a registered city of
     ``--city`` devices (lamps in small cabinets, pipe nodes in small DMAs, stations, drains),
     in batches of ``--scattered-batch``: many small incidents, more open ones as the run goes.
2. Fan-out: ``--clients`` wall screens on ``/ws/wall`` over real WebSockets, run in a separate
   process (so the server's event loop only serves); ``--fanout-batches`` batches of
   ``--fanout-batch`` scattered alerts, ``--fanout-gap`` seconds apart. Measured: the time from
   ``receive()`` publishing each ``alert``/``incident`` event (``Hub.publish``, after its commit;
   ``receive()`` returns a fraction of a millisecond later) to each client having it, on the
   machine's monotonic clock, which both processes share. Then the same again (a fresh database,
   the same alerts) with one slow client more that never reads (no compression, a 4 KiB socket
   receive buffer and a 1460-byte MSS like an Ethernet path, so its TCP buffers fill within a few
   hundred events rather than loopback's megabytes): the server drops it with a resync once
   ``--ws-queue-size`` events wait for it (both runs use that queue size), and the fast clients'
   percentiles should not move. The slow client then reads, to check that it got its events in
   order, then the resync notice and close code 1013.
3. Resume: after the scattered ingest, a client reconnects with ``last_event_id``
   ``--resume-events`` events behind and receives them all, versus a fresh connect that gets a
   snapshot (open incidents, the last 500 alerts, crews, maintenance, KPIs): median of
   ``--repeats`` connects each, from opening the socket to the last event / the snapshot.
4. The scattered ingest once more with PostgreSQL's JIT on (``CITYOPS_API_PG_JIT``; the IOC
   turns it off by default): the incident re-prioritisation (``ioc.incidents.REPRIORITISE``)
   looks expensive to the planner (PostGIS declares ``ST_DWithin`` costly), so with JIT on
   PostgreSQL compiles it with LLVM on every call, which can take far longer than running it.

The timers (escalation, recovery) do not tick during the run (``tick_s`` one hour), so what is
timed is ``receive()`` and the WebSocket path alone. Needs `cityops stack up`.

    python -m benchmarks.ioc [--cabinets 10] [--lamps-per-cabinet 200] [--burst-batch 100]
                             [--city 400] [--scattered-alerts 3000] [--scattered-batch 25]
                             [--clients 50] [--fanout-batches 60] [--fanout-batch 10] [--fanout-gap 0.1]
                             [--ws-queue-size 100] [--resume-events 1000] [--repeats 5]

Prints a table, then every figure on a line of its own as ``name: value unit``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import psycopg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from benchmarks._figures import Figure
from cityops.core import log, schema
from cityops.core.contracts import Alert, DeviceKind, now_us
from cityops.core.registry import Device
from cityops.devstack import Stack, StackSettings
from ioc import ApiServer, IocSettings
from ioc.centre import Centre
from ioc.events import WALL

console = Console(stderr=True)

# The simulated city's extent (firmware_sim CityConfig): (south, west, north, east).
EXTENT = (52.34, 4.85, 52.39, 4.94)
DISTRICT_GRID = 4  # 4 x 4 districts
DMA_GRID = 10  # 10 x 10 district metered areas: small ones, so many small incidents
CITY_LAMPS_PER_CABINET = 8
M_PER_DEG_LAT = 111_320.0
SLOW_CLIENT_RCVBUF = 4096
SLOW_CLIENT_MSS = 1460
TIMEOUT_S = 60.0

# Per kind: (share of the city, the metrics its alerts are on, a typical baseline).
CITY_MIX: dict[DeviceKind, tuple[float, tuple[str, ...], float]] = {
    DeviceKind.LAMP_POLE: (0.5, ("voltage_v", "power_w"), 230.0),
    DeviceKind.PIPE_NODE: (0.25, ("pressure_kpa", "flow_m3h"), 400.0),
    DeviceKind.WATER_QUALITY: (0.05, ("chlorine_mgl", "turbidity_ntu"), 0.5),
    DeviceKind.ENV_STATION: (0.1, ("no2_ugm3", "pm25_ugm3"), 40.0),
    DeviceKind.DRAINAGE: (0.1, ("level_cm",), 30.0),
}
DETECTORS = ("ewma", "robust", "cusum", "roc")


@dataclass(frozen=True)
class Plan:
    cabinets: int = 10
    lamps_per_cabinet: int = 200
    burst_batch: int = 100
    city: int = 400
    scattered_alerts: int = 3000
    scattered_batch: int = 25
    clients: int = 50
    fanout_batches: int = 60
    fanout_batch: int = 10
    fanout_gap: float = 0.1
    ws_queue_size: int = 100
    resume_events: int = 1000
    repeats: int = 5
    seed: int = 7


@dataclass
class Checks:
    """What must hold for the figures to mean anything (the tests assert these)."""

    burst_alerts_unplaced: int = -1  # stored alerts without an incident
    scattered_alerts_unplaced: int = -1
    fanout_missing: int = -1  # (client, event) deliveries that never arrived
    fanout_missing_with_slow_client: int = -1
    slow_client_dropped: bool = False  # left the hub while the alerts went on
    slow_client_resync: bool = False  # its stream ended with the resync notice and close 1013
    slow_client_in_order: bool = False  # what it did get: every event after its snapshot, in order
    resume_exact: bool = False  # the resume delivered exactly the missed events, in order


@dataclass
class Report:
    figures: list[Figure] = field(default_factory=list)
    checks: Checks = field(default_factory=Checks)


# -- the city and its alerts -----------------------------------------------------------------------


def _district(lat: float, lon: float, grid: int) -> int:
    south, west, north, east = EXTENT
    r = min(grid - 1, max(0, int((lat - south) / (north - south) * grid)))
    c = min(grid - 1, max(0, int((lon - west) / (east - west) * grid)))
    return r * grid + c


def _offset(lat: float, lon: float, north_m: float, east_m: float) -> tuple[float, float]:
    return lat + north_m / M_PER_DEG_LAT, lon + east_m / (M_PER_DEG_LAT * math.cos(math.radians(lat)))


def scattered_city(n: int, seed: int, prefix: str = "city-") -> list[Device]:
    """``n`` devices over the city: lamps in cabinets of 8 along a street, pipe nodes in a
    10 x 10 grid of DMAs, stations and drains grouped by district (4 x 4)."""
    rng = random.Random(seed)
    south, west, north, east = EXTENT
    devices: list[Device] = []
    for kind, (share, _, _) in CITY_MIX.items():
        count = max(1, round(n * share))
        cabinet_at = (0.0, 0.0)
        for i in range(count):
            lat, lon = rng.uniform(south, north), rng.uniform(west, east)
            attrs: dict[str, str] = {}
            if kind is DeviceKind.LAMP_POLE:
                cab = i // CITY_LAMPS_PER_CABINET
                if i % CITY_LAMPS_PER_CABINET == 0:
                    cabinet_at = (lat, lon)
                lat, lon = _offset(*cabinet_at, 0.0, 30.0 * (i % CITY_LAMPS_PER_CABINET))
                attrs = {"cabinet": f"{prefix}CAB-{cab:03d}", "feeder": f"{prefix}F-{cab // 2:03d}"}
            elif kind is DeviceKind.PIPE_NODE:
                attrs = {"dma": f"{prefix}DMA-{_district(lat, lon, DMA_GRID):03d}"}
            district = f"D{_district(lat, lon, DISTRICT_GRID):02d}"
            devices.append(Device(f"{prefix}{kind.value}-{i:04d}", kind, lat, lon, district, attrs))
    return devices


def burst_cabinets(cabinets: int, lamps: int) -> list[list[Device]]:
    """``cabinets`` cabinets of ``lamps`` lamps each, the lamps of one on a 30 m grid beside it; the
    cabinets on a grid over the city, far enough apart (for ten: 1.5 km) that each is an incident."""
    south, west, north, east = EXTENT
    side = math.ceil(math.sqrt(lamps))
    cols = math.ceil(math.sqrt(cabinets))
    rows = math.ceil(cabinets / cols)
    out = []
    for c in range(cabinets):
        lat0 = south + (north - south) * (c // cols) / rows
        lon0 = west + (east - west) * (c % cols) / cols
        group = []
        for i in range(lamps):
            lat, lon = _offset(lat0, lon0, 30.0 * (i // side), 30.0 * (i % side))
            attrs = {"cabinet": f"burst-CAB-{c:03d}", "feeder": f"burst-F-{c:03d}"}
            district = f"D{_district(lat, lon, DISTRICT_GRID):02d}"
            group.append(Device(f"burst-lamp-{c:03d}-{i:04d}", DeviceKind.LAMP_POLE, lat, lon, district, attrs))
        out.append(group)
    return out


class AlertMaker:
    """Distinct alerts, a millisecond apart, stamped from the moment the maker was made."""

    def __init__(self) -> None:
        self.t0 = now_us() - 60_000_000
        self.n = 0

    def __call__(self, device: Device, metric: str, value: float, baseline: float, detector: str) -> Alert:
        self.n += 1
        ts = self.t0 + 1_000 * self.n
        return Alert(
            alert_id=Alert.make_id(device.device_id, metric, ts, detector),
            device_id=device.device_id,
            kind=device.kind,
            metric=metric,
            ts_us=ts,
            value=value,
            score=0.9,
            detector=detector,
            baseline=baseline,
            spread=0.05 * baseline,
            window=60,
            seq=self.n,
            gateway_us=ts + 2_000,
            emitted_us=ts + 30_000,
            detectors=[detector],
            explanation=f"{metric} = {value:g}, expected {baseline:g}",
        )


def burst_batches(groups: list[list[Device]], batch: int, seed: int) -> list[list[Alert]]:
    """Every lamp of each cabinet dark (voltage 0), cabinet after cabinet, each cabinet's lamps
    in random order (Kafka delivers them by partition), cut into batches."""
    rng = random.Random(seed)
    make = AlertMaker()
    stream: list[Alert] = []
    for group in groups:
        lamps = list(group)
        rng.shuffle(lamps)
        stream += [make(d, "voltage_v", 0.0, 230.0, "ewma") for d in lamps]
    return [stream[i : i + batch] for i in range(0, len(stream), batch)]


def scattered_batches(city: list[Device], alerts: int, batch: int, seed: int) -> list[list[Alert]]:
    """Alerts on random devices of the city, on one of their kind's metrics, up or down."""
    rng = random.Random(seed)
    make = AlertMaker()
    stream = []
    for _ in range(alerts):
        d = rng.choice(city)
        _, metrics, baseline = CITY_MIX[d.kind]
        factor = rng.choice((0.3, 0.5, 1.8, 2.5))
        stream.append(make(d, rng.choice(metrics), baseline * factor, baseline, rng.choice(DETECTORS)))
    return [stream[i : i + batch] for i in range(0, len(stream), batch)]


# -- the server on a database of its own -------------------------------------------------------------


@contextlib.asynccontextmanager
async def scratch_centre(
    stack: Stack, tag: str, devices: Sequence[Device], plan: Plan, *, jit: bool = False
) -> AsyncIterator[tuple[ApiServer, Centre]]:
    """An IOC API on a new database with ``devices`` registered; the database is dropped after.
    ``jit=True`` turns PostgreSQL's JIT compilation on for the IOC's connections."""
    uid = uuid.uuid4().hex[:8]
    base = stack.settings.pg_dsn
    db = f"bench_ioc_{tag}_{uid}"
    async with await psycopg.AsyncConnection.connect(base, autocommit=True) as conn:
        await conn.execute(f'CREATE DATABASE "{db}"'.encode())
    try:
        settings = IocSettings(
            pg_dsn=base.rsplit("/", 1)[0] + "/" + db,
            topic_prefix=f"bench.{uid}.",
            group_id=f"bench-ioc-{uid}",
            port=0,
            tick_s=3600.0,
            # No pulses or metrics reads: the run times alert ingest and event fan-out alone.
            status_s=3600.0,
            pipeline_urls={},
            ws_queue_size=plan.ws_queue_size,
            pg_jit=jit,
        )
        async with ApiServer(settings, feed=False) as server:
            centre: Centre = server.app.state.centre
            async with centre.pool.connection() as conn:
                await schema.upsert_devices(conn, devices)
            yield server, centre
    finally:
        await schema.drop_database(base, db)


def wall_url(server: ApiServer, last_event_id: int | None = None) -> str:
    url = f"ws://127.0.0.1:{server.port}/ws/wall?token={server.token()}"
    return url if last_event_id is None else f"{url}&last_event_id={last_event_id}"


async def scalar(centre: Centre, query: str) -> int:
    async with centre.pool.connection() as conn:
        cur = await conn.execute(query.encode())
        row = await cur.fetchone()
        return int(row[0]) if row and row[0] is not None else 0


# -- 1. ingest --------------------------------------------------------------------------------------------


@dataclass
class Ingest:
    alerts: int
    seconds: float
    batch_ms: list[float]
    incidents: int
    unplaced: int

    @property
    def rate(self) -> float:
        return self.alerts / self.seconds


async def ingest(centre: Centre, batches: list[list[Alert]], progress: Progress, task: TaskID) -> Ingest:
    batch_ms = []
    started = time.perf_counter()
    for batch in batches:
        t = time.perf_counter()
        new = await centre.receive(batch)
        batch_ms.append((time.perf_counter() - t) * 1000)
        if len(new) != len(batch):
            raise RuntimeError(f"{len(batch) - len(new)} alerts of a batch were not new")
        progress.advance(task)
    seconds = time.perf_counter() - started
    return Ingest(
        alerts=sum(len(b) for b in batches),
        seconds=seconds,
        batch_ms=batch_ms,
        incidents=await scalar(centre, "SELECT count(*) FROM incidents"),
        unplaced=await scalar(centre, "SELECT count(*) FROM alerts WHERE incident_id IS NULL"),
    )


# -- the clients' process --------------------------------------------------------------------------------


def _recv(conn: Connection, timeout: float) -> Any:
    if not conn.poll(timeout):
        raise TimeoutError(f"no answer in {timeout:.0f} s")
    return conn.recv()


class Worker:
    """A process of WebSocket clients (``_worker_main``), driven over a pipe."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_worker_main, args=(child,), name="ioc-bench-clients", daemon=True)
        self._process.start()
        child.close()

    def send(self, message: dict[str, Any]) -> None:
        self._conn.send(message)

    async def recv(self, timeout: float = TIMEOUT_S) -> dict[str, Any]:
        got: dict[str, Any] = await asyncio.to_thread(_recv, self._conn, timeout)
        if "error" in got:
            raise RuntimeError(f"client process: {got['error']}")
        return got

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send({"cmd": "quit"})
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._conn.close()


def _worker_main(conn: Connection) -> None:
    asyncio.run(_worker_loop(conn))


async def _worker_loop(conn: Connection) -> None:
    while True:
        job: dict[str, Any] = await asyncio.to_thread(_recv, conn, 3600.0)
        try:
            if job["cmd"] == "quit":
                return
            if job["cmd"] == "fanout":
                conn.send(await _fanout_clients(conn, job))
            elif job["cmd"] == "connects":
                conn.send(await _time_connects(job))
        except Exception as exc:  # reported to the parent, which raises it
            conn.send({"error": repr(exc)})


async def _read(ws: ClientConnection, arrivals: list[tuple[int, float]]) -> None:
    async for raw in ws:
        t = time.monotonic()
        message = json.loads(raw)
        if "id" in message:  # pulses are unnumbered (and off during the run anyway)
            arrivals.append((int(message["id"]), t))


async def _slow_socket(url: str) -> socket.socket:
    """A connected socket with a small receive buffer (set before connecting, so the window stays small)."""
    host, port = url.removeprefix("ws://").split("/", 1)[0].split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_CLIENT_RCVBUF)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, SLOW_CLIENT_MSS)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    return sock


async def _fanout_clients(conn: Connection, job: dict[str, Any]) -> dict[str, Any]:
    url, k = job["url"], job["clients"]
    arrivals: list[list[tuple[int, float]]] = [[] for _ in range(k)]
    async with contextlib.AsyncExitStack() as stack:
        fast = await asyncio.gather(
            *(
                stack.enter_async_context(ws_connect(url, max_size=None, ping_interval=None, open_timeout=TIMEOUT_S))
                for _ in range(k)
            )
        )
        snapshots = [json.loads(await ws.recv()) for ws in fast]
        slow = None
        if job["slow"]:
            slow = await stack.enter_async_context(
                ws_connect(
                    url,
                    sock=await _slow_socket(url),
                    compression=None,
                    max_queue=1,
                    max_size=None,
                    ping_interval=None,
                    open_timeout=TIMEOUT_S,
                )
            )
        readers = [asyncio.create_task(_read(ws, got)) for ws, got in zip(fast, arrivals, strict=True)]
        conn.send({"ready": True})
        finish: dict[str, Any] = await asyncio.to_thread(_recv, conn, 600.0)
        last = int(finish["last_id"])
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(TIMEOUT_S):
                while any(not got or got[-1][0] < last for got in arrivals):
                    await asyncio.sleep(0.01)
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        out: dict[str, Any] = {"arrivals": arrivals, "snapshot_ids": [s["id"] for s in snapshots]}
        if slow is not None:
            # It reads at last: its snapshot, the events queued for it, then the resync and 1013
            # (or, had it not been dropped, every event and no end: a short wait then).
            messages: list[dict[str, Any]] = []
            code = None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TIMEOUT_S if finish["slow_dropped"] else 5.0):
                    try:
                        async for raw in slow:
                            message = json.loads(raw)
                            if message.get("type") != "pulse":
                                messages.append(message)
                    except ConnectionClosed as exc:
                        code = exc.rcvd.code if exc.rcvd else None
                    else:
                        code = slow.close_code
            out["slow"] = {
                "types": [m.get("type") for m in messages],
                "ids": [m.get("id") for m in messages],
                "code": code,
            }
    return out


async def _time_connects(job: dict[str, Any]) -> dict[str, Any]:
    url, last, expect = job["url"], job["last_id"], job["events"]
    resume_ms, snapshot_ms, exact, size = [], [], True, 0
    for _ in range(job["repeats"]):
        t = time.monotonic()
        async with ws_connect(f"{url}&last_event_id={last}", max_size=None, ping_interval=None) as ws:
            first = json.loads(await ws.recv())
            ids: list[int] = []
            while len(ids) < expect:
                message = json.loads(await ws.recv())
                if "id" in message:
                    ids.append(int(message["id"]))
            resume_ms.append((time.monotonic() - t) * 1000)
        exact = exact and first == {"type": "resume", "from": last} and ids == list(range(last + 1, last + expect + 1))
        t = time.monotonic()
        async with ws_connect(url, max_size=None, ping_interval=None) as ws:
            raw = await ws.recv()
            snapshot_ms.append((time.monotonic() - t) * 1000)
        size = len(raw)
        exact = exact and json.loads(raw)["type"] == "snapshot"
    return {"resume_ms": resume_ms, "snapshot_ms": snapshot_ms, "exact": exact, "snapshot_bytes": size}


# -- 2. fan-out ----------------------------------------------------------------------------------------------


class StampedQueue(asyncio.Queue[dict[str, Any]]):
    """A subscriber's queue that notes when the hub handed over each event (``Hub.publish``, right
    after the commit), unbounded."""

    def __init__(self) -> None:
        super().__init__()
        self.at: dict[int, float] = {}

    def put_nowait(self, item: dict[str, Any]) -> None:
        if "id" in item:
            self.at[int(item["id"])] = time.monotonic()
        super().put_nowait(item)


@dataclass
class Fanout:
    latencies_ms: list[float]
    events: int
    missing: int
    slow_dropped: bool = False
    slow_resync: bool = False
    slow_in_order: bool = False
    slow_received: int = 0


async def fanout(
    stack: Stack,
    worker: Worker,
    plan: Plan,
    city: list[Device],
    batches: list[list[Alert]],
    *,
    slow: bool,
    progress: Progress,
    task: TaskID,
) -> Fanout:
    async with scratch_centre(stack, "fanout", city, plan) as (server, centre):
        # A subscriber of our own notes when each event was published (it never falls behind).
        probe = centre.hub.subscribe({WALL})
        stamps = probe.queue = StampedQueue()
        probe.limit = 1 << 62
        worker.send({"cmd": "fanout", "url": wall_url(server), "clients": plan.clients, "slow": slow})
        await worker.recv()
        want = plan.clients + 1 + (1 if slow else 0)
        async with asyncio.timeout(TIMEOUT_S):
            while len(centre.hub) < want:
                await asyncio.sleep(0.01)
        dropped = False
        for batch in batches:
            await centre.receive(batch)
            dropped = dropped or len(centre.hub) < want
            progress.advance(task)
            await asyncio.sleep(plan.fanout_gap)
        centre.hub.unsubscribe(probe)
        sent_at = stamps.at
        worker.send({"last_id": max(sent_at), "slow_dropped": dropped})
        got = await worker.recv(TIMEOUT_S + 30)
    latencies = []
    missing = 0
    for arrivals, snapshot_id in zip(got["arrivals"], got["snapshot_ids"], strict=True):
        seen = dict(arrivals)
        expected = [i for i in sent_at if i > snapshot_id]
        missing += len(sent_at) - sum(1 for i in expected if i in seen)
        latencies += [(seen[i] - sent_at[i]) * 1000 for i in expected if i in seen]
    result = Fanout(latencies, len(sent_at), missing)
    if slow:
        s = got["slow"]
        result.slow_dropped = dropped
        result.slow_resync = bool(s["types"]) and s["types"][-1] == "resync" and s["code"] == 1013
        events = list(s["ids"][1:-1])
        snapshot_id = s["ids"][0] if s["ids"] else None
        result.slow_received = len(events)
        result.slow_in_order = (
            s["types"][:1] == ["snapshot"]
            and snapshot_id is not None
            and events == [i for i in sorted(sent_at) if i > snapshot_id][: len(events)]
        )
    return result


# -- the run ----------------------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else math.nan


async def run(plan: Plan, stack: Stack) -> Report:
    report = Report()
    checks = report.checks

    def add(name: str, value: float, unit: str, note: str = "") -> None:
        report.figures.append(Figure(name, value, unit, note))

    city = scattered_city(plan.city, plan.seed)
    cabinets = burst_cabinets(plan.cabinets, plan.lamps_per_cabinet)
    burst = burst_batches(cabinets, plan.burst_batch, plan.seed + 2)
    scattered = scattered_batches(city, plan.scattered_alerts, plan.scattered_batch, plan.seed + 3)
    spread = scattered_batches(city, plan.fanout_batches * plan.fanout_batch, plan.fanout_batch, plan.seed + 4)

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    worker = Worker()  # starts while the ingest runs
    try:
        with progress:
            task = progress.add_task("ingest: cabinet bursts", total=len(burst))
            async with scratch_centre(stack, "burst", [d for g in cabinets for d in g] + city, plan) as (_, centre):
                b = await ingest(centre, burst, progress, task)
            checks.burst_alerts_unplaced = b.unplaced
            progress.remove_task(task)

            task = progress.add_task("ingest: scattered alerts", total=len(scattered))
            async with scratch_centre(stack, "scattered", city, plan) as (server, centre):
                s = await ingest(centre, scattered, progress, task)
                checks.scattered_alerts_unplaced = s.unplaced
                progress.remove_task(task)
                # Enough events to resume from (a tiny run may need more).
                more = scattered_batches(city, plan.resume_events, plan.scattered_batch, plan.seed + 5)
                while await scalar(centre, "SELECT last_value FROM ioc_events_event_id_seq") < plan.resume_events:
                    await centre.receive(more.pop(0))
                task = progress.add_task(f"resume {plan.resume_events} events / snapshot", total=None)
                last = await scalar(centre, "SELECT last_value FROM ioc_events_event_id_seq")
                worker.send(
                    {
                        "cmd": "connects",
                        "url": wall_url(server),
                        "last_id": last - plan.resume_events,
                        "events": plan.resume_events,
                        "repeats": plan.repeats,
                    }
                )
                connects = await worker.recv(TIMEOUT_S * plan.repeats)
                open_incidents = await scalar(
                    centre,
                    "SELECT count(*) FROM incidents WHERE state IN ('new', 'acknowledged', 'dispatched', "
                    "'en_route', 'on_site')",
                )
                progress.remove_task(task)
            checks.resume_exact = bool(connects["exact"])

            # The same scattered alerts with PostgreSQL's JIT on (see the module's docstring).
            task = progress.add_task("ingest: scattered alerts, jit on", total=len(scattered))
            async with scratch_centre(stack, "jit", city, plan, jit=True) as (_, centre):
                s_jit = await ingest(centre, scattered, progress, task)
            progress.remove_task(task)

            runs: dict[bool, Fanout] = {}
            for slow in (False, True):
                label = "with a slow client" if slow else "all fast"
                task = progress.add_task(f"fan-out to {plan.clients} clients, {label}", total=len(spread))
                runs[slow] = await fanout(stack, worker, plan, city, spread, slow=slow, progress=progress, task=task)
                progress.remove_task(task)
    finally:
        worker.close()
    fast, with_slow = runs[False], runs[True]
    checks.fanout_missing = fast.missing
    checks.fanout_missing_with_slow_client = with_slow.missing
    checks.slow_client_dropped = with_slow.slow_dropped
    checks.slow_client_resync = with_slow.slow_resync
    checks.slow_client_in_order = with_slow.slow_in_order

    for name, ing, what in (
        ("burst", b, f"{plan.cabinets} cabinets x {plan.lamps_per_cabinet} lamps, batches of {plan.burst_batch}"),
        ("scattered", s, f"{len(city)} devices, batches of {plan.scattered_batch}"),
    ):
        add(f"ioc_ingest_{name}", ing.rate, "alerts/s", f"{what}: {ing.alerts} alerts in {ing.seconds:.1f} s")
        add(f"ioc_ingest_{name}_batch_p50", pct(ing.batch_ms, 50), "ms", f"{len(ing.batch_ms)} batches")
        add(f"ioc_ingest_{name}_batch_p99", pct(ing.batch_ms, 99), "ms")
        tenth = max(1, len(ing.batch_ms) // 10)
        add(f"ioc_ingest_{name}_batch_p50_first_tenth", pct(ing.batch_ms[:tenth], 50), "ms", "the first tenth")
        add(f"ioc_ingest_{name}_batch_p50_last_tenth", pct(ing.batch_ms[-tenth:], 50), "ms", "the last tenth")
        add(f"ioc_ingest_{name}_incidents", ing.incidents, "incidents", "opened by the run")
    add("ioc_ingest_scattered_jit_on", s_jit.rate, "alerts/s", "the same alerts, PostgreSQL's JIT on")
    add("ioc_ingest_scattered_jit_on_batch_p50", pct(s_jit.batch_ms, 50), "ms")
    add("ioc_ingest_scattered_jit_on_batch_p99", pct(s_jit.batch_ms, 99), "ms")

    for suffix, fan in (("", fast), ("_with_slow_client", with_slow)):
        who = f"{plan.clients} clients x {fan.events} events" + (" + 1 slow client" if suffix else "")
        add(f"ioc_ws_fanout_p50{suffix}", pct(fan.latencies_ms, 50), "ms", who)
        add(f"ioc_ws_fanout_p99{suffix}", pct(fan.latencies_ms, 99), "ms", "published -> the client has it")
        add(f"ioc_ws_fanout_max{suffix}", max(fan.latencies_ms, default=math.nan), "ms")
        delivered = 100 * (1 - fan.missing / (plan.clients * fan.events)) if fan.events else math.nan
        add(f"ioc_ws_fanout_delivered{suffix}", delivered, "%", "of (client, event) pairs")
    add(
        "ioc_ws_slow_client_events_before_resync",
        with_slow.slow_received if with_slow.slow_resync else math.nan,
        "events",
        f"ws_queue_size {plan.ws_queue_size} + what its TCP buffers held",
    )

    add(
        f"ioc_resume_{plan.resume_events}_events",
        pct(connects["resume_ms"], 50),
        "ms",
        f"median of {plan.repeats}, connect to last",
    )
    add("ioc_snapshot_connect", pct(connects["snapshot_ms"], 50), "ms", f"{open_incidents} open incidents")
    add("ioc_snapshot_size", connects["snapshot_bytes"] / 1024, "KiB", "the snapshot message")

    out = Console()
    if not out.is_terminal:
        out = Console(width=140)
    table = Table(title="IOC: ingest, live fan-out, resume")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("note")
    for f in report.figures:
        table.add_row(f.name, f.text(), f.note)
    out.print(table)
    for f in report.figures:
        print(f"{f.name}: {f.text()}")
    return report


def parse_args(argv: Sequence[str] | None = None) -> Plan:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    defaults = Plan()
    for name, value in vars(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    return Plan(**vars(parser.parse_args(argv)))


def main(argv: Sequence[str] | None = None) -> Report:
    plan = parse_args(argv)
    log.configure(level="WARNING")  # to stderr: stdout is for the figures
    stack = Stack(StackSettings(install_packages=False))
    if not all(c.reachable for c in stack.status() if c.name == "postgres"):
        raise SystemExit("PostgreSQL is not running: `cityops stack up` first")
    return asyncio.run(run(plan, stack))


if __name__ == "__main__":
    main()
