"""Durable, idempotent storage of readings in PostgreSQL/TimescaleDB.

A batch goes in with COPY into a session-local staging table, then one
``INSERT ... ON CONFLICT DO NOTHING`` into ``readings``: a replayed batch (after a crash
between the commit and the Kafka offset commit) inserts nothing twice, and the caller learns
which rows were new, which is what the detectors are fed.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import numpy as np
import psycopg

from cityops.core import schema
from cityops.core.aio import AsyncService
from cityops.core.schema import StorageMode
from stream.detectors import BOOL, F64, I64

_EPOCH_DAY = date(1970, 1, 1)
_US_PER_DAY = 86_400_000_000

STAGE_DDL = """
CREATE TEMP TABLE IF NOT EXISTS readings_stage (
    i int, ts_us bigint, device_id text, metric text, value double precision, seq bigint, gateway_us bigint
) ON COMMIT DELETE ROWS
"""

# Integer microseconds to timestamptz exactly (a float division would round).
# Integer microseconds to timestamptz exactly (a float division would round). Returns the
# batch position of every row that was new: one per key, its first occurrence in the batch.
MERGE = """
WITH inserted AS (
    INSERT INTO readings (ts, device_id, metric, value, seq, gateway_at)
    SELECT TIMESTAMPTZ 'epoch' + ts_us * INTERVAL '1 microsecond', device_id, metric, value, seq,
           TIMESTAMPTZ 'epoch' + gateway_us * INTERVAL '1 microsecond'
    FROM readings_stage
    ON CONFLICT DO NOTHING
    RETURNING device_id, metric, ts
)
SELECT min(s.i)
FROM readings_stage s
JOIN inserted n ON n.device_id = s.device_id AND n.metric = s.metric
               AND n.ts = TIMESTAMPTZ 'epoch' + s.ts_us * INTERVAL '1 microsecond'
GROUP BY s.device_id, s.metric, s.ts_us
"""

MARK_STAGED_DIRTY = f"""
INSERT INTO rollup_pending (minute)
SELECT DISTINCT date_bin(INTERVAL '1 minute', TIMESTAMPTZ 'epoch' + ts_us * INTERVAL '1 microsecond',
                         {schema.BUCKET_ORIGIN})
FROM readings_stage
"""

HISTORY = """
SELECT q.idx, h.ts_us, h.value
FROM unnest(%(idx)s::int[], %(dev)s::text[], %(met)s::text[], %(before)s::bigint[], %(after)s::bigint[])
     AS q(idx, device_id, metric, before_us, after_us)
CROSS JOIN LATERAL (
    SELECT (EXTRACT(EPOCH FROM r.ts) * 1000000)::bigint AS ts_us, r.value
    FROM readings r
    WHERE r.device_id = q.device_id AND r.metric = q.metric
      AND r.ts < TIMESTAMPTZ 'epoch' + q.before_us * INTERVAL '1 microsecond'
      AND r.ts > TIMESTAMPTZ 'epoch' + q.after_us * INTERVAL '1 microsecond'
    ORDER BY r.ts DESC
    LIMIT %(lim)s
) h
ORDER BY q.idx, h.ts_us
"""


LOAD_STATES = """
SELECT q.idx, s.state, (EXTRACT(EPOCH FROM s.last_ts) * 1000000)::bigint
FROM unnest(%(dev)s::text[], %(met)s::text[]) WITH ORDINALITY AS q(device_id, metric, idx)
JOIN detector_state s USING (device_id, metric)
"""

SAVE_STATES = """
INSERT INTO detector_state (device_id, metric, kind, state, last_ts)
SELECT d, m, k, s, TIMESTAMPTZ 'epoch' + t * INTERVAL '1 microsecond'
FROM unnest(%(dev)s::text[], %(met)s::text[], %(kind)s::text[], %(state)s::bytea[], %(ts)s::bigint[])
     AS q(d, m, k, s, t)
