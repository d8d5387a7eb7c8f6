"""Runs the IOC app under uvicorn, as an async context manager (used by the CLI and tests)."""

from __future__ import annotations

import asyncio
import socket
from typing import NoReturn

import uvicorn

from cityops.core.aio import AsyncService
from cityops.core.errors import is_retriable
from ioc.app import create_app
from ioc.auth import Principal, Role
from ioc.centre import Centre
from ioc.clock import Clock, utcnow
from ioc.errors import IocError
from ioc.settings import IocSettings


class _Server(uvicorn.Server):
    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn exits the process (code 3) when the app's start-up or the bind fails: here
        # ApiServer raises the reason instead, so the exit code says whether to restart.
        try:
            await super().startup(sockets)
        except SystemExit:
            self.should_exit = True


class ApiServer(AsyncService):
    def __init__(self, settings: IocSettings, *, clock: Clock = utcnow, feed: bool = True) -> None:
        self.settings = settings
        self._clock = clock
        self._feed = feed
        self.port = settings.port
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        s = self.settings
        self.app = create_app(s, clock=self._clock, feed=self._feed)
        self.app.state.startup_error = None
        config = uvicorn.Config(
            self.app,
            host=self.settings.host,
            port=self.settings.port,
            log_config=None,
            access_log=False,
            lifespan="on",
            ws="websockets-sansio",
            # Keepalive pings find a WebSocket peer that went away without a close.
            ws_ping_interval=s.ws_ping_s,
            ws_ping_timeout=s.ws_ping_timeout_s,
            # On SIGTERM, requests and WebSockets still open after this are cancelled: a client
            # that stopped reading never holds the shutdown.
            timeout_graceful_shutdown=s.shutdown_grace_s,
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._failed_start()
            await asyncio.sleep(0.05)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]

    def _failed_start(self) -> NoReturn:
        assert self._task is not None and self._server is not None
        self._task.result()
        error: BaseException | None = self.app.state.startup_error
        if error is not None:
            # As it is, so the exit code says what it was: retriable (the database or Kafka not
            # there yet), a refusal, or a bug.
            raise error
        # The lifespan went well, so the bind failed (logged): the port may be freed by a
        # predecessor still exiting.
        raise IocError(f"API server could not listen on {self.settings.host}:{self.settings.port}", retriable=True)

    async def wait(self) -> None:
        """Serve until stopped; raises IocError if the alert feed or the timers fail on a final
        error (after stopping the server). Outages of the database or Kafka are not failures."""
        assert self._task is not None and self._server is not None
        if self._task.done():
            return
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
