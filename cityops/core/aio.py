"""The one shape of every I/O object: ``start()``/``stop()`` and an async context manager."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Self

from cityops.core import log

_log = log.get("cityops")


class AsyncService:
    """``async with`` starts and stops; a failure halfway through ``start()`` still runs ``stop()``,
    so ``stop()`` must cope with whatever part was started."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def race(*coros: Coroutine[Any, Any, None]) -> None:
    """Run ``coros`` together until the first one ends; the others are cancelled and awaited (no
    task outlives the call), and the first one's error, if any, is raised."""
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def close_quietly(closing: Coroutine[Any, Any, None], *, timeout_s: float = 5.0) -> None:
    """Close a client whose peer may be gone: its errors are an outage already reported, and a
    close that waits for a dead peer (unsent batches, a group to leave) must not hold a
    restart or a shutdown past ``timeout_s``."""
    try:
        await asyncio.wait_for(closing, timeout_s)
    except Exception as exc:
        _log.debug("client closed with an error", error=repr(exc))
