"""Silence judged fairly: staleness alerts in a city at full rate, through a stalled stream
service and a concentrator that stops.

A private stack (``benchmarks.faults.Harness``: its own Mosquitto, Kafka and PostgreSQL, the
gateway, the stream service and the IOC as processes) takes a concentrator city of lamp poles
(``--devices``, default 10,000, 1,000 per concentrator, one reading of 12 metrics every
``--interval`` seconds, default 5: 24,000 rows/s, about what this 2-core box stores with the
whole stack and the simulator on it). Side by side in one run:

* **the stream stalls**: after the warm-up the stream process is frozen (SIGSTOP) for
  ``--stall`` seconds, longer than any staleness limit, while every device goes on reporting,
  then thawed. No device was silent: every staleness alert raised for it is false.
* **a concentrator stops** for the last ``--silent`` seconds: its devices really are silent
  (the truth). They should give one staleness alert per device (not one per metric) and one
  incident, of type ``concentrator_offline``.
* **everyone else** reports throughout: every staleness alert on them is false.

Counted from the IOC's ``alerts`` and ``incidents`` tables. Needs the binaries and jars that
``cityops stack up`` installed; the shared stack is left alone.

    python -m benchmarks.silence [--devices 10000] [--interval 5] [--minutes 10] [--stall 45]
                                 [--silent 120]

``rows_stored`` against ``rows_offered`` and ``pipeline_behind_at_end`` say whether the box kept up:
what the pipeline has not read it has not judged, so after the run it is given time to catch up
(``--drain-deadline``) before anything is counted.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
import uuid

import psycopg
from rich.console import Console
from rich.table import Table

from cityops.core import log, schema
from cityops.core.contracts import DeviceKind
from firmware_sim import Scenario, build_city
from firmware_sim.scenario import CityConfig, Concentrator, DeviceClass, Truth

from .faults import Harness, Ledger

console = Console(stderr=True)
METRICS_PER_LAMP = 12


async def _scalar(dsn: str, query: str, *params: object) -> int:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        row = await (await conn.execute(query, params)).fetchone()
        return int(row[0]) if row and row[0] is not None else 0


async def _staleness(dsn: str, devices: list[str], since: float) -> tuple[int, int]:
    """Staleness alerts on these devices since the wall-clock time ``since``: (alerts, devices)."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        row = await (
            await conn.execute(
                "SELECT count(*), count(DISTINCT device_id) FROM alerts"
                " WHERE detector = 'staleness' AND device_id = ANY(%s) AND received_at >= to_timestamp(%s)",
                (devices, since),
            )
        ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


async def _newest_s(dsn: str) -> float:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        row = await (await conn.execute("SELECT extract(epoch FROM max(gateway_at)) FROM readings")).fetchone()
    return float(row[0]) if row and row[0] is not None else 0.0


async def _until_stable(dsn: str, query: str, *, deadline_s: float, quiet_s: float = 15.0) -> None:
    """Until ``query``'s count has not moved for ``quiet_s``, or the deadline."""
    deadline = time.monotonic() + deadline_s
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = await _scalar(dsn, query)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        await asyncio.sleep(2.0)


