"""Fixtures on the real stack: `cityops stack up` once per session, then per test a fresh
database, fresh topic names and freshly registered devices."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from cityops.core import schema
from cityops.core.contracts import Topics
from cityops.core.kafka import ensure_topics
from cityops.core.registry import Device
from cityops.devstack import Stack, StackSettings
from cityops.devstack.mosquitto import Mosquitto
from cityops.devstack.postgres import Postgres
from firmware_sim import City, build_city
from tests.helpers import free_port, small_scenario


@pytest.fixture(scope="session")
def stack() -> Stack:
    s = Stack(StackSettings())
    s.up()
    return s


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:10]


def _dsn(base: str, database: str) -> str:
    return base.rsplit("/", 1)[0] + "/" + database


@pytest.fixture
async def database(stack: Stack, uid: str) -> AsyncIterator[str]:
    """DSN of a new, empty database (PostGIS included through template1), dropped afterwards."""
    name = f"test_{uid}"
    base = stack.settings.pg_dsn
    async with await psycopg.AsyncConnection.connect(base, autocommit=True) as conn:
        await conn.execute(f'CREATE DATABASE "{name}"'.encode())
    yield _dsn(base, name)
    await schema.drop_database(base, name)


@pytest.fixture
async def topics(stack: Stack, uid: str) -> AsyncIterator[Topics]:
    t = Topics(prefix=f"test.{uid}.")
    await ensure_topics(stack.settings.kafka_bootstrap, t.all(), partitions=3)
    yield t
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(t.all())
    finally:
        await admin.close()


@pytest.fixture
def city(stack: Stack, uid: str) -> Iterator[City]:
    """A city of two devices of each kind, registered with the broker (password + ACL), revoked afterwards."""
    built = build_city(small_scenario(uid))
    stack.register(built.devices)
    yield built
    stack.unregister([d.device_id for d in built.devices])


@pytest.fixture
def fleet(city: City) -> list[Device]:
    return city.devices


@pytest.fixture
def broker(stack: Stack) -> Iterator[Mosquitto]:
    """A private Mosquitto with the project's configuration (the stack installed the binary), for
    tests that stop and restart it without pulling the shared broker from under other tests."""
    state = Path(tempfile.mkdtemp(prefix="cityops-broker-"))
    state.chmod(0o755)  # the broker drops to the mosquitto user
    instance = Mosquitto(state, "127.0.0.1", free_port())
    try:
        yield instance
    finally:
        instance.stop()
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def private_postgres(stack: Stack) -> Iterator[Postgres]:
    """A private PostgreSQL cluster (the stack installed the server), for tests that stop and
    start the database under a service without pulling the shared one from under other tests.
    Its DSN: ``private_dsn(instance)``."""
    state = Path(tempfile.mkdtemp(prefix="cityops-pg-"))
    state.chmod(0o755)  # the server runs as the postgres user when the tests run as root
    instance = Postgres(state, "127.0.0.1", free_port(), user="cityops", password="cityops", database="cityops")
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()
        shutil.rmtree(state, ignore_errors=True)


def private_dsn(instance: Postgres) -> str:
    return f"postgresql://{instance.user}:{instance.password}@{instance.host}:{instance.port}/{instance.database}"
