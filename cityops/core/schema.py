"""The database schema, shared by the stream tier (writes readings) and the IOC (reads them).

Two storage paths with the same relations, so queries (the API's, Grafana's) do not care:

- **timescale**, when the ``timescaledb`` extension is available: ``readings`` is a hypertable
  with 1-day chunks, compressed after ``compress_after`` and dropped after ``retention``;
  ``readings_1m`` and ``readings_1h`` are continuous aggregates refreshed by policies.
- **native**, plain PostgreSQL 15: ``readings`` is range-partitioned by day (partitions are
  created ahead of the data by :func:`ensure_partitions` and dropped by :func:`drop_expired`),
  and ``readings_1m``/``readings_1h`` are tables that :func:`refresh_rollups` recomputes for the
  minutes new data touched (recorded durably in ``rollup_pending``); hours are built from minutes.
  Nothing is compressed on this path.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta

import psycopg
import psycopg.types.json
from psycopg import sql

from cityops.core.errors import SchemaError

ROLLUPS: dict[str, timedelta] = {"readings_1m": timedelta(minutes=1), "readings_1h": timedelta(hours=1)}


class StorageMode(enum.StrEnum):
    AUTO = "auto"
    TIMESCALE = "timescale"
    NATIVE = "native"


COMMON_DDL = """
CREATE EXTENSION IF NOT EXISTS postgis;

