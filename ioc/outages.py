"""Riding out the loss of PostgreSQL or Kafka.

The centre's loops (ticker, city status, alert feed, Kafka watch) never end on an outage.
A loop whose call fails on a retriable error reports the dependency down
(:meth:`Outages.lost`); one probe per dependency then tries it with backoff
(:class:`cityops.core.health.Backoff`, at most ``backoff_max_s`` apart) until it answers,
reports it up, and every loop waiting for it (:meth:`Outages.back`) tries the *same* call
again: nothing is skipped. A final error (a refused password, a bug) is raised as before,
and ends the process with the exit code that says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import psycopg
from aiokafka.errors import KafkaError

from cityops.core import log
from cityops.core.errors import is_retriable
from cityops.core.health import Backoff, Health

_log = log.get("ioc.outages")

T = TypeVar("T")
Probe = Callable[[], Awaitable[None]]

POSTGRES = "postgres"
KAFKA = "kafka"


def dependency_of(exc: BaseException, default: str) -> str:
    if isinstance(exc, psycopg.Error):
        return POSTGRES
    if isinstance(exc, KafkaError):
        return KAFKA
    return default


def is_outage(exc: BaseException) -> bool:
    """A retriable error that says the dependency is away, not one that a retry at once fixes
    (a serialization failure or deadlock, SQLSTATE class 40): only outages are reported."""
    if isinstance(exc, psycopg.Error):
        return is_retriable(exc) and (exc.sqlstate is None or not exc.sqlstate.startswith("40"))
    return is_retriable(exc)


class Outages:
    def __init__(
        self,
        health: Health,
        probes: Mapping[str, Probe],
        *,
        backoff_max_s: float = 2.0,
        probe_timeout_s: float = 3.0,
    ) -> None:
        self.health = health
        self._probes = dict(probes)
        self._backoff_max_s = backoff_max_s
        self._probe_timeout_s = probe_timeout_s
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._up_at = {name: -float("inf") for name in self._probes}
        # Set at every change of a dependency's state: the wall is told at once.
        self.changed = asyncio.Event()
        self._down = {name: asyncio.Event() for name in self._probes}

    def up(self, name: str) -> None:
        if not self.health.is_up(name):
            self._up_at[name] = asyncio.get_running_loop().time()
            self.health.up(name)
            self._down[name].clear()
            self.changed.set()

    def lost(self, name: str, exc: BaseException | str, *, since: float) -> None:
        """A call that began at ``since`` (loop time) failed on ``exc``: report ``name`` down and
        probe it, unless it came back after that call began (the error is older than the return)."""
        if self.health.is_up(name) and self._up_at[name] > since:
            return
        was_up = self.health.is_up(name)
        self.health.down(name, exc)
        self._down[name].set()
        if was_up:
            self.changed.set()
        task = self._tasks.get(name)
        if task is not None and task.done() and not task.cancelled() and task.exception() is not None:
            return  # refused for good: back() raises that to every loop that waits
        if task is None or task.done():
            self._tasks[name] = asyncio.create_task(self._probe(name), name=f"ioc-probe-{name}")

    async def until_down(self, name: str) -> None:
        """Return once ``name`` is reported down (at once if it is)."""
        if not self.health.is_up(name):
            return
        await self._down[name].wait()

    async def back(self, name: str) -> None:
        """Return once ``name`` answers again; raise the probe's error if it is final."""
        task = self._tasks.get(name)
        if task is not None:
            await asyncio.shield(task)

    async def call(self, name: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """``attempt()`` until it succeeds: after a retriable failure the same attempt again, once
        the dependency it came from (``name`` unless the error says otherwise) is back."""
        backoff = Backoff(max_s=self._backoff_max_s)
        while True:
            if not self.health.is_up(name):
                await self.back(name)  # known to be away: no attempt until the probe says so
            since = asyncio.get_running_loop().time()
            try:
                return await attempt()
            except Exception as exc:
                if not is_retriable(exc):
                    raise
                if not is_outage(exc):
                    _log.info("retrying", dependency=name, error=repr(exc))
                    await asyncio.sleep(backoff.next())
                    continue
                dependency = dependency_of(exc, name)
                self.lost(dependency, exc, since=since)
                await self.back(dependency)

    async def _probe(self, name: str) -> None:
        backoff = Backoff(max_s=self._backoff_max_s)
        while True:
            await asyncio.sleep(backoff.next())
            try:
                async with asyncio.timeout(self._probe_timeout_s):
                    await self._probes[name]()
            except Exception as exc:
                if not is_retriable(exc):
                    _log.error("dependency refuses us", dependency=name, error=repr(exc))
                    raise
                self.health.down(name, exc)  # the latest reason
                continue
            self.up(name)
            return

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
