"""Changes and their live events, committed together.

Every change to incidents, crews or maintenance runs in a :class:`Unit`: one transaction that
also appends its audit rows and its live events (``ioc_events``), then, after the commit, hands
the events to the hub. Units run one at a time, so event ids commit in order and a client that
resumes after id N misses nothing and sees nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from ioc.auth import SYSTEM, Principal
from ioc.clock import Clock
from ioc.hub import Hub

WALL = "wall"
SUPERVISOR = "supervisor"


def crew_channel(crew_id: str) -> str:
    return f"crew:{crew_id}"


def jsonable(value: Any) -> Any:
    """Rows -> JSON values: ISO times, finite floats (JSON has no NaN)."""
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


class Unit:
    def __init__(self, conn: psycopg.AsyncConnection[Any], now: datetime) -> None:
        self.conn = conn
        self.now = now
        self.events: list[tuple[str, dict[str, Any]]] = []

    def cursor(self) -> psycopg.AsyncCursor[dict[str, Any]]:
        return self.conn.cursor(row_factory=dict_row)

    async def rows(self, query: str, params: Any = None) -> list[dict[str, Any]]:
        cur = self.cursor()
        await cur.execute(query.encode(), params)
        return await cur.fetchall()

    async def row(self, query: str, params: Any = None) -> dict[str, Any] | None:
        found = await self.rows(query, params)
        return found[0] if found else None

    async def emit(self, channel: str, body: dict[str, Any]) -> None:
        body = jsonable(body)
        cur = await self.conn.execute(
            "INSERT INTO ioc_events (at, channel, body) VALUES (%s, %s, %s) RETURNING event_id",
            (self.now, channel, Jsonb(body)),
        )
        row = await cur.fetchone()
        assert row is not None
        self.events.append((channel, {"id": int(row[0]), **body}))

    async def audit(
        self,
        who: Principal,
        action: str,
        *,
        incident_id: int | None = None,
        from_state: str | None = None,
        to_state: str | None = None,
        note: str = "",
        data: dict[str, Any] | None = None,
    ) -> None:
        await self.conn.execute(
            "INSERT INTO audit_log (at, actor, role, action, incident_id, from_state, to_state, note, data) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                self.now,
                who.username,
                "system" if who is SYSTEM else who.role.value,
                action,
                incident_id,
                from_state,
                to_state,
                note,
                Jsonb(jsonable(data or {})),
            ),
        )


class EventLog:
    def __init__(self, pool: AsyncConnectionPool, hub: Hub, clock: Clock) -> None:
        self._pool = pool
        self._hub = hub
        self._clock = clock
        self._lock = asyncio.Lock()
        # Ids of events whose unit failed with the database connection: if it broke during
        # COMMIT they may be stored, so the next unit looks and publishes those that are.
        self._unsure: list[int] = []

    @contextlib.asynccontextmanager
    async def unit(self) -> AsyncIterator[Unit]:
        async with self._lock, self._pool.connection() as conn:
            if self._unsure:
                await self._publish_unsure(conn)
            unit = Unit(conn, self._clock())
            try:
                async with conn.transaction():
                    yield unit
            except psycopg.OperationalError:
                self._unsure += [event["id"] for _, event in unit.events]
                raise
            for channel, event in unit.events:
                self._hub.publish(channel, event)

    async def _publish_unsure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Connected clients get every committed event: an event committed just before the
        connection broke (its unit raised) is published now, in order, before newer ones."""
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "SELECT event_id, channel, body FROM ioc_events WHERE event_id = ANY(%s) ORDER BY event_id",
            (self._unsure,),
        )
        for row in await cur.fetchall():
            self._hub.publish(row["channel"], {"id": int(row["event_id"]), **row["body"]})
        self._unsure = []

    @contextlib.asynccontextmanager
    async def view(self) -> AsyncIterator[tuple[Unit, int]]:
        """A read-only view of everything up to the event id it returns, and nothing after.

        The view's snapshot is taken under the lock (no change is half-done then), then read
        without it, so wall screens loading a snapshot never hold up incoming alerts."""
        async with self._pool.connection() as conn:
            async with self._lock:
                await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                unit = Unit(conn, self._clock())
                current = await self.last_id(unit)  # the transaction's first read fixes its snapshot
            try:
                yield unit, current
            finally:
                await conn.execute("COMMIT")

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[Unit]:
        """A read-only view: no lock, so reads never wait for writes."""
        async with self._pool.connection() as conn:
            yield Unit(conn, self._clock())

    async def since(self, unit: Unit, channels: list[str], after: int) -> list[dict[str, Any]] | None:
        """Events of ``channels`` after id ``after``, or None when some of them were pruned (or
        the id is from another database): the client then needs a snapshot."""
        row = await unit.row(
            "SELECT (SELECT min(event_id) FROM ioc_events) AS lo, "
            "(SELECT last_value FROM ioc_events_event_id_seq) AS hi, "
            "(SELECT is_called FROM ioc_events_event_id_seq) AS called"
        )
        assert row is not None
        hi = int(row["hi"]) if row["called"] else 0
        if after > hi or (row["lo"] is not None and int(row["lo"]) > after + 1) or (row["lo"] is None and after < hi):
            return None
        found = await unit.rows(
            "SELECT event_id, body FROM ioc_events WHERE channel = ANY(%s) AND event_id > %s ORDER BY event_id",
            (channels, after),
        )
        return [{"id": int(r["event_id"]), **r["body"]} for r in found]

    async def last_id(self, unit: Unit) -> int:
        """The id a snapshot taken now is current to (call inside a unit, so none commits meanwhile)."""
        row = await unit.row("SELECT last_value, is_called FROM ioc_events_event_id_seq")
        return int(row["last_value"]) if row and row["is_called"] else 0

    async def prune(self, before: datetime) -> int:
        async with self._pool.connection() as conn:
            cur = await conn.execute("DELETE FROM ioc_events WHERE at < %s", (before,))
            return cur.rowcount


def dumps(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"))
