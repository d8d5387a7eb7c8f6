"""The alert feed takes what it can: an alert the contract refuses or the database refuses is
skipped (logged and counted), and the alerts around it are stored. Real Kafka and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import msgspec

from cityops.core import contracts
from cityops.core.contracts import Topics
from cityops.devstack import Stack
from ioc import ApiServer
from ioc.clock import ManualClock
from tests import helpers
from tests.helpers import eventually, produce, scalar
from tests.ioc.conftest import ioc_settings


async def test_poison_alerts_are_skipped_and_the_feed_goes_on(
    stack: Stack, topics: Topics, database: str, uid: str, clock: ManualClock
) -> None:
    at = contracts.to_us(clock.now - timedelta(minutes=5))
    good = [helpers.make_alert(f"pipe-{i}", at + i, seq=i) for i in range(4)]
    as_dict = msgspec.to_builtins(good[0])
    poison = [
        msgspec.msgpack.encode({**as_dict, "seq": 2**63}),  # refused by the contract
        contracts.encode(helpers.make_alert("pipe\x00nul", at)),  # refused by the database
    ]
    messages = [(b"k", contracts.encode(good[0])), (b"k", poison[0]), (b"k", contracts.encode(good[1]))]
    messages += [(b"k", poison[1]), *((b"k", contracts.encode(a)) for a in good[2:])]
    async with ApiServer(ioc_settings(topics, database, uid), clock=clock) as server:
        await produce(stack.settings.kafka_bootstrap, topics.alerts, messages)
        await eventually(lambda: _equals(scalar(database, "SELECT count(*) FROM alerts"), 4), timeout=30)
        runner = server.app.state.runner
        assert not runner.done()
    stored = await scalar(database, "SELECT string_agg(device_id, ',' ORDER BY device_id) FROM alerts")
    assert stored == "pipe-0,pipe-1,pipe-2,pipe-3"


async def _equals(value: object, expected: object) -> bool:
    return await value == expected  # type: ignore[misc]
