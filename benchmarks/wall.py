"""The wall screen's cost on a large city: the status check and the snapshot.

Every ``status_s`` (10 s) the IOC works out every device's state, the vital signs and the KPIs
(``Centre.city_status``), and every wall screen that connects gets all of it in its snapshot.
Both read the one-minute rollup, so they are measured on a city of ``--devices`` devices with
``--metrics`` series each and ``--history-min`` minutes of rollup rows (native storage, in a
database created and dropped here), side by side:

1. the status check with the rollup's ``bucket`` index (``cityops/core/schema.py``), and without it
   (dropped for the run): the index is what keeps the check from reading the whole rollup;
2. a wall screen's snapshot over a real WebSocket: time from connecting to the whole snapshot,
   and its size;
3. the ``pulse`` every wall screen gets every ``status_s``: its size, with a tenth of the city
   offline (a pulse names every device that is not healthy).

Median of ``--repeats``. Needs `cityops stack up`.

    python -m benchmarks.wall [--devices 5000] [--metrics 3] [--history-min 720] [--repeats 5]

Prints a table, then every figure on a line of its own as ``name: value unit``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta

import psycopg
import websockets
from rich.console import Console
from rich.table import Table

from benchmarks._figures import Figure
from cityops.core import schema
from cityops.core.contracts import DeviceKind
from cityops.core.registry import Device
from cityops.core.settings import DatabaseSettings
from ioc import ApiServer, IocSettings
from ioc.centre import Centre
from ioc.events import jsonable


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.wall", description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=5000)
    p.add_argument("--metrics", type=int, default=3)
    p.add_argument("--history-min", type=int, default=720)
    p.add_argument("--repeats", type=int, default=5)
    return p.parse_args(argv)


def city(n: int) -> list[Device]:
    side = max(1, int(n**0.5))
    return [
        Device(f"dev-{i:06d}", DeviceKind.ENV_STATION, lat, lon, f"D{i % 8}")
        for i in range(n)
        if (lat := 52.34 + 0.05 * (i // side) / side) and (lon := 4.85 + 0.09 * (i % side) / side)
    ]


async def fill(centre: Centre, devices: list[Device], metrics: int, minutes: int) -> int:
    """Rollup rows for every series; a tenth of the devices fell silent half an hour ago."""
    async with centre.pool.connection() as conn:
        await schema.upsert_devices(conn, devices)
        now = centre.clock().replace(second=0, microsecond=0)
        await conn.execute(
            """
            INSERT INTO readings_1m (bucket, device_id, metric, n, mean, min, max)
            SELECT b, d.device_id, 'm' || m, 12, 1.0, 0.5, 1.5
            FROM devices d, generate_series(1, %(metrics)s) m,
                 generate_series(%(start)s::timestamptz, %(end)s::timestamptz, interval '1 minute') b
            WHERE b < %(end)s - CASE WHEN right(d.device_id, 1) = '7' THEN interval '30 minutes' ELSE interval '0' END
            """,
            {"metrics": metrics, "start": now - timedelta(minutes=minutes), "end": now},
        )
        await conn.execute("ANALYZE readings_1m")
        cur = await conn.execute("SELECT count(*) FROM readings_1m")
        row = await cur.fetchone()
        return int(row[0]) if row else 0


async def status_ms(centre: Centre, repeats: int) -> tuple[float, dict[str, int]]:
    times = []
    states: dict[str, int] = {}
    for _ in range(repeats):
        t = time.perf_counter()
        async with centre.events.read() as unit:
            status = await centre.city_status(unit)
        times.append((time.perf_counter() - t) * 1000)
        states = status["vitals"]["devices_by_state"]
    return statistics.median(times), states


async def snapshot(server: ApiServer, repeats: int) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(repeats):
        t = time.perf_counter()
        async with websockets.connect(
            f"ws://127.0.0.1:{server.port}/ws/wall?token={server.token()}", max_size=None
        ) as ws:
            raw = await ws.recv()
        times.append((time.perf_counter() - t) * 1000)
        size = len(raw)
        assert json.loads(raw)["type"] == "snapshot"
    return statistics.median(times), size


async def run(args: argparse.Namespace) -> list[Figure]:
    base = DatabaseSettings().pg_dsn
    uid = uuid.uuid4().hex[:8]
    db = f"bench_wall_{uid}"
    async with await psycopg.AsyncConnection.connect(base, autocommit=True) as conn:
        await conn.execute(f'CREATE DATABASE "{db}"'.encode())
    console = Console(stderr=True)
    try:
        settings = IocSettings(
            pg_dsn=base.rsplit("/", 1)[0] + "/" + db,
            topic_prefix=f"bench.{uid}.",
            port=0,
            tick_s=3600.0,
            status_s=3600.0,
            pipeline_urls={},
            storage_mode=schema.StorageMode.NATIVE,
        )
        async with ApiServer(settings, feed=False) as server:
            centre: Centre = server.app.state.centre
            devices = city(args.devices)
            size = f"{args.devices} devices x {args.metrics} metrics x {args.history_min} min"
            with console.status(f"filling the rollup: {size}"):
                rows = await fill(centre, devices, args.metrics, args.history_min)
            indexed, states = await status_ms(centre, args.repeats)
            async with centre.pool.connection() as conn:
                await conn.execute("DROP INDEX readings_1m_bucket")
            bare, states_bare = await status_ms(centre, args.repeats)
            if states_bare != states:
                raise RuntimeError(f"the index changed the answer: {states} vs {states_bare}")
            async with centre.pool.connection() as conn:
                await conn.execute("CREATE INDEX readings_1m_bucket ON readings_1m (bucket)")
            snap_ms, snap_bytes = await snapshot(server, args.repeats)
            pulse = await centre.status()
            pulse_bytes = len(json.dumps(jsonable(pulse)))
    finally:
        await schema.drop_database(base, db)

    figures = [
        Figure("wall_rollup_rows", rows, "rows"),
        Figure("wall_status_ms", indexed, "ms", "device states, vitals, KPIs; bucket index"),
        Figure("wall_status_no_index_ms", bare, "ms", "the same without the bucket index"),
        Figure("wall_snapshot_ms", snap_ms, "ms", "connect to whole snapshot"),
        Figure("wall_snapshot_kib", snap_bytes / 1024, "KiB"),
        Figure("wall_pulse_kib", pulse_bytes / 1024, "KiB", f"{len(pulse['devices'])} devices not healthy"),
        Figure("wall_devices_offline", states.get("offline", 0), "devices", "a tenth silent for 30 min"),
    ]
    table = Table(title=f"wall screen, {args.devices} devices, {rows} rollup rows")
    for col in ("figure", "value", "note"):
        table.add_column(col)
    for f in figures:
        table.add_row(f.name, f.text(), f.note)
    console.print(table)
    return figures


def main(argv: Sequence[str] | None = None) -> None:
    figures = asyncio.run(run(parse(argv)))
    for f in figures:
        print(f"{f.name}: {f.text()}")


if __name__ == "__main__":
    main()
