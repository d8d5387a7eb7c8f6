"""The operations centre behind the API: database pool, alert feed, incident desk and timers.

``run()`` consumes alerts and ticks the timers (escalation, recovery, maintenance windows
starting and ending, KPI gauges, event pruning) until cancelled or until one of them fails.
"""

from __future__ import annotations

import asyncio
import tomllib
from datetime import datetime, timedelta
from typing import Any

from psycopg_pool import AsyncConnectionPool

from cityops.core import log, schema
from cityops.core.aio import AsyncService, race
from cityops.core.contracts import Alert
from ioc import db, kpis, maintenance, situation
from ioc.alerts import AlertFeed
from ioc.auth import Tokens, hash_password, signing_secret
from ioc.clock import Clock, utcnow
from ioc.events import WALL, EventLog, Unit, jsonable
from ioc.hub import Hub
from ioc.incidents import Desk
from ioc.pipeline import Pipeline
from ioc.settings import Environment, IocSettings

_log = log.get("ioc")

KPI_EVERY_S = 15.0
PRUNE_EVERY_S = 600.0


class Centre(AsyncService):
    def __init__(self, settings: IocSettings, *, clock: Clock = utcnow, feed: bool = True) -> None:
        self.settings = settings
        self.clock = clock
        self.hub = Hub(settings.ws_queue_size)
        self._with_feed = feed
        self._pool: AsyncConnectionPool | None = None
        self._feed: AlertFeed | None = None
        self._last_tick: datetime | None = None
        self._last_kpi = -float("inf")
        self._last_prune = -float("inf")
        self.pipeline = Pipeline(settings.pipeline_urls)

    @property
    def pool(self) -> AsyncConnectionPool:
        assert self._pool is not None, "start() first"
        return self._pool

    async def start(self) -> None:
        s = self.settings
        self.tokens = Tokens(signing_secret(s), s.token_ttl_s, self.clock)
        self._pool = AsyncConnectionPool(
            s.pg_dsn,
            min_size=s.pool_min,
            max_size=s.pool_max,
            open=False,
            kwargs={"autocommit": True, "options": f"-c jit={'on' if s.pg_jit else 'off'}"},
        )
        await self._pool.open(wait=True, timeout=30)
        async with self._pool.connection() as conn:
            await schema.apply(conn, mode=s.storage_mode)
            await db.apply(conn)
        if s.environment is Environment.DEVELOPMENT and s.demo_file is not None:
            await self.seed(tomllib.loads(s.demo_file.read_text()))
        self.events = EventLog(self._pool, self.hub, self.clock)
        self.desk = Desk(s, self.events, self.clock)
        await self.pipeline.start()
        if self._with_feed:
            self._feed = AlertFeed(s, self.desk)
            await self._feed.start()
        _log.info("operations centre started", environment=s.environment.value, alerts_topic=s.topics.alerts)

    async def stop(self) -> None:
        await self.pipeline.stop()
        if self._feed is not None:
            await self._feed.stop()
            self._feed = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def run(self) -> None:
        """The timers and the alert feed, until one of them fails (each runs forever otherwise)."""
        await race(self._ticker(), self._status_loop(), *([self._feed.run()] if self._feed is not None else []))

    async def _status_loop(self) -> None:
        # The pulse only informs screens: a failed round is logged and the next one tried, and
        # never takes the alert feed and the timers down with it.
        # The first pulse after one period: a screen that connects gets it all in its snapshot.
        while True:
            await asyncio.sleep(self.settings.status_s)
            try:
                await self.status()
            except Exception as exc:
                _log.warning("city status check failed", error=repr(exc))

    async def city_status(self, unit: Unit) -> dict[str, Any]:
        """Every device's state, the vital signs and the pipeline's last known health."""
        devices = await situation.devices(unit, self.settings)
        return {
            "devices": devices,
            "vitals": await situation.vitals(unit, self.settings, devices),
            "pipeline": self.pipeline.latest,
            "maintenance_areas": await situation.maintenance_areas(unit),
            "kpis": await kpis.compute(unit, self.settings),
        }

    async def status(self) -> dict[str, Any]:
        """Check the pipeline and the devices, and send the wall screens a ``pulse``.

        A pulse is the whole truth, not a difference: the state of every device that is not
        healthy (every other one is), the vital signs, the pipeline's health, the KPIs and the
        maintenance areas. It is not stored or numbered (a screen that missed one is put right
        by the next), so a quiet city writes nothing, and a screen whose pulses stop knows its
        connection is dead.
        """
        await self.pipeline.check()
        async with self.events.read() as unit:
            now = await self.city_status(unit)
        pulse = {
            "type": "pulse",
            "every_s": self.settings.status_s,
            **{k: v for k, v in now.items() if k != "devices"},
            "devices": {d["device_id"]: d["state"] for d in now["devices"] if d["state"] != "healthy"},
        }
        self.hub.pulse(WALL, jsonable(pulse))
        return pulse

    async def receive(self, alerts: list[Alert]) -> list[Alert]:
        """Store alerts and place the new ones, as the alert feed does (tests, replays)."""
        return await self.desk.receive(alerts)

    async def _ticker(self) -> None:
        while True:
            await self.tick()
            await asyncio.sleep(self.settings.tick_s)

    async def tick(self) -> dict[str, int]:
        """One round of every timer, on the injected clock (tests call this directly)."""
        done = await self.desk.tick()
        loop = asyncio.get_running_loop().time()
        async with self.events.unit() as unit:
            if self._last_tick is not None:
                await maintenance.changes(unit, self._last_tick)
            self._last_tick = unit.now
            if loop - self._last_kpi >= KPI_EVERY_S:
                self._last_kpi = loop
                kpis.export(await kpis.compute(unit, self.settings))
        if loop - self._last_prune >= PRUNE_EVERY_S:
            self._last_prune = loop
            await self.events.prune(self.clock() - timedelta(seconds=self.settings.events_keep_s))
        return done

    async def seed(self, demo: dict[str, Any]) -> None:
        """Demo users, crews and critical sites (development only); idempotent."""
        async with self.pool.connection() as conn, conn.transaction():
            for u in demo.get("users", []):
                # Existing users keep whatever password they were given since.
                await conn.execute(
                    "INSERT INTO users (username, password_hash, role, crew_id) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (username) DO NOTHING",
                    (
                        u["username"],
                        u.get("password_hash") or hash_password(u["username"]),
                        u["role"],
                        u.get("crew_id"),
                    ),
                )
            for c in demo.get("crews", []):
                await conn.execute(
                    "INSERT INTO crews (crew_id, name, skills, shift_start, shift_end, geom, located_at) "
                    "VALUES (%s, %s, %s, %s, %s, ST_SetSRID(ST_MakePoint(%s, %s), 4326)::geography, %s) "
                    "ON CONFLICT (crew_id) DO UPDATE SET name = EXCLUDED.name, skills = EXCLUDED.skills, "
                    "shift_start = EXCLUDED.shift_start, shift_end = EXCLUDED.shift_end",
                    (
                        c["crew_id"],
                        c["name"],
                        c["skills"],
                        c.get("shift_start", "00:00"),
                        c.get("shift_end", "00:00"),
                        c["lon"],
                        c["lat"],
                        self.clock(),
                    ),
                )
            for site in demo.get("sites", []):
                await conn.execute(
                    "INSERT INTO critical_sites (site_id, name, kind, weight, geom) "
                    "VALUES (%s, %s, %s, %s, ST_SetSRID(ST_MakePoint(%s, %s), 4326)::geography) "
                    "ON CONFLICT (site_id) DO UPDATE SET name = EXCLUDED.name, kind = EXCLUDED.kind, "
                    "weight = EXCLUDED.weight, geom = EXCLUDED.geom",
                    (site["site_id"], site["name"], site["kind"], site.get("weight", 1.0), site["lon"], site["lat"]),
                )
