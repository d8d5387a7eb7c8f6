"""No record stops a partition: one the contract refuses, or one the database refuses, goes to
the dead-letter topic with its offset, and the records around it are stored. Real Kafka and
PostgreSQL; the records are written straight to the readings topic, as a foreign or older
producer could."""

from __future__ import annotations

import asyncio

import msgspec

from cityops.core import contracts
from cityops.core.contracts import Reading, Topics
from cityops.devstack import Stack
from stream import StreamService, StreamSettings
from tests.helpers import eventually, produce, read_topic, scalar

T0 = contracts.now_us() - 3_600_000_000


def _raw(**fields: object) -> bytes:
    reading = {
        "device_id": "dev-1",
        "kind": "pipe_node",
        "seq": 1,
        "ts_us": T0,
        "metrics": {"pressure_kpa": 400.0},
        "gateway_us": T0,
        **fields,
    }
    return msgspec.msgpack.encode(reading)


def _good(i: int) -> bytes:
    return contracts.encode(Reading("dev-1", "pipe_node", i, T0 + i * 1_000_000, {"pressure_kpa": 400.0}, T0))


async def test_poison_records_are_dead_lettered_and_the_partition_moves_on(
    stack: Stack, topics: Topics, database: str, uid: str
) -> None:
    poison = {
        "seq 2^63 (past bigint)": _raw(seq=2**63),
        "unknown kind": _raw(kind="spaceship"),
        "NaN value": _raw(metrics={"pressure_kpa": float("nan")}),
        # Passes every contract check; PostgreSQL's text cannot hold NUL: isolated by the database.
        "NUL in the device id": _raw(device_id="dev\x001", seq=99),
    }
    messages = [(b"dev-1", _good(i)) for i in range(10)]
    for n, value in enumerate(poison.values()):
        messages.insert(2 + 2 * n, (b"dev-1", value))
    await produce(stack.settings.kafka_bootstrap, topics.readings, messages)

    settings = StreamSettings(topic_prefix=topics.prefix, pg_dsn=database, group_id=f"s-{uid}", metrics_port=-1)
    async with StreamService(settings) as service, asyncio.TaskGroup() as tasks:
        runner = tasks.create_task(service.run())
        await eventually(lambda: _equals(scalar(database, "SELECT count(*) FROM readings"), 10), timeout=60)
        letters = [
            contracts.decode_dead_letter(v)
            for v in await read_topic(stack.settings.kafka_bootstrap, topics.dead_letter, expect=len(poison))
        ]
        assert not runner.done()
        runner.cancel()
    assert sorted(letter.payload for letter in letters) == sorted(poison.values())
    reasons = {letter.payload: letter.reason for letter in letters}
    assert "9223372036854775807" in reasons[poison["seq 2^63 (past bigint)"]]
    assert "spaceship" in reasons[poison["unknown kind"]]
    assert "refused by the database" in reasons[poison["NUL in the device id"]]
    assert all(letter.source.startswith(f"kafka:{topics.readings}/") and "@" in letter.source for letter in letters)
    assert await scalar(database, "SELECT count(DISTINCT seq) FROM readings") == 10


async def _equals(value: object, expected: object) -> bool:
    return await value == expected  # type: ignore[misc]
