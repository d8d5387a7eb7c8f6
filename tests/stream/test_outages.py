"""The stream service rides out a database outage in-process: it reports it, keeps the batch,
and stores it once the database is back, with nothing lost or stored twice."""

from __future__ import annotations

import asyncio

from cityops.core import contracts
from cityops.core.contracts import Reading, Topics
from cityops.core.health import OUTAGES
from cityops.devstack import Stack
from cityops.devstack.postgres import Postgres
from stream import StreamService, StreamSettings
from tests.conftest import private_dsn
from tests.helpers import all_up, dependency_down, eventually, produce, scalar


def _readings(device: str, seqs: range, t0: int) -> list[tuple[bytes, bytes]]:
    out = []
    for seq in seqs:
        r = Reading(device, "pipe_node", seq, t0 + seq * 1_000_000, {"pressure_kpa": 400.0 + seq % 5}, t0)
        out.append((device.encode(), contracts.encode(r)))
    return out


async def test_the_stream_rides_out_a_database_outage(
    stack: Stack, topics: Topics, private_postgres: Postgres, uid: str
) -> None:
    dsn = private_dsn(private_postgres)
    device = f"pipe-{uid}"
    t0 = contracts.now_us() - 600_000_000
    settings = StreamSettings(topic_prefix=topics.prefix, pg_dsn=dsn, group_id=f"s-{uid}", metrics_port=0)
    bootstrap = stack.settings.kafka_bootstrap
    outages = OUTAGES.labels("stream", "postgres")
    before = outages._value.get()
    async with StreamService(settings) as service, asyncio.TaskGroup() as tasks:
        runner = tasks.create_task(service.run())
        port = service.metrics_port
        assert port is not None
        await produce(bootstrap, topics.readings, _readings(device, range(0, 50), t0))
        await eventually(lambda: _count_is(dsn, 50))
        assert await all_up(port)

        await asyncio.to_thread(private_postgres.stop)
        await produce(bootstrap, topics.readings, _readings(device, range(50, 120), t0))
        await eventually(lambda: dependency_down(port, "postgres"))
        assert not runner.done()
        assert outages._value.get() == before + 1

        await asyncio.to_thread(private_postgres.start)
        await eventually(lambda: _count_is(dsn, 120))
        await eventually(lambda: all_up(port))
        await produce(bootstrap, topics.readings, _readings(device, range(120, 130), t0))
        await eventually(lambda: _count_is(dsn, 130))
        assert not runner.done()
        runner.cancel()
    distinct = await scalar(dsn, "SELECT count(DISTINCT seq) FROM readings")
    assert distinct == 130


async def _count_is(dsn: str, expected: int) -> bool:
    try:
        return await scalar(dsn, "SELECT count(*) FROM readings") == expected
    except OSError:
        return False
