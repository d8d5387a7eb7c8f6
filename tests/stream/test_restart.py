"""A stream service that crashes mid-run loses nothing, and the batch it had stored but not
committed is replayed without doubling a row."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from cityops.core.contracts import Topics
from cityops.core.registry import Device
from cityops.devstack import Stack
from firmware_sim import SimSettings, Simulator
from gateway import Gateway, GatewaySettings
from stream import StreamService, StreamSettings
from stream.metrics import ROWS_DUPLICATE
from tests.helpers import count_rows, eventually, small_scenario

PER_DEVICE = 150


@pytest.mark.fault
@pytest.mark.slow
async def test_stream_restart_mid_run_keeps_exactly_n_rows(
    stack: Stack, topics: Topics, database: str, fleet: list[Device], uid: str
) -> None:
    common = {"topic_prefix": topics.prefix, "pg_dsn": database}
    stream_settings = StreamSettings(**common, group_id=f"stream-{uid}", metrics_port=0, max_batch=200)
    sim = Simulator(SimSettings(**common, tick_s=0.01), small_scenario(uid, interval_s=0.01, seed=5))

    async with (
        Gateway(
            GatewaySettings(**common, mqtt_client_id=f"gw-{uid}", mqtt_clean_session=True, metrics_port=0)
        ) as gateway,
        asyncio.TaskGroup() as tasks,
    ):
        gateway_task = tasks.create_task(gateway.run())
        async with sim:
            producing = tasks.create_task(sim.run(readings_per_device=PER_DEVICE))

            first = StreamService(stream_settings)
            async with first:
                run = asyncio.create_task(first.run())  # awaited below, outside the group it may fail
                await eventually(lambda: _between(count_rows(database), 1, 10**9), timeout=30)
                assert first._consumer is not None

                async def crash() -> None:
                    raise RuntimeError("injected crash after the store, before the offset commit")

                first._consumer.commit = crash  # type: ignore[method-assign]
                with pytest.raises(RuntimeError, match="injected crash"):
                    await run
            stopped_at = await count_rows(database)

            published = await producing
        total = published.values_acked
        assert stopped_at < total, "the stream must be stopped before everything arrived"

        duplicates_before = ROWS_DUPLICATE._value.get()
        second = StreamService(stream_settings)
        async with second:
            run = tasks.create_task(second.run())
            await eventually(lambda: _between(count_rows(database), total, total), timeout=60)
            await asyncio.sleep(1.0)  # anything still to come would show as extra rows
            run.cancel()
        replayed = ROWS_DUPLICATE._value.get() - duplicates_before
        gateway_task.cancel()

    # The crashed batch was stored but not committed: the second instance read it again...
    assert replayed > 0
    # ...and the store absorbed it: every message once, no row lost or doubled.
    assert await count_rows(database) == total
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cur = await conn.execute("SELECT count(DISTINCT (device_id, seq)) FROM readings")
        assert (await cur.fetchone()) == (PER_DEVICE * len(fleet),)
    print(f"\nstream crashed at {stopped_at} of {total} rows; {replayed:.0f} rows replayed; after restart {total}")


async def _between(value: object, lo: int, hi: int) -> bool:
    v = await value  # type: ignore[misc]
    return bool(lo <= v <= hi)
