"""The operations centre behind the API: database pool, alert feed, incident desk and timers.

``run()`` consumes alerts and ticks the timers (escalation, recovery, maintenance windows
starting and ending, KPI gauges, event pruning) until cancelled or until one of them fails on a
final error. Outages of PostgreSQL and Kafka are not failures: each loop reports the dependency
down (``health``: /healthz, ``cityops_dependency_up{service="ioc"}``, the wall), waits for it
and goes on where it stopped (``ioc.outages``).
"""

from __future__ import annotations

import asyncio
import contextlib
import tomllib
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from cityops.core import log, schema
from cityops.core.aio import AsyncService, close_quietly, race
from cityops.core.contracts import Alert
from cityops.core.health import Health
from ioc import db, kpis, maintenance, situation
from ioc.alerts import AlertFeed
from ioc.auth import Tokens, hash_password, signing_secret
from ioc.clock import Clock, utcnow
from ioc.events import WALL, EventLog, Unit, jsonable
from ioc.hub import Hub
from ioc.incidents import Desk
from ioc.outages import KAFKA, POSTGRES, Outages, is_outage
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
        self.health = Health("ioc", [POSTGRES, KAFKA] if feed else [POSTGRES])
        probes = {POSTGRES: self._probe_postgres, **({KAFKA: self._probe_kafka} if feed else {})}
        self.outages = Outages(
            self.health, probes, backoff_max_s=settings.backoff_max_s, probe_timeout_s=settings.probe_timeout_s
        )

    @property
    def pool(self) -> AsyncConnectionPool:
        assert self._pool is not None, "start() first"
        return self._pool

    async def start(self) -> None:
        s = self.settings
        self.tokens = Tokens(signing_secret(s), s.token_ttl_s, self.clock)
        # One connection of our own first: its error is the server's own (a refused password is
        # final, an absent server retriable), where the pool would only time out.
        await self._connect_once()
        self._pool = AsyncConnectionPool(
            s.pg_dsn,
            min_size=s.pool_min,
            max_size=s.pool_max,
            open=False,
            timeout=s.pool_timeout_s,
            # The pool's own reconnection backs off without bound (1, 2, 4 ... s): a short
            # attempt leaves reconnecting to the probe (at most backoff_max_s apart), which
            # refills the pool as soon as the database answers.
            reconnect_timeout=self._reconnect_s,
            reconnect_failed=self._pool_gave_up,
            kwargs={"autocommit": True, "options": f"-c jit={'on' if s.pg_jit else 'off'}"},
        )
        await self._pool.open(wait=True, timeout=30)
        self.outages.up(POSTGRES)
        async with self._pool.connection() as conn:
            await schema.apply(conn, mode=s.storage_mode)
            await db.apply(conn)
        if s.environment is Environment.DEVELOPMENT and s.demo_file is not None:
            await self.seed(tomllib.loads(s.demo_file.read_text()))
        self.events = EventLog(self._pool, self.hub, self.clock)
        self.desk = Desk(s, self.events, self.clock)
        await self.pipeline.start()
        if self._with_feed:
            self._feed = AlertFeed(s, self.desk, self.outages)
            await self._feed.start()
            self.outages.up(KAFKA)
        _log.info("operations centre started", environment=s.environment.value, alerts_topic=s.topics.alerts)

    async def stop(self) -> None:
        """Within a few seconds even with a dependency gone (each close is bounded)."""
        await self.outages.close()
        await close_quietly(self.pipeline.stop(), timeout_s=self.settings.close_timeout_s)
        if self._feed is not None:
            await self._feed.stop()
            self._feed = None
        if self._pool is not None:
            await self._pool.close(timeout=self.settings.close_timeout_s)
            self._pool = None

    async def run(self) -> None:
        """The timers and the alert feed, until one of them fails on a final error (each runs
        forever otherwise, outages included)."""
        loops = [self._ticker(), self._status_loop()]
        if self._feed is not None:
            loops += [self._feed.run(), self._kafka_watch()]
        await race(*loops)

    @property
    def _reconnect_s(self) -> float:
        return max(1.0, self.settings.backoff_max_s)

    def _pool_gave_up(self, _: AsyncConnectionPool) -> None:
        # The pool tried to connect for reconnect_timeout in vain: the database is away, which
        # the loops would only hear when their wait for a connection (pool_timeout_s) ends.
        # Its attempts began reconnect_timeout ago: a return since then is not undone.
        since = asyncio.get_running_loop().time() - self._reconnect_s
        self.outages.lost(POSTGRES, "the connection pool cannot connect", since=since)

    async def _connect_once(self) -> None:
        conn = await psycopg.AsyncConnection.connect(
            self.settings.pg_dsn, autocommit=True, connect_timeout=max(2, round(self.settings.probe_timeout_s))
        )
        async with conn:
            await conn.execute("SELECT 1")

    async def _probe_postgres(self) -> None:
        """The database answers a new connection; then the pool drops the connections the
        outage broke, so that no loop or request trips over one of them afterwards."""
        await self._connect_once()
        if self._pool is not None:
            await self._pool.check()

    async def _probe_kafka(self) -> None:
        if self._feed is not None:
            await self._feed.probe()

    async def _kafka_watch(self) -> None:
        # The consumer reconnects silently: asking Kafka now and then is what notices an outage.
        while True:
            await asyncio.sleep(self.settings.kafka_probe_s)
            if self.health.is_up(KAFKA):
                await self.outages.call(KAFKA, self._probe_kafka)
            else:
                await self.outages.back(KAFKA)

    async def _status_loop(self) -> None:
        # The pulse only informs screens: a failed round is logged and the next one tried, and
        # never takes the alert feed and the timers down with it. While the database is away
        # the screens get a ``health`` message instead, which needs no database; a change of a
        # dependency's state is sent at once, so screens (whose watchdog reconnects after three
        # silent periods) keep hearing from a centre that waits for its database.
        # The first pulse after one period: a screen that connects gets it all in its snapshot.
        changed = self.outages.changed
        changed.clear()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), self.settings.status_s)
            changed.clear()
            if not self.health.is_up(POSTGRES):
                self.hub.pulse(WALL, self.health_message())
                continue
            since = asyncio.get_running_loop().time()
            try:
                await self._status_round()
            except Exception as exc:
                if isinstance(exc, psycopg.Error | TimeoutError) and is_outage(exc):
                    self.outages.lost(POSTGRES, exc, since=since)  # wakes this loop: the screens hear it
                else:
                    _log.warning("city status check failed", error=repr(exc))

    async def _status_round(self) -> None:
        """One pulse, given up when the database is found away meanwhile or when it takes
        longer than two periods (a database that stopped answering)."""
        limit = 2 * self.settings.status_s + self.settings.health_check_s
        pulse = asyncio.create_task(self.status())
        lost = asyncio.create_task(self.outages.until_down(POSTGRES))
        try:
            done, _ = await asyncio.wait({pulse, lost}, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pulse, lost):
                task.cancel()
            await asyncio.gather(pulse, lost, return_exceptions=True)
        if pulse in done:
            pulse.result()
        elif lost not in done:
            raise TimeoutError(f"city status took over {limit:g} s")

    def health_message(self) -> dict[str, Any]:
        """What the wall can be told without the database: which dependencies are missing."""
        return {"type": "health", "every_s": self.settings.status_s, **self.dependencies()}

    def dependencies(self) -> dict[str, Any]:
        report = self.health.report()
        return {"missing": self.health.missing(), "dependencies": report["dependencies"]}

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
        healthy (every other one is), the vital signs, the pipeline's health, the KPIs, the
        maintenance areas and the dependencies missing (none: all back). It is not stored or
        numbered (a screen that missed one is put right by the next), so a quiet city writes
        nothing, and a screen whose pulses stop knows its connection is dead.
        """
        await self.pipeline.check()
        async with self.events.read() as unit:
            now = await self.city_status(unit)
        pulse = {
            "type": "pulse",
            "every_s": self.settings.status_s,
            **{k: v for k, v in now.items() if k != "devices"},
            "devices": {d["device_id"]: d["state"] for d in now["devices"] if d["state"] != "healthy"},
            **self.dependencies(),
        }
        self.hub.pulse(WALL, jsonable(pulse))
        return pulse

    async def receive(self, alerts: list[Alert]) -> list[Alert]:
        """Store alerts and place the new ones, as the alert feed does (tests, replays)."""
        return await self.desk.receive(alerts)

    async def _ticker(self) -> None:
        while True:
            await self.outages.call(POSTGRES, self.tick)
            await asyncio.sleep(self.settings.tick_s)

    async def tick(self) -> dict[str, int]:
        """One round of every timer, on the injected clock (tests call this directly)."""
        done = await self.desk.tick()
        loop = asyncio.get_running_loop().time()
        async with self.events.unit() as unit:
            if self._last_tick is not None:
                await maintenance.changes(unit, self._last_tick)
            ticked = unit.now
            if loop - self._last_kpi >= KPI_EVERY_S:
                kpis.export(await kpis.compute(unit, self.settings))
                self._last_kpi = loop
        # Only once committed: a round that failed (an outage) is covered by the next one.
        self._last_tick = ticked
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
