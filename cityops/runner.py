"""Running a service until SIGINT/SIGTERM, then stopping it cleanly."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable


def serve(main: Callable[[], Awaitable[None]]) -> None:
    """Run ``main`` in a fresh event loop; SIGTERM and SIGINT cancel it so its cleanup runs."""

    async def wrapper() -> None:
        task = asyncio.ensure_future(main())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass

    asyncio.run(wrapper())
