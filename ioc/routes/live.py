"""Live channels over WebSockets: the wall screen's and each crew's.

Protocol (JSON text frames, server to client):

1. Connect with ``?token=<bearer token>`` (a browser cannot set headers on a WebSocket) and,
   when reconnecting, ``&last_event_id=<id of the last event you processed>``. A missing or bad
   token, or a role without access, closes the socket with code 1008 (policy violation).
2. The server answers with ``{"type": "snapshot", "id": N, ...}`` (the channel's whole state, current
   to event N) or, on a resume it can serve, ``{"type": "resume", "from": N}`` followed by every
   event after N that the client missed.
3. Then events as they happen, each with its ``id``, in order: ``incident``, ``alerts`` (the
   alerts one batch brought, with the incident or maintenance window each went to), ``crew``,
   ``maintenance`` and, for dispatchers, ``escalation`` on the wall channel; ``job`` and
   ``snapshot`` on a crew's.
4. Between them, on the wall channel, every ``status_s``: an unnumbered ``pulse`` (no ``id``, not
   stored, not resumed): every device that is not healthy with its state, the vital signs, the
   pipeline's health, the KPIs and the maintenance areas. It restates the whole truth, so a
   missed pulse needs no replay; a screen that hears no pulse for a few periods should
   reconnect (its connection is dead even if no close arrived).
5. A client that falls ``ws_queue_size`` events behind gets ``{"type": "resync"}`` and is closed
   with 1013 (try again later): it reconnects with its last event id, and misses nothing.
6. Dependencies: pulses (and the wall's snapshot) carry ``missing`` (the dependencies the IOC
   cannot reach now: ``postgres``, ``kafka``) and ``dependencies`` (each one's state, since
   when). While the database is away there is no pulse (it is read from the database): every
   ``status_s``, and at once on a change, the wall channel gets an unnumbered
   ``{"type": "health", "missing": [...], "dependencies": {...}}`` instead, and connections stay
   open; the events after the outage follow in order, none missed. A client that connects
   while the database is away gets that message and a close with 1013: it tries again later.

A client that went away without a close is dropped within ``ws_ping_s + ws_ping_timeout_s``
(keepalive pings) or, if it stopped reading, once a send has waited ``ws_send_timeout_s``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from cityops.core import log
from cityops.core.aio import race
from cityops.core.errors import is_retriable
from ioc import dispatch, maintenance, metrics
from ioc.auth import Permission, Principal
from ioc.centre import Centre
from ioc.errors import RequestError
from ioc.events import SUPERVISOR, WALL, Unit, crew_channel, jsonable
from ioc.hub import RESYNC, Subscriber
from ioc.incidents import SELECT_INCIDENT
from ioc.outages import POSTGRES
from ioc.transitions import OPEN

_log = log.get("ioc.live")

router = APIRouter()

POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013


async def _authorise(ws: WebSocket, permission: Permission) -> Principal | None:
    c: Centre = ws.app.state.centre
    token = ws.query_params.get("token") or ws.headers.get("authorization", "").removeprefix("Bearer ").strip()
    await ws.accept()
    reason = "missing token: connect with ?token=<bearer token>"
    if token:
        try:
            who = c.tokens.check(token)
            if who.can(permission):
                return who
            reason = f"a {who.role.value} may not open this channel"
        except RequestError as exc:
            reason = exc.message
    await ws.close(code=POLICY_VIOLATION, reason=reason[:120])
    return None


def _last_event_id(ws: WebSocket) -> int | None:
    raw = ws.query_params.get("last_event_id")
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        return -1  # unreadable: treated as "too old", so the client gets a snapshot
    return value if value >= 0 else -1


async def wall_snapshot(c: Centre, unit: Unit) -> dict[str, Any]:
    incidents = await unit.rows(
        SELECT_INCIDENT + " WHERE i.state = ANY(%s) OR i.updated_at >= %s ORDER BY i.priority DESC",
        ([s.value for s in OPEN], unit.now.replace(hour=0, minute=0, second=0, microsecond=0)),
    )
    alerts = await unit.rows(
        "SELECT alert_id, ts, device_id, kind, metric, value, score, detector, baseline, spread, window_size, "
        "detectors, explanation, alert_class, incident_id, maintenance_id FROM alerts ORDER BY ts DESC LIMIT 500"
    )
    return {
        "type": "snapshot",
        "incidents": incidents,
        "alerts": alerts,
        "crews": await dispatch.crews(unit, c.settings),
        "maintenance": await maintenance.current(unit),
        "pulse_s": c.settings.status_s,
        **c.dependencies(),
        # Devices, vital signs, pipeline, KPIs, maintenance areas. The map's outlines are not
        # here: they hardly change, so screens read GET /map once instead of at every connect.
        **await c.city_status(unit),
    }


async def crew_snapshot(c: Centre, unit: Unit, crew_id: str) -> dict[str, Any]:
    jobs = await unit.rows(
        SELECT_INCIDENT + " WHERE i.crew_id = %s AND i.state IN ('dispatched', 'en_route', 'on_site') "
        "ORDER BY i.state = 'dispatched', i.dispatched_at",
        (crew_id,),
    )
    crew = await dispatch.crews(unit, c.settings, crew_id)
    return {"type": "snapshot", "crew": crew[0] if crew else None, "jobs": jobs}


class _Gone(Exception):
    """The client cannot be sent to: it left, or stopped reading for ``ws_send_timeout_s``."""


async def _send(ws: WebSocket, message: dict[str, Any], timeout_s: float) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            await ws.send_json(message)
    except TimeoutError as exc:
        raise _Gone("stopped reading") from exc
    except (WebSocketDisconnect, OSError) as exc:
        raise _Gone("left") from exc
    except RuntimeError as exc:
        # The server already closed the socket under us (a keepalive ping went unanswered).
        raise _Gone(str(exc)) from exc


async def _serve(ws: WebSocket, channels: set[str], snapshot: Any) -> None:
    """Subscribe, send a snapshot or the missed events, then live events until the client
    leaves; unsubscribe however it ends, so that only live clients are counted."""
    c: Centre = ws.app.state.centre
    timeout_s = c.settings.ws_send_timeout_s
    if not c.health.is_up(POSTGRES):
        await _unavailable(ws, c)
        return
    sub = c.hub.subscribe(channels)
    try:
        after = _last_event_id(ws)
        # A view as of event ``current``; every later event is in our queue (we subscribed first).
        async with c.events.view() as (unit, current):
            missed = None if after is None else await c.events.since(unit, sorted(channels), after)
            if missed is None:
                first: list[dict[str, Any]] = [{**jsonable(await snapshot(unit)), "id": current}]
            else:
                first = [{"type": "resume", "from": after}, *missed]
        for event in first:
            await _send(ws, event, timeout_s)
        await _pump(ws, sub, current, timeout_s)
    except (WebSocketDisconnect, _Gone) as exc:
        _log.debug("websocket client gone", reason=str(exc))
    except psycopg.OperationalError as exc:
        if not is_retriable(exc):
            raise
        await _unavailable(ws, c)  # the database went away while the snapshot was read
    finally:
        c.hub.unsubscribe(sub)


async def _unavailable(ws: WebSocket, c: Centre) -> None:
    """No snapshot or resume without the database: say what is missing, and come back later."""
    try:
        await _send(ws, c.health_message(), c.settings.ws_send_timeout_s)
        await ws.close(code=TRY_AGAIN_LATER, reason="database unreachable; try again later")
    except (_Gone, RuntimeError, OSError):
        pass


async def _pump(ws: WebSocket, sub: Subscriber, sent: int, timeout_s: float) -> None:
    """Send queued events newer than ``sent`` until the client leaves or must resync.

    The receive side runs alongside: without it a client that went away unnoticed would hold
    its handler (and server shutdown) until the next event.
    """

    async def send() -> None:
        while True:
            event = await sub.queue.get()
            if event is RESYNC:
                await _send(ws, event, timeout_s)
                await ws.close(code=TRY_AGAIN_LATER)
                return
            if "id" in event and event["id"] <= sent:  # pulses have none: always current
                continue
            await _send(ws, event, timeout_s)
            metrics.WS_SENT.inc()

    async def receive() -> None:
        while (await ws.receive())["type"] != "websocket.disconnect":
            pass

    await race(send(), receive())


@router.websocket("/ws/wall")
async def wall(ws: WebSocket) -> None:
    """The wall screen: open incidents, alerts, crews, maintenance windows and KPIs, then deltas."""
    who = await _authorise(ws, Permission.READ)
    if who is None:
        return
    c: Centre = ws.app.state.centre
    channels = {WALL} | ({SUPERVISOR} if who.can(Permission.DISPATCH) else set())
    await _serve(ws, channels, lambda unit: wall_snapshot(c, unit))


@router.websocket("/ws/crew")
async def crew(ws: WebSocket) -> None:
    """A crew's phone: its jobs, then every dispatch to it and every change to its jobs."""
    who = await _authorise(ws, Permission.CREW)
    if who is None or who.crew_id is None:
        return
    c: Centre = ws.app.state.centre
    crew_id = who.crew_id
    await _serve(ws, {crew_channel(crew_id)}, lambda unit: crew_snapshot(c, unit, crew_id))
