"""The local stack as `cityops stack up` leaves it."""

from __future__ import annotations

import time

import psycopg

from cityops.devstack import Stack, StackSettings


def test_stack_up_is_idempotent_and_binds_to_loopback(stack: Stack) -> None:
    before = {c.name: c.pid for c in stack.status()}
    assert all(before.values()), before
    started = time.monotonic()
    timings = Stack(StackSettings()).up()
    assert time.monotonic() - started < 60  # nothing is installed or downloaded again
    assert "packages" not in timings or timings["packages"] < 30
    assert {c.name: c.pid for c in stack.status()} == before  # nothing was restarted
    for c in stack.status():
        assert c.reachable and c.address.startswith("127.0.0.1:"), c
    assert stack.kafka.jars_ready()
    conf = (stack.mosquitto.dir / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "persistence true" in conf
    assert "max_queued_messages 1000000" in conf


async def test_postgres_has_postgis_and_the_topics_exist(stack: Stack) -> None:
    async with await psycopg.AsyncConnection.connect(stack.settings.pg_dsn) as conn:
        cur = await conn.execute("SELECT extname FROM pg_extension WHERE extname = 'postgis'")
        assert await cur.fetchone() == ("postgis",)
        cur = await conn.execute("SHOW listen_addresses")
        assert await cur.fetchone() == ("127.0.0.1",)
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=stack.settings.kafka_bootstrap)
    await admin.start()
    try:
        topics = set(await admin.list_topics())
    finally:
        await admin.close()
    assert set(stack.settings.topics.all()) <= topics