async def run(args: argparse.Namespace) -> list[str]:
    prefix = f"s{uuid.uuid4().hex[:5]}-"
    per = args.per_concentrator
    scenario = Scenario(
        seed=11,
        start="now",
        mode="concentrator",
        city=CityConfig(id_prefix=prefix),
        devices={DeviceKind.LAMP_POLE: DeviceClass(count=args.devices, interval_s=args.interval)}
        | {k: DeviceClass(count=0) for k in DeviceKind if k is not DeviceKind.LAMP_POLE},
        concentrator=Concentrator(devices_per_concentrator=per),
        truth=Truth(file="", kafka=False),
    )
    city = build_city(scenario)
    ids = [d.device_id for d in city.devices]
    victim_id = city.devices[0].concentrator
    victims = [d.device_id for d in city.devices if d.concentrator == victim_id]
    others = [d for d in ids if d not in set(victims)]
    total_s = args.minutes * 60.0
    warm_s = max(60.0, 40 * args.interval)
    with console.status("starting a private stack and the services") as status:
        async with Harness(devices=args.devices, rate=args.devices / args.interval, keep=args.keep) as harness:
            dsn = harness.settings.pg_dsn
            await asyncio.to_thread(harness.stack.register, city.devices)
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                await schema.upsert_devices(conn, city.devices)
                await schema.upsert_districts(conn, city.outlines())
            sim = harness.simulator(scenario, city, Ledger())
            stream = harness.services["stream"]
            async with sim, asyncio.TaskGroup() as tasks:
                sim_task = tasks.create_task(sim.run())
                began = time.time()
                try:
                    status.update(f"{args.devices:,} lamps reporting; warming up for {warm_s:.0f} s")
                    await asyncio.sleep(warm_s)
                    stored_before = await _scalar(dsn, "SELECT count(*) FROM readings")
                    status.update(f"the stream service frozen for {args.stall:.0f} s")
                    stalled_at = time.time()
                    stream.signal(signal.SIGSTOP)
                    await asyncio.sleep(args.stall)
                    stream.signal(signal.SIGCONT)
                    quiet_at = began + total_s - args.silent
                    while time.time() < quiet_at:
                        status.update(f"city reporting; the concentrator stops in {quiet_at - time.time():.0f} s")
                        await asyncio.sleep(min(5.0, max(0.0, quiet_at - time.time())))
                    victim = next(link for link in sim.links if link.username == victim_id)
                    victim.power(False)
                    silent_at = time.time()
                    while time.time() < began + total_s:
                        status.update(f"concentrator {victim_id} silent; {began + total_s - time.time():.0f} s left")
                        await asyncio.sleep(min(5.0, max(0.0, began + total_s - time.time())))
                finally:
                    sim_task.cancel()
            # What the pipeline has not read yet has not been judged: let it catch up, so that
            # the concentrator's silence is in what it read (the rest of the city falling
            # silent as the simulator stops is one platform alert, not counted here).
            behind_s = time.time() - await _newest_s(dsn)
            status.update(f"the pipeline catching up ({behind_s:.0f} s behind)")
            await _until_stable(dsn, "SELECT count(*) FROM readings", deadline_s=args.drain_deadline)
            await asyncio.sleep(2 * 10.0)  # two staleness checks and the IOC's placement
            await _until_stable(dsn, "SELECT count(*) FROM alerts", deadline_s=120)
            stored = await _scalar(dsn, "SELECT count(*) FROM readings") - stored_before
            false_alerts, false_devices = await _staleness(dsn, others, began)
            early_alerts, _ = await _staleness(dsn, victims, began)
            async with await psycopg.AsyncConnection.connect(dsn) as conn:
                rows = await (
                    await conn.execute(
                        "SELECT i.type, cardinality(i.assets) FROM incidents i"
                        " WHERE 'staleness' = ANY(i.detectors) ORDER BY i.incident_id"
                    )
                ).fetchall()
                true_row = await (
                    await conn.execute(
                        "SELECT count(*), count(DISTINCT device_id) FROM alerts WHERE detector = 'staleness'"
                        " AND device_id = ANY(%s) AND received_at >= to_timestamp(%s)",
                        (victims, silent_at),
                    )
                ).fetchone()
                stall_row = await (
                    await conn.execute(
                        "SELECT count(*) FROM alerts WHERE detector = 'staleness'"
                        " AND received_at >= to_timestamp(%s) AND received_at < to_timestamp(%s)",
                        (stalled_at, silent_at),
                    )
                ).fetchone()
    true_alerts, true_devices = (int(true_row[0]), int(true_row[1])) if true_row else (0, 0)
    stall_alerts = int(stall_row[0]) if stall_row else 0
    false_victim = early_alerts - true_alerts
    false_total = false_alerts + false_victim
    device_hours = args.devices * total_s / 3600.0
    concentrator_incidents = sum(1 for t, _ in rows if t == "concentrator_offline")
    other_incidents = len(rows) - concentrator_incidents
    table = Table(title="silence")
    for col in ("what", "devices", "staleness alerts", "devices alerted", "incidents"):
        table.add_column(col)
    table.add_row(f"stream frozen {args.stall:.0f} s, all reporting", f"{args.devices:,}", str(stall_alerts), "-", "-")
    table.add_row(
        f"concentrator stopped {args.silent:.0f} s",
        f"{len(victims):,}",
        str(true_alerts),
        f"{true_devices:,}",
        f"{concentrator_incidents} concentrator_offline",
    )
    table.add_row(
        "everyone else, throughout", f"{len(others):,}", str(false_alerts), str(false_devices), str(other_incidents)
    )
    console.print(table)
    return [
        f"silence_rows_offered: {args.devices * METRICS_PER_LAMP / args.interval:.0f} rows/s",
        f"silence_rows_stored: {stored / (total_s - warm_s):.0f} rows/s",
        f"silence_pipeline_behind_at_end: {behind_s:.0f} s",
        f"silence_stall: {args.stall:.0f} s",
        f"silence_stall_staleness_alerts: {stall_alerts} alerts",
        f"silence_false_staleness_alerts: {false_total} alerts",
        f"silence_false_staleness_per_1000_device_hours: {1000 * false_total / device_hours:.2f} alerts",
        f"silence_concentrator_devices: {len(victims)} devices",
        f"silence_concentrator_series: {len(victims) * METRICS_PER_LAMP} series",
        f"silence_concentrator_staleness_alerts: {true_alerts} alerts",
        f"silence_concentrator_devices_alerted: {true_devices} devices",
        f"silence_concentrator_incidents: {concentrator_incidents} incidents",
        f"silence_other_staleness_incidents: {other_incidents} incidents",
    ]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--per-concentrator", type=int, default=1_000)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between a lamp's readings")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--stall", type=float, default=45.0, help="seconds the stream process is frozen")
    parser.add_argument("--silent", type=float, default=120.0, help="seconds the concentrator is stopped at the end")
    parser.add_argument("--drain-deadline", type=float, default=900.0, help="seconds the pipeline may take to catch up")
    parser.add_argument("--keep", action="store_true", help="keep the private stack's state directory (logs)")
    args = parser.parse_args()
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    log.configure("WARNING")
    for line in await run(args):
        print(line)


if __name__ == "__main__":
    asyncio.run(main())