CREATE TABLE IF NOT EXISTS schema_info (
    key   text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE IF NOT EXISTS devices (
    device_id     text PRIMARY KEY,
    kind          text NOT NULL,
    district      text NOT NULL,
    geom          geography(Point, 4326) NOT NULL,
    attrs         jsonb NOT NULL DEFAULT '{}',
    registered_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS devices_geom ON devices USING gist (geom);

-- District outlines for maps that must draw without internet tiles.
CREATE TABLE IF NOT EXISTS districts (
    district text PRIMARY KEY,
    geom     geography(Polygon, 4326) NOT NULL
);

CREATE TABLE IF NOT EXISTS alerts (
    alert_id    text PRIMARY KEY,
    ts          timestamptz NOT NULL,
    device_id   text NOT NULL,
    kind        text NOT NULL,
    metric      text NOT NULL,
    value       double precision NOT NULL,
    score       double precision NOT NULL,
    detector    text NOT NULL,
    baseline    double precision NOT NULL,
    spread      double precision NOT NULL,
    window_size integer NOT NULL,
    seq         bigint NOT NULL,
    gateway_at  timestamptz NOT NULL,
    emitted_at  timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS detectors text[] NOT NULL DEFAULT '{}';
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS explanation text NOT NULL DEFAULT '';
-- incident, sensor_fault or platform (cityops.core.contracts.Alert.alert_class).
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS alert_class text NOT NULL DEFAULT 'incident';
CREATE INDEX IF NOT EXISTS alerts_ts ON alerts (ts DESC);
CREATE INDEX IF NOT EXISTS alerts_device ON alerts (device_id, ts DESC);

-- The stream tier's detector state per series, saved periodically and when partitions move,
-- so a restarted or rebalanced consumer resumes exactly (it replays readings after last_ts).
CREATE TABLE IF NOT EXISTS detector_state (
    device_id text NOT NULL,
    metric    text NOT NULL,
    state     bytea NOT NULL,
    last_ts   timestamptz NOT NULL,
    saved_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, metric)
);
ALTER TABLE detector_state ADD COLUMN IF NOT EXISTS kind text NOT NULL DEFAULT '';
"""

# The primary key is the idempotency key: a replayed batch inserts nothing new.
READINGS_COLUMNS = """
    ts         timestamptz NOT NULL,
    device_id  text NOT NULL,
    metric     text NOT NULL,
    value      double precision NOT NULL,
    seq        bigint NOT NULL,
    gateway_at timestamptz NOT NULL,
    PRIMARY KEY (device_id, metric, ts)
"""

ROLLUP_SELECT = """
SELECT {bucket} AS bucket, device_id, metric,
       count(*) AS n, avg(value) AS mean, min(value) AS min, max(value) AS max
FROM readings
"""


def _native_ddl() -> str:
    parts = [f"CREATE TABLE IF NOT EXISTS readings ({READINGS_COLUMNS}) PARTITION BY RANGE (ts);", PENDING_DDL + ";"]
    for name in ROLLUPS:
        parts.append(
            f"""CREATE TABLE IF NOT EXISTS {name} (
                bucket timestamptz NOT NULL, device_id text NOT NULL, metric text NOT NULL,
                n bigint NOT NULL, mean double precision NOT NULL,
                min double precision NOT NULL, max double precision NOT NULL,
                PRIMARY KEY (device_id, metric, bucket));
            -- City-wide recent buckets (the wall's device states and readings per second);
            -- TimescaleDB's continuous aggregates index their buckets themselves.
            CREATE INDEX IF NOT EXISTS {name}_bucket ON {name} (bucket);"""
        )
    return "\n".join(parts)


def _timescale_ddl(retention: timedelta, compress_after: timedelta) -> list[str]:
    statements = [
        "CREATE EXTENSION IF NOT EXISTS timescaledb",
        f"CREATE TABLE IF NOT EXISTS readings ({READINGS_COLUMNS})",
        "SELECT create_hypertable('readings', by_range('ts', INTERVAL '1 day'), if_not_exists => TRUE)",
        "ALTER TABLE readings SET (timescaledb.compress, timescaledb.compress_segmentby = 'device_id, metric',"
        " timescaledb.compress_orderby = 'ts DESC')",
        f"SELECT add_compression_policy('readings', INTERVAL '{_interval(compress_after)}', if_not_exists => TRUE)",
        f"SELECT add_retention_policy('readings', INTERVAL '{_interval(retention)}', if_not_exists => TRUE)",
    ]
    for name, width in ROLLUPS.items():
        bucket = f"time_bucket(INTERVAL '{_interval(width)}', ts)"
        statements += [
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {name} "
            # Real-time aggregation: rows newer than the last refresh are included at query time.
            "WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS "
            f"{ROLLUP_SELECT.format(bucket=bucket)} GROUP BY 1, 2, 3 WITH NO DATA",
            f"SELECT add_continuous_aggregate_policy('{name}', start_offset => INTERVAL '3 days', "
            f"end_offset => INTERVAL '{_interval(width)}', schedule_interval => INTERVAL '{_interval(width)}',"
            " if_not_exists => TRUE)",
        ]
    return statements


def _interval(delta: timedelta) -> str:
    return f"{int(delta.total_seconds())} seconds"


async def timescale_available(conn: psycopg.AsyncConnection[object]) -> bool:
    """Installed *and* preloaded (CREATE EXTENSION fails without the preload). A preloaded
    TimescaleDB registers its ``timescaledb.*`` settings, which any role can see."""
    cur = await conn.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb' "
        "AND EXISTS (SELECT 1 FROM pg_settings WHERE name LIKE 'timescaledb.%%')"
    )
    return await cur.fetchone() is not None


async def storage_mode(conn: psycopg.AsyncConnection[object]) -> StorageMode:
    """The mode the schema was created with."""
    cur = await conn.execute("SELECT value FROM schema_info WHERE key = 'storage_mode'")
    row = await cur.fetchone()
    if row is None:
        raise SchemaError("schema not created: run the stream service, the API or `cityops provision` first")
    return StorageMode(str(row[0]))  # type: ignore[index]


async def apply(
    conn: psycopg.AsyncConnection[object],
    *,
    mode: StorageMode = StorageMode.AUTO,
    retention: timedelta = timedelta(days=90),
    compress_after: timedelta = timedelta(days=7),
) -> StorageMode:
    """Create the schema (idempotent) and return the storage mode in use.

    An existing database keeps the mode it was created with; asking for the other one explicitly
    is an error rather than a silent no-op.
    """
    async with conn.transaction():
        # One creator at a time: services may start together.
        await conn.execute("SELECT pg_advisory_xact_lock(727274)")
        await conn.execute(COMMON_DDL)
        cur = await conn.execute("SELECT value FROM schema_info WHERE key = 'storage_mode'")
        row = await cur.fetchone()
        if row is not None:
            existing = StorageMode(str(row[0]))  # type: ignore[index]
            if mode is not StorageMode.AUTO and mode is not existing:
                raise SchemaError(
                    f"the database was created with storage mode {existing.value!r}; "
                    f"CITYOPS_STORAGE_MODE={mode.value!r} cannot change that (use a new database)"
                )
            if existing is StorageMode.NATIVE:
                await conn.execute(_native_ddl().encode())  # idempotent: brings older databases up to date
            return existing
        chosen = mode
        if chosen is StorageMode.AUTO:
            chosen = StorageMode.TIMESCALE if await timescale_available(conn) else StorageMode.NATIVE
        if chosen is StorageMode.TIMESCALE:
            if not await timescale_available(conn):
                raise SchemaError("storage mode 'timescale' asked for, but the timescaledb extension is not installed")
            for statement in _timescale_ddl(retention, compress_after):
                await conn.execute(statement.encode())
        else:
            await conn.execute(_native_ddl().encode())
        await conn.execute(
            "INSERT INTO schema_info (key, value) VALUES ('storage_mode', %s), ('retention_s', %s)",
            (chosen.value, str(int(retention.total_seconds()))),
        )
    if chosen is StorageMode.NATIVE:
        today = datetime.now(UTC).date()
        await ensure_partitions(conn, [today + timedelta(days=i) for i in range(-1, 3)])
    return chosen


def partition_name(day: date) -> str:
    # Explicit widths: strftime does not zero-pad years below 1000 on every platform.
    return f"readings_p{day.year:04d}{day.month:02d}{day.day:02d}"


async def ensure_partitions(conn: psycopg.AsyncConnection[object], days: Iterable[date]) -> list[str]:
    """Create the daily partitions of ``readings`` for ``days`` (native mode); returns new ones."""
    created = []
    for day in sorted(set(days)):
        name = partition_name(day)
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        cur = await conn.execute("SELECT to_regclass(%s)", (name,))
        row = await cur.fetchone()
        if row is not None and row[0] is not None:  # type: ignore[index]
            continue
        stmt = sql.SQL("CREATE TABLE IF NOT EXISTS {} PARTITION OF readings FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(name), sql.Literal(start), sql.Literal(start + timedelta(days=1))
        )
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(727275)")  # stream instances may race at midnight
            await conn.execute(stmt)
        created.append(name)
    return created


async def drop_expired(conn: psycopg.AsyncConnection[object], now: datetime) -> list[str]:
    """Drop daily partitions wholly older than the retention period (native mode)."""
    cur = await conn.execute("SELECT value FROM schema_info WHERE key = 'retention_s'")
    row = await cur.fetchone()
    retention = timedelta(seconds=int(row[0])) if row else timedelta(days=90)  # type: ignore[index]
    cutoff = (now - retention).date()
    cur = await conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'readings'::regclass ORDER BY 1"
    )
    dropped: list[str] = []
    for row in await cur.fetchall():
        name = str(row[0])  # type: ignore[index]
        day = datetime.strptime(name[len("readings_p") :], "%Y%m%d").date()
        if day + timedelta(days=1) <= cutoff:
            async with conn.transaction():
                await conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
            dropped.append(name)
    return dropped


BUCKET_ORIGIN = "TIMESTAMPTZ '2000-01-01 00:00:00+00'"

# Minutes whose rollups are stale (native mode). Append-only: writers add rows in the same
# transaction as their readings and never conflict with each other or with the refresher, which
# consumes exactly the rows it saw in the same transaction as its recompute. Neither a crash nor
# a failed refresh loses a minute.
PENDING_DDL = (
    "DROP TABLE IF EXISTS rollup_dirty; "  # the hour-keyed predecessor
    "CREATE TABLE IF NOT EXISTS rollup_pending (minute timestamptz NOT NULL)"
)
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)

UPSERT_1M = f"""
INSERT INTO readings_1m (bucket, device_id, metric, n, mean, min, max)
{ROLLUP_SELECT.format(bucket=f"date_bin(INTERVAL '1 minute', ts, {BUCKET_ORIGIN})")}
WHERE ts >= %(lo)s AND ts < %(hi)s
GROUP BY 1, 2, 3
ON CONFLICT (device_id, metric, bucket) DO UPDATE SET
    n = EXCLUDED.n, mean = EXCLUDED.mean, min = EXCLUDED.min, max = EXCLUDED.max
"""

# Hours from minutes: 60 rows per series instead of every reading.
UPSERT_1H = f"""
INSERT INTO readings_1h (bucket, device_id, metric, n, mean, min, max)
SELECT date_bin(INTERVAL '1 hour', bucket, {BUCKET_ORIGIN}), device_id, metric,
       sum(n), sum(mean * n) / sum(n), min(min), max(max)
FROM readings_1m
WHERE bucket >= %(lo)s AND bucket < %(hi)s
GROUP BY 1, 2, 3
ON CONFLICT (device_id, metric, bucket) DO UPDATE SET
    n = EXCLUDED.n, mean = EXCLUDED.mean, min = EXCLUDED.min, max = EXCLUDED.max
"""


async def mark_dirty(conn: psycopg.AsyncConnection[object], since: datetime, until: datetime) -> None:
    """Mark the minutes overlapping ``[since, until]`` for the next :func:`refresh_rollups`."""
    await conn.execute(
        f"INSERT INTO rollup_pending (minute) SELECT generate_series("
        f"date_bin(INTERVAL '1 minute', %s, {BUCKET_ORIGIN}), %s, INTERVAL '1 minute')".encode(),
        (since, until),
    )


async def refresh_rollups(conn: psycopg.AsyncConnection[object]) -> int:
    """Recompute the rollups of every pending minute (native mode); returns how many minutes.

    Late and replayed data mark their minutes like any other, so they are folded in the way a
    continuous aggregate's invalidation would fold them.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(727276)")  # one refresher at a time
        cur = await conn.execute("DELETE FROM rollup_pending RETURNING minute")
        minutes = sorted({row[0] for row in await cur.fetchall()})  # type: ignore[index]
        for lo, hi in _contiguous(minutes, MINUTE):
            await conn.execute(UPSERT_1M.encode(), {"lo": lo, "hi": hi})
        # Whole UTC hours (the bucket origin is UTC midnight), whatever the session's time zone.
        hours = sorted({m.astimezone(UTC).replace(minute=0, second=0, microsecond=0) for m in minutes})
        for lo, hi in _contiguous(hours, HOUR):
            await conn.execute(UPSERT_1H.encode(), {"lo": lo, "hi": hi})
    return len(minutes)


def _contiguous(starts: list[datetime], width: timedelta) -> list[tuple[datetime, datetime]]:
    """Sorted bucket starts -> half-open ranges covering consecutive buckets."""
    runs: list[tuple[datetime, datetime]] = []
    for start in starts:
        if runs and runs[-1][1] == start:
            runs[-1] = (runs[-1][0], start + width)
        else:
            runs.append((start, start + width))
    return runs


async def upsert_devices(conn: psycopg.AsyncConnection[object], devices: Iterable[object]) -> int:
    """Insert or update registry devices (``cityops.core.registry.Device``) in ``devices``."""
    rows = [
        (d.device_id, str(d.kind), d.district, d.lon, d.lat, psycopg.types.json.Jsonb(d.attrs))  # type: ignore[attr-defined]
        for d in devices
    ]
    async with conn.transaction(), conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO devices (device_id, kind, district, geom, attrs) "
            "VALUES (%s, %s, %s, ST_SetSRID(ST_MakePoint(%s, %s), 4326)::geography, %s) "
            "ON CONFLICT (device_id) DO UPDATE SET kind = EXCLUDED.kind, district = EXCLUDED.district, "
            "geom = EXCLUDED.geom, attrs = EXCLUDED.attrs",
            rows,
        )
    return len(rows)


async def upsert_districts(
    conn: psycopg.AsyncConnection[object], outlines: Mapping[str, Sequence[tuple[float, float]]]
) -> int:
    """Insert or update district outlines, each a ring of (lat, lon) corners."""
    rows = []
    for name, corners in outlines.items():
        ring = [*corners, corners[0]] if corners[0] != corners[-1] else list(corners)
        rows.append((name, "POLYGON((" + ", ".join(f"{lon} {lat}" for lat, lon in ring) + "))"))
    async with conn.transaction(), conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO districts (district, geom) VALUES (%s, ST_GeogFromText('SRID=4326;' || %s)) "
            "ON CONFLICT (district) DO UPDATE SET geom = EXCLUDED.geom",
            rows,
        )
    return len(rows)


async def drop_database(admin_dsn: str, name: str, *, attempts: int = 40) -> None:
    """Drop a database that clients are leaving. A plain DROP stops autovacuum workers itself
    (WITH (FORCE) would need the right to signal them, which an application role lacks), so
    retry it while connections close, and force only as a last resort."""
    ident = sql.Identifier(name)
    async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as conn:
        for _ in range(attempts):
            try:
                await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(ident))
                return
            except psycopg.errors.ObjectInUse:
                await asyncio.sleep(0.25)
        await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
