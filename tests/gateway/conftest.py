"""A gateway running against the real broker and Kafka, with its run task in view."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from cityops.core.contracts import Topics
from cityops.devstack import Stack
from gateway import Gateway, GatewaySettings


@dataclass
class RunningGateway:
    gateway: Gateway
    task: asyncio.Task[None]


@pytest.fixture
async def running_gateway(stack: Stack, topics: Topics, uid: str) -> AsyncIterator[RunningGateway]:
    settings = GatewaySettings(
        topic_prefix=topics.prefix, metrics_port=0, mqtt_client_id=f"gw-{uid}", mqtt_clean_session=True
    )
    async with Gateway(settings) as gw, asyncio.TaskGroup() as tasks:
        runner = tasks.create_task(gw.run())
        yield RunningGateway(gw, runner)
        runner.cancel()


def fail_sends(gateway: Gateway, error: Exception) -> None:
    """Make the gateway's current producer fail every send with ``error`` (a fault injected
    into the real producer; a replacement producer works again)."""
    assert gateway._producer is not None

    async def failing(*args: object, **kwargs: object) -> asyncio.Future[object]:
        failed: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        failed.set_exception(error)
        return failed

    gateway._producer.send = failing  # type: ignore[method-assign]