ON CONFLICT (device_id, metric) DO UPDATE
SET kind = excluded.kind, state = excluded.state, last_ts = excluded.last_ts, saved_at = now()
"""

ALL_STATES = """
SELECT device_id, metric, kind, state, (EXTRACT(EPOCH FROM last_ts) * 1000000)::bigint FROM detector_state
"""


@dataclass(frozen=True)
class SavedState:
    device_id: str
    metric: str
    kind: str
    state: bytes
    last_ts_us: int


async def save_states(
    conn: psycopg.AsyncConnection[object],
    keys: list[tuple[str, str]],
    kinds: list[str],
    states: list[bytes],
    last_ts: list[int],
) -> None:
    """Upsert detector state per series (on any connection: see StreamService.save_states)."""
    if keys:
        await conn.execute(
            SAVE_STATES,
            {
                "dev": [k[0] for k in keys],
                "met": [k[1] for k in keys],
                "kind": kinds,
                "state": states,
                "ts": last_ts,
            },
        )


async def all_states(conn: psycopg.AsyncConnection[object]) -> list[SavedState]:
    """Every saved detector state (a consumer picks those of the partitions it was given)."""
    cur = await conn.execute(ALL_STATES)
    return [SavedState(r[0], r[1], r[2], bytes(r[3]), int(r[4])) for r in await cur.fetchall()]  # type: ignore[index]


async def history(
    conn: psycopg.AsyncConnection[object],
    keys: list[tuple[str, str]],
    before_us: list[int],
    after_us: list[int],
    *,
    limit: int,
) -> tuple[list[int], list[int], list[float]]:
    """The latest ``limit`` stored readings of each series strictly between its times in
    ``after_us`` and ``before_us``: (key index, ts_us, value), each series in time order."""
    if not keys:
        return [], [], []
    cur = await conn.execute(
        HISTORY,
        {
            "idx": list(range(len(keys))),
            "dev": [k[0] for k in keys],
            "met": [k[1] for k in keys],
            "before": before_us,
            "after": after_us,
            "lim": limit,
        },
    )
    rows = await cur.fetchall()
    return (
        [int(r[0]) for r in rows],  # type: ignore[index]
        [int(r[1]) for r in rows],  # type: ignore[index]
        [float(r[2]) for r in rows],  # type: ignore[index]
    )


@dataclass
class Rows:
    """A batch of readings flattened to one row per (device, metric, time), in arrival order."""

    device_ids: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    series: list[int] = field(default_factory=list)
    ts_us: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    seq: list[int] = field(default_factory=list)
    gateway_us: list[int] = field(default_factory=list)
    kind_of: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.values)

    def arrays(self) -> tuple[I64, F64, I64]:
        return (
            np.asarray(self.series, np.int64),
            np.asarray(self.values, np.float64),
            np.asarray(self.ts_us, np.int64),
        )


class ReadingStore(AsyncService):
    def __init__(self, dsn: str, *, mode: StorageMode = StorageMode.AUTO) -> None:
        self._dsn = dsn
        self._requested_mode = mode
        self.mode: StorageMode | None = None
        self._conn: psycopg.AsyncConnection[object] | None = None
        self._partitions: set[date] = set()

    async def start(self) -> None:
        self._conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
        self.mode = await schema.apply(self._conn, mode=self._requested_mode)
        await self._conn.execute(STAGE_DDL)

    async def stop(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    @property
    def conn(self) -> psycopg.AsyncConnection[object]:
        assert self._conn is not None, "start() first"
        return self._conn

    def transaction(self) -> AbstractAsyncContextManager[psycopg.AsyncTransaction]:
        """One batch's transaction: rows become visible (and durable) only when it commits."""
        return self.conn.transaction()

    async def prepare(self, rows: Rows) -> None:
        """Create missing daily partitions (native mode). Outside the batch's transaction, so
        the DDL's lock on ``readings`` is not held while the batch waits for Kafka."""
        if self.mode is not StorageMode.NATIVE or not rows:
            return
        ts = np.asarray(rows.ts_us, np.int64)
        days = {_EPOCH_DAY + timedelta(days=int(d)) for d in np.unique(ts // _US_PER_DAY)}
        missing = days - self._partitions
        if missing:
            await schema.ensure_partitions(self.conn, missing)
            self._partitions |= missing

    async def write(self, rows: Rows) -> BOOL:
        """Store ``rows``; returns which of them were new (True once per key, at its first
        occurrence in the batch). Inside :meth:`transaction` it commits with it; otherwise it
        is durable when this returns. Once per transaction: the staging table empties on commit."""
        new = np.zeros(len(rows), np.bool_)
        if not rows:
            return new
        await self.prepare(rows)
        async with self.conn.transaction(), self.conn.cursor() as cur:
            async with cur.copy(
                "COPY readings_stage (i, ts_us, device_id, metric, value, seq, gateway_us) FROM STDIN"
            ) as copy:
                for row in zip(
                    range(len(rows)),
                    rows.ts_us,
                    rows.device_ids,
                    rows.metrics,
                    rows.values,
                    rows.seq,
                    rows.gateway_us,
                    strict=True,
                ):
                    await copy.write_row(row)
            await cur.execute(MERGE)
            new[[int(r[0]) for r in await cur.fetchall()]] = True  # type: ignore[index]
            if self.mode is StorageMode.NATIVE:
                await cur.execute(MARK_STAGED_DIRTY.encode())
        return new

    async def history(
        self, keys: list[tuple[str, str]], before_us: list[int], after_us: list[int], *, limit: int
    ) -> tuple[list[int], list[int], list[float]]:
        """``history`` on the writer's connection: what a detector that starts cold replays to
        pick up where the previous process left off."""
        return await history(self.conn, keys, before_us, after_us, limit=limit)

    async def load_states(self, keys: list[tuple[str, str]]) -> dict[int, tuple[bytes, int]]:
        """Saved detector state per key index: (state, ts of the last reading it folded in)."""
        if not keys:
            return {}
        cur = await self.conn.execute(LOAD_STATES, {"dev": [k[0] for k in keys], "met": [k[1] for k in keys]})
        return {int(r[0]) - 1: (bytes(r[1]), int(r[2])) for r in await cur.fetchall()}  # type: ignore[index]

    async def maintain(self, now: datetime) -> None:
        """Native mode: fold new data into the rollups, create tomorrow's partitions, drop expired ones.

        TimescaleDB does all of this with its own policies.
        """
        if self.mode is not StorageMode.NATIVE:
            return
        await schema.refresh_rollups(self.conn)
        today = now.astimezone(UTC).date()
        upcoming = {today + timedelta(days=i) for i in range(3)} - self._partitions
        if upcoming:
            await schema.ensure_partitions(self.conn, upcoming)
            self._partitions |= upcoming
        for name in await schema.drop_expired(self.conn, now):
            day = datetime.strptime(name[len("readings_p") :], "%Y%m%d").date()
            self._partitions.discard(day)
