"""Running a service process until SIGINT/SIGTERM, then stopping it cleanly.

How the process ends tells its supervisor what to do (``cityops run``, systemd, Kubernetes):
0 after a signal; :data:`~cityops.core.errors.EXIT_RETRIABLE` (75) when it failed on an error
that may pass by itself (a broker restarting), so restarting it is right;
:data:`~cityops.core.errors.EXIT_FATAL` (78) when it failed on one that will not (a refused
password, an invalid profile file), so restarting it only repeats the failure; anything else
(1, an unexpected exception) is for the supervisor's crash budget to judge.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

from cityops.core import log
from cityops.core.errors import EXIT_FATAL, EXIT_RETRIABLE, CityopsError, is_retriable

_log = log.get("cityops.service")


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

    try:
        asyncio.run(wrapper())
    except Exception as exc:
        retriable = is_retriable(exc)
        if retriable:
            code = EXIT_RETRIABLE
        elif isinstance(exc, CityopsError):
            code = EXIT_FATAL
        else:
            raise  # a bug: the traceback goes to the log, the exit code is 1
        _log.error("service failed", error=str(exc), kind=type(exc).__name__, retriable=retriable, exit_code=code)
        raise SystemExit(code) from exc
