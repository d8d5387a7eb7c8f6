from __future__ import annotations

from datetime import UTC, datetime

import psycopg

from cityops.core.contracts import to_us
from cityops.core.schema import StorageMode
from stream.store import ReadingStore, Rows


def make_rows(n: int, start_us: int) -> Rows:
    rows = Rows()
    for i in range(n):
        rows.device_ids.append(f"d{i % 3}")
        rows.metrics.append("pressure_kpa")
        rows.series.append(i % 3)
        rows.ts_us.append(start_us + i * 1_000_001)  # odd microseconds survive exactly
        rows.values.append(400.0 + i)
        rows.seq.append(i)
        rows.gateway_us.append(start_us + i * 1_000_001 + 5)
    return rows


async def test_write_is_idempotent_and_exact(database: str) -> None:
    start = to_us(datetime(2026, 5, 31, 23, 59, 0, 123_457, tzinfo=UTC))  # crosses midnight: two partitions
    rows = make_rows(120, start)
    async with ReadingStore(database, mode=StorageMode.NATIVE) as store:
        assert store is not None
        assert (await store.write(rows)).sum() == 120
        assert (await store.write(rows)).sum() == 0  # a replayed batch adds nothing
        extra = make_rows(121, start)
        new = await store.write(extra)
        assert new.tolist() == [False] * 120 + [True]  # only the new row, at its position
        twice = make_rows(3, start + 500 * 1_000_001)
        twice = Rows(
            *(
                getattr(twice, f) * 2
                for f in ("device_ids", "metrics", "series", "ts_us", "values", "seq", "gateway_us")
            )
        )
        assert (await store.write(twice)).tolist() == [True] * 3 + [False] * 3  # first occurrence only
        await store.maintain(datetime(2026, 6, 1, 0, 5, tzinfo=UTC))
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cur = await conn.execute("SELECT count(*), min(ts), max(ts) FROM readings")
        count, lo, hi = await cur.fetchone()  # type: ignore[misc]
        assert count == 124
        assert to_us(lo) == start and to_us(hi) == start + 502 * 1_000_001
        cur = await conn.execute("SELECT sum(n) FROM readings_1m")
        assert (await cur.fetchone()) == (124,)
        cur = await conn.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'readings'::regclass")
        (partitions,) = await cur.fetchone()  # type: ignore[misc]
        assert partitions >= 2
