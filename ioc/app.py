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

from cityops.core import log
from cityops.core.version import VERSION
from ioc.centre import Centre
from ioc.clock import Clock, utcnow
from ioc.errors import RequestError
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
        async with centre:
            # Owned here and awaited at shutdown. If it fails, /healthz says so and
            # ApiServer.wait() stops the server, so a supervisor restarts the process
            # instead of leaving wall screens connected to a centre that no longer moves.
            app.state.runner = asyncio.create_task(centre.run(), name="ioc-centre")
            _log.info("api started")
            try:
                yield
            finally:
                app.state.runner.cancel()
                await asyncio.gather(app.state.runner, return_exceptions=True)
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
        """200 when the database answers and the alert feed and timers run; 503 otherwise, with the reason."""
        runner: asyncio.Task[None] = request.app.state.runner
        if runner.done():
            error = None if runner.cancelled() else runner.exception()
            return JSONResponse({"status": "failing", "centre": f"stopped: {error!r}"}, status_code=503)
        async with centre.pool.connection() as conn:
            await conn.execute("SELECT 1")
        return JSONResponse({"status": "ok", "centre": "running", "ws_clients": len(centre.hub)})

    @app.exception_handler(RequestError)
    async def request_error(_: Request, exc: RequestError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        body: dict[str, Any] = {"detail": exc.message, **jsonable_encoder(exc.extra)}
        return JSONResponse(body, status_code=exc.status, headers=headers)

    @app.exception_handler(ValueError)
    async def value_error(_: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(psycopg.DataError)
    async def data_error(_: Request, exc: psycopg.DataError) -> JSONResponse:
        # Values the database cannot hold (a NUL in text, an out-of-range number): the caller's.
        return JSONResponse({"detail": f"invalid value: {exc.diag.message_primary or exc}"}, status_code=400)

    return app
