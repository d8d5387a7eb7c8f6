"""The IOC HTTP API and WebSocket endpoint."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from cityops import log, schema
from ioc import metrics
from ioc.alerts import AlertFeed
from ioc.hub import RESYNC, Hub, Subscriber
from ioc.settings import IocSettings

_log = log.get("ioc")

WALL_DIR = Path(str(resources.files("dashboards").joinpath("wall")))


def _aware(name: str, value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise HTTPException(400, f"{name} needs a timezone offset, e.g. 2026-01-01T00:00:00Z")
    return value


async def _pump(ws: WebSocket, sub: Subscriber) -> None:
    """Send queued events until the client leaves, or is told to resync after falling behind.

    The receive side runs alongside: without it a client that went away unnoticed would hold
    its handler (and server shutdown) until the next event.
    """

    async def send() -> None:
        while True:
            event = await sub.queue.get()
            await ws.send_json(event)
            metrics.WS_SENT.inc()
            if event is RESYNC:
                await ws.close(code=1013)  # "try again later": reconnect and reload
                return

    async def receive() -> None:
        while (await ws.receive())["type"] != "websocket.disconnect":
            pass

    tasks = [asyncio.create_task(send()), asyncio.create_task(receive())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def create_app(settings: IocSettings | None = None) -> FastAPI:
    settings = settings or IocSettings()
    hub = Hub(settings.ws_queue_size)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = AsyncConnectionPool(
            settings.pg_dsn,
            min_size=settings.pool_min,
            max_size=settings.pool_max,
            open=False,
            kwargs={"autocommit": True},
        )
        try:
            await pool.open(wait=True, timeout=30)
            async with pool.connection() as conn:
                await schema.apply(conn, mode=settings.storage_mode)
            app.state.pool = pool
            async with AlertFeed(settings, pool, hub) as feed:
                # Owned here and awaited at shutdown. If it fails, /healthz says so and
                # ApiServer.wait() stops the server, so a supervisor restarts the process
                # instead of leaving wall screens connected to a feed that no longer flows.
                app.state.feed = asyncio.create_task(feed.run(), name="alert-feed")
                _log.info("api started", alerts_topic=settings.topics.alerts)
                try:
                    yield
                finally:
                    app.state.feed.cancel()
                    await asyncio.gather(app.state.feed, return_exceptions=True)
        finally:
            await pool.close()
            _log.info("api stopped")

    app = FastAPI(title="cityops IOC", version="0.1.0", lifespan=lifespan)
    app.state.hub = hub
    app.mount("/wall", StaticFiles(directory=WALL_DIR, html=True), name="wall")

    def _page(limit: int | None, default: int) -> int:
        if limit is None:
            return min(default, settings.max_page)
        if limit > settings.max_page:
            raise HTTPException(400, f"limit may be at most {settings.max_page}")
        return limit

    async def rows(request: Request, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        pool: AsyncConnectionPool = request.app.state.pool
        async with pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(query.encode(), params)
            return await cur.fetchall()

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(WALL_DIR / "index.html")

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz(request: Request) -> JSONResponse:
        """200 when the database answers and the alert feed runs; 503 otherwise, with the reason."""
        feed: asyncio.Task[None] = request.app.state.feed
        if feed.done():
            error = None if feed.cancelled() else feed.exception()
            return JSONResponse({"status": "failing", "feed": f"stopped: {error!r}"}, status_code=503)
        await rows(request, "SELECT 1", {})
        return JSONResponse({"status": "ok", "feed": "running", "ws_clients": len(hub)})

    @app.get("/devices")
    async def devices(
        request: Request,
        kind: str | None = None,
        district: str | None = None,
    ) -> list[dict[str, Any]]:
        """Registered devices with their position."""
        return await rows(
            request,
            "SELECT device_id, kind, district, ST_Y(geom::geometry) AS lat, ST_X(geom::geometry) AS lon, attrs "
            "FROM devices WHERE (%(kind)s::text IS NULL OR kind = %(kind)s) "
            "AND (%(district)s::text IS NULL OR district = %(district)s) ORDER BY device_id",
            {"kind": kind, "district": district},
        )

    @app.get("/readings")
    async def readings(
        request: Request,
        device_id: str,
        metric: str,
        start: datetime,
        end: datetime,
        limit: Annotated[int | None, Query(ge=1)] = None,
    ) -> list[dict[str, Any]]:
        """One series (device x metric) between ``start`` (inclusive) and ``end`` (exclusive)."""
        _aware("start", start)
        _aware("end", end)
        if end <= start:
            raise HTTPException(400, "end must be after start")
        limit = _page(limit, 1_000)
        return await rows(
            request,
            "SELECT ts, value, seq FROM readings WHERE device_id = %(d)s AND metric = %(m)s "
            "AND ts >= %(s)s AND ts < %(e)s ORDER BY ts LIMIT %(l)s",
            {"d": device_id, "m": metric, "s": start, "e": end, "l": limit},
        )

    @app.get("/alerts")
    async def alerts(
        request: Request,
        device_id: str | None = None,
        since: datetime | None = None,
        limit: Annotated[int | None, Query(ge=1)] = None,
    ) -> list[dict[str, Any]]:
        """Most recent alerts first."""
        _aware("since", since)
        limit = _page(limit, 100)
        return await rows(
            request,
            "SELECT alert_id, ts, device_id, kind, metric, value, score, detector, baseline, spread, "
            "window_size, seq, emitted_at, received_at, detectors, explanation FROM alerts "
            "WHERE (%(d)s::text IS NULL OR device_id = %(d)s) AND (%(s)s::timestamptz IS NULL OR ts >= %(s)s) "
            "ORDER BY ts DESC LIMIT %(l)s",
            {"d": device_id, "s": since, "l": limit},
        )

    @app.websocket("/ws/alerts")
    async def alerts_ws(ws: WebSocket) -> None:
        """Every new alert, as ``{"id": n, "type": "alert", "alert": {...}}``."""
        await ws.accept()
        sub = hub.subscribe()
        try:
            await ws.send_json({"type": "hello", "clients": len(hub)})
            await _pump(ws, sub)
        except WebSocketDisconnect:
            pass
        finally:
            hub.unsubscribe(sub)

    @app.exception_handler(ValueError)
    async def value_error(_: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    return app
