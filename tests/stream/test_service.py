"""The stream service on real Kafka and PostgreSQL, with an injected clock."""

from __future__ import annotations

import asyncio

from cityops import contracts
from cityops.contracts import Reading, Topics
from cityops.kafka import make_producer
from cityops.schema import StorageMode
from cityops.stack import Stack
from stream import StreamService, StreamSettings
from tests.helpers import eventually, produce, read_topic, scalar

T0 = contracts.to_us(contracts.to_datetime(0).replace(year=2026, month=11, day=21, hour=9))


class ManualClock:
    def __init__(self, now_us: int) -> None:
        self.now_us = now_us

    def __call__(self) -> int:
        return self.now_us


async def test_stores_dead_letters_and_maintains_on_its_clock(
    stack: Stack, topics: Topics, database: str, uid: str
) -> None:
    clock = ManualClock(T0 + 3_600_000_000)
    settings = StreamSettings(
        topic_prefix=topics.prefix,
        pg_dsn=database,
        group_id=f"s-{uid}",
        metrics_port=-1,
        storage_mode=StorageMode.NATIVE,
        maintenance_interval_s=60,
    )
    producer = make_producer(stack.settings.kafka_bootstrap, client_id="test")
    await producer.start()
    try:
        for i in range(50):
            r = Reading("dev-1", "pipe_node", i, T0 + i * 1_000_000, {"pressure_kpa": 400.0 + i % 3}, T0)
            await producer.send(topics.readings, contracts.encode(r), key=b"dev-1")
        await producer.send_and_wait(topics.readings, b"\x93not a reading", key=b"dev-1")
    finally:
        await producer.stop()

    async with StreamService(settings, clock=clock) as service, asyncio.TaskGroup() as tasks:
        runner = tasks.create_task(service.run())
        await eventually(lambda: _equals(scalar(database, "SELECT count(*) FROM readings"), 50))
        assert await scalar(database, "SELECT count(*) FROM readings_1m") == 0  # maintenance not due yet
        clock.now_us += 61_000_000
        await eventually(lambda: _equals(scalar(database, "SELECT sum(n) FROM readings_1m"), 50))
        runner.cancel()

    assert await scalar(database, "SELECT count(*) FROM readings_1h") == 1
    letters = [
        contracts.decode_dead_letter(v)
        for v in await read_topic(stack.settings.kafka_bootstrap, topics.dead_letter, expect=1)
    ]
    assert len(letters) == 1
    assert letters[0].payload == b"\x93not a reading"
    assert letters[0].reason.startswith("undecodable reading")
    assert letters[0].source.startswith(f"kafka:{topics.readings}/")


async def _publish(stack: Stack, topics: Topics, readings: list[Reading]) -> None:
    messages = [(r.device_id.encode(), contracts.encode(r)) for r in readings]
    await produce(stack.settings.kafka_bootstrap, topics.readings, messages)


async def _run_until(settings: StreamSettings, database: str, rows: int) -> None:
    """A stream process that runs until ``rows`` readings are stored, then stops."""
    async with StreamService(settings) as service, asyncio.TaskGroup() as tasks:
        runner = tasks.create_task(service.run())
        await eventually(lambda: _equals(scalar(database, "SELECT count(*) FROM readings"), rows))
        runner.cancel()


async def _equals(value: object, expected: object) -> bool:
    return await value == expected  # type: ignore[misc]


async def test_a_restarted_stream_warms_up_from_history_and_catches_the_next_spike(
    stack: Stack, topics: Topics, database: str, uid: str
) -> None:
    settings = StreamSettings(topic_prefix=topics.prefix, pg_dsn=database, group_id=f"s-{uid}", metrics_port=-1)

    def reading(i: int) -> Reading:
        value = 400.0 + (i % 5) * 0.5 + (80.0 if i == 45 else 0.0)
        return Reading("dev-1", "pipe_node", i, T0 + i * 1_000_000, {"pressure_kpa": value}, T0)

    await _publish(stack, topics, [reading(i) for i in range(40)])
    await _run_until(settings, database, 40)
    # A new process: without history it would need 30 readings before it could alert.
    await _publish(stack, topics, [reading(i) for i in range(40, 50)])
    await _run_until(settings, database, 50)
    alerts = [
        contracts.decode_alert(v)
        for v in await read_topic(stack.settings.kafka_bootstrap, topics.alerts, expect=1, timeout=10)
    ]
    assert [(a.device_id, a.seq) for a in alerts] == [("dev-1", 45)]
    assert abs(alerts[0].baseline - 401.0) < 1.0  # the baseline came from the stored history


async def test_a_batch_opening_with_an_old_duplicate_does_not_fool_a_cold_detector(
    stack: Stack, topics: Topics, database: str, uid: str
) -> None:
    """The series shifted from 50 to 80 long ago; a new process must not alarm on 80 because a
    redelivered old reading happened to open its first batch."""
    settings = StreamSettings(topic_prefix=topics.prefix, pg_dsn=database, group_id=f"s-{uid}", metrics_port=-1)

    def reading(i: int) -> Reading:
        value = (50.0 if i < 100 else 80.0) + (i % 5) * 0.3
        return Reading("dev-2", "pipe_node", i, T0 + i * 1_000_000, {"pressure_kpa": value}, T0)

    await _publish(stack, topics, [reading(i) for i in range(201)])
    await _run_until(settings, database, 201)
    first = [
        contracts.decode_alert(v).seq
        for v in await read_topic(stack.settings.kafka_bootstrap, topics.alerts, expect=100, timeout=3)
    ]
    await _publish(stack, topics, [reading(50), reading(201)])  # a redelivered old reading, then a new one
    await _run_until(settings, database, 202)
    after = [
        contracts.decode_alert(v).seq
        for v in await read_topic(stack.settings.kafka_bootstrap, topics.alerts, expect=100, timeout=3)
    ]
    assert after == first  # nothing new: 201 is normal for the level the series had settled at
    assert all(seq < 201 for seq in after)
