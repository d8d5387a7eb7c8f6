"""The one shape of every I/O object: ``start()``/``stop()`` and an async context manager."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Self


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
