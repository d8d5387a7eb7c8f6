"""The IOC HTTP API and its WebSocket channels."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from psycopg_pool import PoolTimeout

from cityops.core import log
from cityops.core.errors import is_retriable
from cityops.core.version import VERSION
from ioc.centre import Centre
from ioc.clock import Clock, utcnow
from ioc.errors import RequestError
from ioc.outages import POSTGRES, is_outage
from ioc.routes import crews, incidents, live, operations
from ioc.settings import IocSettings

_log = log.get("ioc")

DASHBOARDS = Path(str(resources.files("dashboards")))
WALL_DIR = DASHBOARDS / "wall"

DESCRIPTION = """
The intelligent operations centre: sensor alerts become incidents, incidents get crews, and an
incident resolves when its sensors confirm recovery.

**Log in** with *Authorize* (OAuth2 password flow). Roles: `viewer` reads; `operator` also
acknowledges and sets maintenance windows; `dispatcher` also dispatches, recalls, cancels,
closes, reopens and overrides; `crew` sees and moves only its own jobs (`/crew/...`); `admin`
also manages users and crews. In development the demo users' passwords are their names.
"""


def create_app(settings: IocSettings | None = None, *, clock: Clock = utcnow, feed: bool = True) -> FastAPI:
    settings = settings or IocSettings()
    centre = Centre(settings, clock=clock, feed=feed)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.startup_error = None
        try:
            await centre.start()
        except BaseException as exc:
            # uvicorn only logs a failed start-up and exits: ApiServer raises this instead, so
            # the exit code says whether a restart can help (an absent database: yes).
            app.state.startup_error = exc
            await centre.stop()
            raise
        # Owned here and awaited at shutdown. It rides out outages of its dependencies; if it
        # fails on a final error, /healthz says so and ApiServer.wait() stops the server, so a
        # supervisor sees the exit code instead of wall screens connected to a centre that no
        # longer moves.
        app.state.runner = asyncio.create_task(centre.run(), name="ioc-centre")
        _log.info("api started")
        try:
            yield
        finally:
            app.state.runner.cancel()
            await asyncio.gather(app.state.runner, return_exceptions=True)
            await centre.stop()
            _log.info("api stopped")

    # The docs page's Swagger UI and ReDoc from files shipped with fastapi-offline, not a CDN:
    # operators' networks often have no internet.
    app = FastAPIOffline(title="cityops IOC", version=VERSION, description=DESCRIPTION, lifespan=lifespan)
    app.state.centre = centre
    app.state.hub = centre.hub
    app.mount("/wall", StaticFiles(directory=WALL_DIR, html=True), name="wall")
    # The crew's phone page; "/crew/..." is the crew's API.
    app.mount("/field", StaticFiles(directory=DASHBOARDS / "field", html=True), name="field")
    # Leaflet and uPlot, shipped with the project: the screens work without internet.
    app.mount("/vendor", StaticFiles(directory=DASHBOARDS / "vendor"), name="vendor")
    for router in (operations.router, incidents.router, crews.router, live.router):
        app.include_router(router)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(WALL_DIR / "index.html")

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", tags=["health"])
    async def healthz(request: Request) -> JSONResponse:
        """200 when the database answers and Kafka is reachable; 503 otherwise, with what is
        missing (``missing``, and each dependency's state since when) or why the centre stopped.
        ``ws_clients``: live WebSocket clients."""
        runner: asyncio.Task[None] = request.app.state.runner
        if runner.done():
            error = None if runner.cancelled() else runner.exception()
            return JSONResponse({"status": "failing", "centre": f"stopped: {error!r}"}, status_code=503)
        body: dict[str, Any] = {**centre.health.report(), "centre": "running", "ws_clients": len(centre.hub)}
        missing = centre.health.missing()
        if POSTGRES not in missing:
            # Bounded: a database that stopped answering makes this a 503, never a hang or a 500.
            since = asyncio.get_running_loop().time()
            try:
                async with asyncio.timeout(settings.health_check_s):
                    async with centre.pool.connection(timeout=settings.health_check_s) as conn:
                        await conn.execute("SELECT 1")
            except Exception as exc:
                if isinstance(exc, psycopg.OperationalError) and not isinstance(exc, PoolTimeout) and is_outage(exc):
                    # The connection broke (the server went away): the centre hears it now, not
                    # at its next use. A slow answer alone (load) does not say so.
                    centre.outages.lost(POSTGRES, exc, since=since)
                missing.append(POSTGRES)
                body["dependencies"] = {
                    **body["dependencies"],
                    POSTGRES: {"up": False, "error": f"health check failed: {type(exc).__name__}"},
                }
        body["missing"] = missing
        if missing:
            body["status"] = "degraded"
        return JSONResponse(body, status_code=503 if missing else 200)

    @app.exception_handler(RequestError)
    async def request_error(_: Request, exc: RequestError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        body: dict[str, Any] = {"detail": exc.message, **jsonable_encoder(exc.extra)}
        return JSONResponse(body, status_code=exc.status, headers=headers)

    @app.exception_handler(ValueError)
    async def value_error(_: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(psycopg.OperationalError)
    async def database_unreachable(_: Request, exc: psycopg.OperationalError) -> JSONResponse:
        # During an outage (a retriable error: the pool timed out, the connection dropped) a
        # request is told to come back, as /healthz says; anything else is the server's fault.
        if is_retriable(exc):
            body = {"detail": "database unreachable; try again shortly", "missing": [POSTGRES]}
            return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
        _log.error("database error", error=repr(exc))
        return JSONResponse({"detail": "internal server error"}, status_code=500)

    @app.exception_handler(psycopg.DataError)
    async def data_error(_: Request, exc: psycopg.DataError) -> JSONResponse:
        # Values the database cannot hold (a NUL in text, an out-of-range number): the caller's.
        return JSONResponse({"detail": f"invalid value: {exc.diag.message_primary or exc}"}, status_code=400)

    return app
