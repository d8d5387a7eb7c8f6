"""IOC fixtures: an API server on a fresh database with a driven clock, and logged-in clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest

from cityops.core import contracts, schema
from cityops.core.contracts import Alert, Topics
from cityops.core.registry import Device
from ioc import ApiServer, IocSettings
from ioc.auth import Role
from ioc.centre import Centre
from ioc.clock import ManualClock

# Demo users (ioc/demo.toml): the password is the user name.
USERS = {
    "viewer": "viewer",
    "operator": "operator",
    "dispatcher": "dispatcher",
    "admin": "admin",
    "crew": "crew-w1",  # crew W1 (water mains)
}


@pytest.fixture
def clock() -> ManualClock:
    # Today, so the native storage path has the day's partitions.
    return ManualClock(datetime.now(UTC).replace(microsecond=0))


def ioc_settings(topics: Topics, database: str, uid: str, **extra: object) -> IocSettings:
    # The timers tick once at start and then hourly: tests drive them with centre.tick().
    base: dict[str, object] = {
        "topic_prefix": topics.prefix,
        "pg_dsn": database,
        "group_id": f"ioc-{uid}",
        "port": 0,
        "max_page": 500,
        "tick_s": 3600.0,
        # Likewise the city status: checked once at start, then driven with centre.status().
        "status_s": 3600.0,
        "pipeline_urls": {},
    }
    return IocSettings(**{**base, **extra})  # type: ignore[arg-type]


@pytest.fixture
async def api(topics: Topics, database: str, uid: str, clock: ManualClock) -> AsyncIterator[ApiServer]:
    async with ApiServer(ioc_settings(topics, database, uid), clock=clock) as server:
        yield server


def centre_of(server: ApiServer) -> Centre:
    c: Centre = server.app.state.centre
    return c


ROLES = {"viewer": Role.VIEWER, "operator": Role.OPERATOR, "dispatcher": Role.DISPATCHER, "admin": Role.ADMIN}


async def token(server: ApiServer, user: str) -> str:
    """A demo user's token, minted in-process: logging in through POST /token costs an argon2
    verification (about half a second here), which tests of the login itself pay
    (tests/ioc/test_access.py, tests/dashboards)."""
    username = USERS.get(user, user)
    if username.startswith("crew-"):
        return server.token(username, Role.CREW, username.removeprefix("crew-").upper())
    return server.token(username, ROLES[username])


@pytest.fixture
async def login(api: ApiServer) -> AsyncIterator[Callable[[str], httpx.AsyncClient]]:
    """``login("dispatcher")``: an HTTP client with that demo user's token."""
    clients: list[httpx.AsyncClient] = []
    tokens: dict[str, str] = {}

    def make(user: str) -> httpx.AsyncClient:
        client = httpx.AsyncClient(base_url=api.url, timeout=30)
        clients.append(client)
        client.headers["Authorization"] = f"Bearer {tokens[user]}"
        return client

    for user in USERS:
        tokens[user] = await token(api, user)
    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
async def registered(database: str, fleet: list[Device]) -> list[Device]:
    """The test city's devices in the ``devices`` table (the API's and correlation's view)."""
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await schema.apply(conn)  # idempotent; the API may not have created it yet
        await schema.upsert_devices(conn, fleet)
    return fleet


def alert(
    device: Device | str,
    metric: str,
    at: datetime,
    *,
    value: float = 0.0,
    baseline: float = 100.0,
    detector: str = "ewma",
    kind: str | None = None,
    alert_class: contracts.TruthCategory = contracts.TruthCategory.INCIDENT,
) -> Alert:
    device_id = device if isinstance(device, str) else device.device_id
    ts = contracts.to_us(at)
    return Alert(
        alert_id=Alert.make_id(device_id, metric, ts, detector),
        device_id=device_id,
        kind=kind or (device.kind if isinstance(device, Device) else "pipe_node"),
        metric=metric,
        ts_us=ts,
        value=value,
        score=0.9,
        detector=detector,
        baseline=baseline,
        spread=1.0,
        window=60,
        seq=1,
        gateway_us=ts,
        emitted_us=ts,
        detectors=[detector],
        explanation=f"{metric} = {value:g}, expected {baseline:g}",
        alert_class=alert_class,
    )


async def insert_readings(
    dsn: str, device_id: str, metric: str, start: datetime, values: list[float], step_s: float = 10.0
) -> None:
    step = timedelta(seconds=step_s)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await schema.ensure_partitions(
            conn, {(start + timedelta(seconds=step_s * i)).date() for i in range(len(values))}
        )
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO readings (ts, device_id, metric, value, seq, gateway_at) VALUES (%s, %s, %s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                [(at, device_id, metric, v, i, at) for i, v in enumerate(values) if (at := start + step * i)],
            )
