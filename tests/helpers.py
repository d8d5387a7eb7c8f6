"""Helpers for tests against the real stack."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt
import httpx
import psycopg
from aiokafka import AIOKafkaConsumer

from cityops.core.contracts import Alert, DeviceKind
from cityops.core.registry import Device, device_password
from cityops.devstack import Stack
from firmware_sim.scenario import CityConfig, DeviceClass, Scenario, Truth


def small_scenario(uid: str, *, per_kind: int = 2, interval_s: float = 10.0, **fields: object) -> Scenario:
    """A quiet city of ``per_kind`` devices of each kind, ids prefixed per test, starting now."""
    base: dict[str, object] = {
        "seed": 1,
        "start": "now",
        "city": CityConfig(id_prefix=f"t{uid}-"),
        "devices": {k: DeviceClass(count=per_kind, interval_s=interval_s) for k in DeviceKind},
        "truth": Truth(file="", kafka=False),
    }
    return Scenario.model_validate({**base, **fields})


async def eventually(check: Callable[[], Awaitable[object]], *, timeout: float = 30.0, interval: float = 0.2) -> None:
    """Poll an async predicate until it is true; fail with its last value otherwise."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: object = None
    while asyncio.get_running_loop().time() < deadline:
        last = await check()
        if last:
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


async def read_topic(bootstrap: str, topic: str, *, expect: int, timeout: float = 30.0) -> list[bytes]:
    """Read a topic from the beginning (no group) until ``expect`` messages or the timeout."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    out: list[bytes] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(out) < expect and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            out += [r.value or b"" for records in batch.values() for r in records]
    finally:
        await consumer.stop()
    return out


async def scalar(dsn: str, query: str) -> object:
    """The first column of the first row of ``query`` in a fresh connection."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(query.encode())
        row = await cur.fetchone()
        return row[0] if row else None


async def count_rows(dsn: str) -> int:
    return int(await scalar(dsn, "SELECT count(*) FROM readings"))  # type: ignore[call-overload]


async def produce(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    """Send (key, value) pairs to ``topic`` and wait until Kafka has each."""
    from cityops.core.kafka import make_producer

    producer = make_producer(bootstrap, client_id="test")
    await producer.start()
    try:
        for key, value in messages:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


def make_alert(device: str, ts_us: int, seq: int = 1) -> Alert:
    """A pressure alert as the stream tier would raise it."""
    return Alert(
        Alert.make_id(device, "pressure_kpa", ts_us, "ewma"),
        device,
        "pipe_node",
        "pressure_kpa",
        ts_us,
        510.0,
        1.0,
        "ewma",
        420.0,
        2.1,
        60,
        seq,
        ts_us + 1000,
        ts_us + 2000,
        detectors=["ewma", "robust"],
        explanation="pressure_kpa = 510 kPa, expected 420 +- 2.1 kPa by ewma over 60 readings",
    )


def free_port() -> int:
    """A port nothing listens on now (for a private broker, or a connection that must fail)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def device_client(stack: Stack, device: Device, **options: Any) -> aiomqtt.Client:
    """An MQTT client with ``device``'s own credentials on the stack's broker."""
    return aiomqtt.Client(
        stack.settings.mqtt_host,
        stack.settings.mqtt_port,
        username=device.device_id,
        password=device_password(stack.settings.fleet_secret.get_secret_value(), device.device_id),
        identifier=f"test-{device.device_id}",
        **options,
    )


async def healthz(port: int) -> tuple[int, dict[str, Any]]:
    """A service's ``/healthz``: its status code and body."""
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(f"http://127.0.0.1:{port}/healthz")
    return response.status_code, response.json()


async def dependency_down(port: int, dependency: str) -> bool:
    status, body = await healthz(port)
    return status == 503 and body["dependencies"][dependency]["up"] is False


async def all_up(port: int) -> bool:
    """The service answers ``/healthz`` with every dependency up (False while it is not listening)."""
    try:
        status, body = await healthz(port)
    except httpx.TransportError:
        return False
    return status == 200 and body["status"] == "ok"
