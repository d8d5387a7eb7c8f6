"""Running a service process until SIGINT/SIGTERM, then stopping it cleanly.

How the process ends tells its supervisor what to do (``cityops run``, systemd, Kubernetes):

- 0 after a signal;
- 75 (``EXIT_RETRIABLE``) when it failed on an error that may pass by itself (a broker
  restarting): restarting it is right;
- 78 (``EXIT_FATAL``) when it failed on one that will not (a refused password, invalid
  settings, an invalid profile file): restarting it only repeats the failure; 2 for a refused
  command line means the same;
- anything else (1, an unexpected exception) is for the supervisor's crash budget to judge.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

import psycopg

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
        elif _ours(exc):
            code = EXIT_FATAL
        else:
            raise  # a bug: the traceback goes to the log, the exit code is 1
        _log.error("service failed", error=str(exc), kind=type(exc).__name__, retriable=retriable, exit_code=code)
        raise SystemExit(code) from exc


def _ours(exc: BaseException) -> bool:
    """Raised on purpose (a group: all of it), or a refusal by the database (a connection error
    that ``is_retriable`` does not call passing): its message says what to fix."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_ours(e) for e in exc.exceptions)
    return isinstance(exc, CityopsError | psycopg.OperationalError)
