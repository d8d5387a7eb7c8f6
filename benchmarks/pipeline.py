"""End-to-end latency and throughput of the pipeline on the real stack, side by side for two
gateway producer settings (linger 0 ms vs the default 5 ms).

Each variant gets its own topics, database and devices; devices publish over MQTT (one
session each, QoS 1), spikes are injected after the detectors' warm-up, and a WebSocket client
on the IOC API timestamps every alert. Needs `cityops stack up`.

    python -m benchmarks.pipeline [--devices 40] [--per-device 200] [--interval 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
import websockets
from rich.console import Console

from cityops.core import schema
from cityops.core.contracts import DeviceKind, Topics
from cityops.core.kafka import ensure_topics
from cityops.devstack import Stack, StackSettings
from firmware_sim import EventKind, Scenario, Scheduled, SimSettings, Simulator, build_city
from firmware_sim.scenario import CityConfig, DeviceClass, Truth
from gateway import Gateway, GatewaySettings
from ioc import ApiServer, IocSettings
from stream import StreamService, StreamSettings

console = Console(stderr=True)


@dataclass
class Result:
    publish_rate: float
    rows: int
    stored_rows: int
    drain_s: float
    latencies_ms: list[float]
    spikes: int
    # Per hop, from the alert's own timestamps: device -> gateway -> stream emit -> WebSocket.
    hops_ms: dict[str, list[float]]


async def _count(dsn: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT count(*) FROM readings")
        row = await cur.fetchone()
        return int(row[0]) if row else 0


async def run_variant(stack: Stack, linger_ms: int, args: argparse.Namespace) -> Result:
    uid = uuid.uuid4().hex[:8]
    topics = Topics(prefix=f"bench.{uid}.")
    await ensure_topics(stack.settings.kafka_bootstrap, topics.all(), partitions=6)
    base = stack.settings.pg_dsn
    db = f"bench_{uid}"
    async with await psycopg.AsyncConnection.connect(base, autocommit=True) as conn:
        await conn.execute(f'CREATE DATABASE "{db}"'.encode())
    dsn = base.rsplit("/", 1)[0] + "/" + db
    per_kind = max(1, args.devices // len(DeviceKind))
    probe = Scenario(
        seed=3,
        city=CityConfig(id_prefix=f"b{uid}-"),
        devices={k: DeviceClass(count=per_kind, interval_s=args.interval) for k in DeviceKind},
        truth=Truth(file="", kafka=False),
    )
    devices = build_city(probe).devices
    stack.register(devices)
    # One spike per device every 60 readings, after the 30-reading warm-up.
    spikes = [
        Scheduled(
            kind=EventKind.SPIKE, at_s=s * args.interval, target=d.device_id, metric=_metric(d.kind), magnitude=40
        )
        for d in devices
        for s in range(60, args.per_device, 60)
    ]
    scenario = probe.model_copy(update={"incidents": spikes})
    common: dict[str, Any] = {"topic_prefix": topics.prefix, "pg_dsn": dsn}
    try:
        async with (
            StreamService(StreamSettings(**common, group_id=f"b-{uid}", metrics_port=-1)) as stream,
            ApiServer(IocSettings(**common, group_id=f"b-ioc-{uid}", port=0)) as api,
            Gateway(
                GatewaySettings(
                    **common,
                    mqtt_client_id=f"b-gw-{uid}",
                    mqtt_clean_session=True,
                    metrics_port=-1,
                    kafka_linger_ms=linger_ms,
                )
            ) as gateway,
            asyncio.TaskGroup() as tasks,
        ):
            services = [tasks.create_task(stream.run()), tasks.create_task(gateway.run())]
            arrivals: dict[tuple[str, str, int], tuple[float, dict[str, Any]]] = {}
            async with websockets.connect(f"ws://127.0.0.1:{api.port}/ws/wall?token={api.token()}") as ws:
                await ws.recv()

                async def listen() -> None:
                    async for raw in ws:
                        msg = json.loads(raw)
                        for a in msg.get("alerts", []) if msg.get("type") == "alerts" else []:
                            arrivals.setdefault((a["device_id"], a["metric"], a["seq"]), (time.time(), a))

                listener = tasks.create_task(listen())
                sim = Simulator(SimSettings(**common, tick_s=0.005), scenario)
                async with sim:
                    started = time.monotonic()
                    published = await sim.run(readings_per_device=args.per_device)
                    elapsed = time.monotonic() - started
                    assert sim.truth is not None
                    truths = [t for t in sim.truth.events if t.kind == "spike"]
                drain_start = time.monotonic()
                deadline = drain_start + 120
                while await _count(dsn) < published.values_acked and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                drain = time.monotonic() - drain_start
                await asyncio.sleep(1.0)  # last alerts
                listener.cancel()
            for task in services:
                task.cancel()
        stored = await _count(dsn)
        latencies = []
        hops: dict[str, list[float]] = {"device_to_gateway": [], "gateway_to_alert": [], "alert_to_websocket": []}
        for t in truths:
            got = next(
                (
                    v
                    for (device, metric, _), v in arrivals.items()
                    if device == t.device_ids[0] and metric == t.metrics[0] and t.start_us <= v[1]["ts_us"] < t.end_us
                ),
                None,
            )
            if got is not None:
                arrival, alert = got
                latencies.append((arrival - alert["ts_us"] / 1e6) * 1000)
                hops["device_to_gateway"].append((alert["gateway_us"] - alert["ts_us"]) / 1000)
                hops["gateway_to_alert"].append((alert["emitted_us"] - alert["gateway_us"]) / 1000)
                hops["alert_to_websocket"].append(arrival * 1000 - alert["emitted_us"] / 1000)
        return Result(published.acked / elapsed, published.values_acked, stored, drain, latencies, len(truths), hops)
    finally:
        stack.unregister([d.device_id for d in devices])
        await schema.drop_database(base, db)


def _metric(kind: str) -> str:
    return {
        "lamp_pole": "voltage_v",
        "pipe_node": "pressure_kpa",
        "water_quality": "conductivity_uscm",
        "env_station": "no2_ugm3",
        "drainage": "level_cm",
    }[kind]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--per-device", type=int, default=200)
    parser.add_argument("--interval", type=float, default=0.05)
    args = parser.parse_args()
    stack = Stack(StackSettings(install_packages=False))
    if not all(c.reachable for c in stack.status()):
        raise SystemExit("the stack is not running: `cityops stack up` first")
    figures = []
    for linger in (0, 5):
        with console.status(f"pipeline with gateway linger {linger} ms"):
            r = await run_variant(stack, linger, args)
        name = f"linger{linger}ms"
        lat = np.array(r.latencies_ms) if r.latencies_ms else np.array([float("nan")])
        figures += [
            f"{name}_publish_rate: {r.publish_rate:.0f} msg/s",
            f"{name}_rows_expected: {r.rows} rows",
            f"{name}_rows_stored: {r.stored_rows} rows",
            f"{name}_drain_after_last_publish: {r.drain_s * 1000:.0f} ms",
            f"{name}_spike_alerts_received: {len(r.latencies_ms)} of {r.spikes}",
            f"{name}_alert_latency_p50: {np.percentile(lat, 50):.1f} ms",
            f"{name}_alert_latency_p95: {np.percentile(lat, 95):.1f} ms",
            f"{name}_alert_latency_max: {lat.max():.1f} ms",
        ]
        figures += [f"{name}_{hop}_p50: {np.percentile(v, 50):.1f} ms" for hop, v in r.hops_ms.items() if v]
    print("\n".join(figures))


if __name__ == "__main__":
    asyncio.run(main())
