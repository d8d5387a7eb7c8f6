"""Runs the IOC app under uvicorn, as an async context manager (used by the CLI and tests)."""

from __future__ import annotations

import asyncio

import uvicorn

from cityops.core.aio import AsyncService
from cityops.core.errors import is_retriable
from ioc.app import create_app
from ioc.auth import Principal, Role
from ioc.centre import Centre
from ioc.clock import Clock, utcnow
from ioc.errors import IocError
from ioc.settings import IocSettings


class ApiServer(AsyncService):
    def __init__(self, settings: IocSettings, *, clock: Clock = utcnow, feed: bool = True) -> None:
        self.settings = settings
        self._clock = clock
        self._feed = feed
        self.port = settings.port
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.app = create_app(self.settings, clock=self._clock, feed=self._feed)
        config = uvicorn.Config(
            self.app,
            host=self.settings.host,
            port=self.settings.port,
            log_config=None,
            access_log=False,
            lifespan="on",
            ws="websockets-sansio",
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise IocError("API server exited during start-up")
            await asyncio.sleep(0.05)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]

    async def wait(self) -> None:
        """Serve until stopped; raises IocError if the alert feed or the timers fail (after stopping the server)."""
        assert self._task is not None and self._server is not None
        runner: asyncio.Task[None] = self.app.state.runner
        await asyncio.wait({self._task, runner}, return_when=asyncio.FIRST_COMPLETED)
        error = runner.exception() if runner.done() and not runner.cancelled() else None
        if error is not None:
            await self.stop()
            # Retriable when its cause is (Kafka or the database went away): the supervisor restarts.
            raise IocError(f"operations centre failed: {error!r}", retriable=is_retriable(error)) from error
        await self._task

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            try:
                await self._task
            finally:
                self._server = None

    def token(self, username: str = "viewer", role: Role = Role.VIEWER, crew_id: str | None = None) -> str:
        """A bearer token minted in-process (benchmarks, tests); users log in with POST /token."""
        centre: Centre = self.app.state.centre
        return centre.tokens.issue(Principal(username, role, crew_id))

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"
