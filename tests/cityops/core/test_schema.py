"""Schema on the real PostgreSQL: the native partitioning path end to end, and the TimescaleDB
path where the extension exists (otherwise: asking for it fails with a clear error)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest

from cityops.core import schema
from cityops.core.errors import SchemaError
from cityops.core.schema import StorageMode


async def _rows(conn: psycopg.AsyncConnection[object], query: str, *args: object) -> list[tuple[object, ...]]:
    cur = await conn.execute(query.encode(), args or None)
    return await cur.fetchall()  # type: ignore[return-value]


async def test_native_schema_partitions_rollups_and_retention(database: str) -> None:
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        mode = await schema.apply(conn, mode=StorageMode.NATIVE, retention=timedelta(days=10))
        assert mode is StorageMode.NATIVE
        # Idempotent, and an existing database keeps its mode.
        assert await schema.apply(conn, mode=StorageMode.AUTO) is StorageMode.NATIVE
        assert await schema.storage_mode(conn) is StorageMode.NATIVE
        with pytest.raises(SchemaError, match="created with storage mode 'native'"):
            await schema.apply(conn, mode=StorageMode.TIMESCALE)
        kind = await _rows(conn, "SELECT relkind FROM pg_class WHERE relname = 'readings'")
        assert kind == [("p",)]  # partitioned table

        day = datetime(2026, 3, 1, tzinfo=UTC)
        old_day = day - timedelta(days=30)
        created = await schema.ensure_partitions(conn, [day.date(), old_day.date(), day.date()])
        assert created == [schema.partition_name(old_day.date()), schema.partition_name(day.date())]
        assert await schema.ensure_partitions(conn, [day.date()]) == []

        values = [(day + timedelta(seconds=20 * i), float(i)) for i in range(9)]  # 3 minutes
        for ts, v in values:
            await conn.execute(
                "INSERT INTO readings (ts, device_id, metric, value, seq, gateway_at) "
                "VALUES (%s, 'd1', 'm', %s, 0, %s)",
                (ts, v, ts),
            )
        await schema.mark_dirty(conn, values[0][0], values[-1][0])
        assert await schema.refresh_rollups(conn) == 3  # three dirty minutes
        assert await schema.refresh_rollups(conn) == 0  # consumed
        minute = await _rows(conn, "SELECT bucket, n, mean, min, max FROM readings_1m ORDER BY bucket")
        assert minute == [
            (day, 3, 1.0, 0.0, 2.0),
            (day + timedelta(minutes=1), 3, 4.0, 3.0, 5.0),
            (day + timedelta(minutes=2), 3, 7.0, 6.0, 8.0),
        ]
        hour = await _rows(conn, "SELECT bucket, n, mean FROM readings_1h")
        assert hour == [(day, 9, 4.0)]

        # Late data for an already rolled-up minute is folded in on the next refresh.
        late = day + timedelta(seconds=30)
        await conn.execute(
            "INSERT INTO readings (ts, device_id, metric, value, seq, gateway_at) VALUES (%s, 'd1', 'm', 100, 1, %s)",
            (late, late),
        )
        await schema.mark_dirty(conn, late, late)
        await schema.refresh_rollups(conn)
        assert await _rows(conn, "SELECT n, max FROM readings_1m WHERE bucket = %s", day) == [(4, 100.0)]

        dropped = await schema.drop_expired(conn, now=day)
        assert dropped == [schema.partition_name(old_day.date())]
        remaining = await _rows(conn, "SELECT count(*) FROM readings")
        assert remaining == [(10,)]


async def test_timescale_mode(database: str) -> None:
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        if await schema.timescale_available(conn):
            assert await schema.apply(conn, mode=StorageMode.TIMESCALE) is StorageMode.TIMESCALE
            hypertables = await _rows(conn, "SELECT hypertable_name FROM timescaledb_information.hypertables")
            assert ("readings",) in hypertables
            caggs = await _rows(conn, "SELECT view_name FROM timescaledb_information.continuous_aggregates ORDER BY 1")
            assert caggs == [("readings_1h",), ("readings_1m",)]
        else:
            with pytest.raises(SchemaError, match="timescaledb extension is not installed"):
                await schema.apply(conn, mode=StorageMode.TIMESCALE)
            # Nothing half-made: AUTO then chooses the native path cleanly.
            assert await schema.apply(conn) is StorageMode.NATIVE


def test_partition_names_sort_and_parse_for_any_year() -> None:
    names = [schema.partition_name(date(y, 1, 2)) for y in (1, 50, 999, 2026)]
    assert names == ["readings_p00010102", "readings_p00500102", "readings_p09990102", "readings_p20260102"]


def test_timescale_ddl_declares_policies_and_aggregates() -> None:
    ddl = "\n".join(schema._timescale_ddl(timedelta(days=90), timedelta(days=7)))
    assert "create_hypertable('readings'" in ddl
    assert "add_compression_policy('readings', INTERVAL '604800 seconds'" in ddl
    assert "add_retention_policy('readings', INTERVAL '7776000 seconds'" in ddl
    for name in schema.ROLLUPS:
        assert f"CREATE MATERIALIZED VIEW IF NOT EXISTS {name} WITH (timescaledb.continuous" in ddl
        assert f"add_continuous_aggregate_policy('{name}'" in ddl
