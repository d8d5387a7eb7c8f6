"""The one shape of every I/O object: ``start()``/``stop()`` and an async context manager."""

from __future__ import annotations

from typing import Self


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
