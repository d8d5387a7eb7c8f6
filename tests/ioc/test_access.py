"""Who may call what: a role x route matrix generated from the app's routes, the per-target rules
of incident moves, crews confined to their own jobs, WebSocket refusals and token expiry."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import websockets
from fastapi import FastAPI
from fastapi.routing import APIRoute, APIWebSocketRoute
from starlette.routing import BaseRoute

from cityops.core.registry import Device
from ioc import ApiServer, maintenance
from ioc.auth import SYSTEM, Role
from ioc.centre import Centre
from ioc.clock import ManualClock
from ioc.transitions import OPEN, State
from tests.ioc.conftest import USERS, alert, centre_of, token

ROLES = tuple(USERS)  # viewer, operator, dispatcher, admin, crew (crew-w1 of crew W1)
EVERYONE = frozenset(ROLES)
READERS = frozenset({"viewer", "operator", "dispatcher", "admin"})
MAINTAINERS = frozenset({"operator", "dispatcher", "admin"})
DISPATCHERS = frozenset({"dispatcher", "admin"})
ADMINS = frozenset({"admin"})
CREW = frozenset({"crew"})
# The transitions route takes any logged-in user and decides by target: see TRANSITIONS.
BY_TARGET = frozenset({"(by target)"})

# Not access-controlled on purpose (the wall's static files, docs, metrics, health, login).
PUBLIC = {"/", "/wall", "/metrics", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect", "/healthz", "/token"}

# (method, path template) -> the roles allowed. "WS" = a WebSocket route. Every route of the app
# must be here: add new routes to the matrix.
EXPECTED: dict[tuple[str, str], frozenset[str]] = {
    ("GET", "/me"): EVERYONE,
    ("POST", "/token/refresh"): EVERYONE,
    ("POST", "/users"): ADMINS,
    ("GET", "/devices"): READERS,
    ("GET", "/map"): EVERYONE,
    ("GET", "/city"): READERS,
    ("GET", "/readings"): READERS,
    ("GET", "/alerts"): READERS,
    ("GET", "/maintenance"): READERS,
    ("POST", "/maintenance"): MAINTAINERS,
    ("POST", "/maintenance/{window_id}/end"): MAINTAINERS,
    ("GET", "/kpis"): READERS,
    ("GET", "/audit"): READERS,
    ("GET", "/sites"): READERS,
    ("PUT", "/sites/{site_id}"): ADMINS,
    ("GET", "/incidents"): READERS,
    ("GET", "/incidents/queue"): READERS,
    ("GET", "/incidents/{incident_id}"): READERS,
    ("GET", "/incidents/{incident_id}/alerts"): READERS,
    ("GET", "/incidents/{incident_id}/audit"): READERS,
    ("GET", "/incidents/{incident_id}/chart"): READERS,
    ("GET", "/incidents/{incident_id}/recommendations"): READERS,
    ("POST", "/incidents/{incident_id}/transitions"): BY_TARGET,
    ("POST", "/incidents/{incident_id}/cap"): DISPATCHERS,
    ("GET", "/incidents/{incident_id}/cap"): READERS,
    ("GET", "/crews"): READERS,
    ("PUT", "/crews/{crew_id}"): ADMINS,
    ("GET", "/crew/jobs"): CREW,
    ("GET", "/crew/jobs/{incident_id}"): CREW,
    ("POST", "/crew/jobs/{incident_id}/acknowledge"): CREW,
    ("POST", "/crew/jobs/{incident_id}/en_route"): CREW,
    ("POST", "/crew/jobs/{incident_id}/on_site"): CREW,
    ("POST", "/crew/jobs/{incident_id}/done"): CREW,
    ("POST", "/crew/location"): CREW,
    ("WS", "/ws/wall"): READERS,
    ("WS", "/ws/crew"): CREW,
}


@dataclass(frozen=True)
class Move:
    """One case of POST /incidents/{id}/transitions: from ``source`` (the job given to crew W1
    where the source is a crew state), move ``to``; ``allowed`` roles get ``status``."""

    source: State
    to: State
    allowed: frozenset[str]
    status: int = 200
    body: dict[str, Any] = field(default_factory=dict)


# Per target, who may move an incident there. A viewer may make no move; a crew only en route,
# on site and done (resolved), and only on its own job.
TRANSITIONS: dict[str, Move] = {
    "acknowledge": Move(State.NEW, State.ACKNOWLEDGED, MAINTAINERS),
    # Recalling a crew (back to acknowledged from a crew state) is a dispatcher's decision.
    "recall": Move(State.DISPATCHED, State.ACKNOWLEDGED, DISPATCHERS),
    "dispatch": Move(State.ACKNOWLEDGED, State.DISPATCHED, DISPATCHERS, body={"crew_id": "W2"}),
    "en_route": Move(State.DISPATCHED, State.EN_ROUTE, DISPATCHERS | CREW),
    "on_site": Move(State.EN_ROUTE, State.ON_SITE, DISPATCHERS | CREW),
    # Without readings the sensors cannot confirm recovery: the resolve is pending (202).
    "resolve": Move(State.ON_SITE, State.RESOLVED, MAINTAINERS | CREW, status=202),
    "resolve_override": Move(State.ON_SITE, State.RESOLVED, DISPATCHERS, body={"override_reason": "confirmed"}),
    "close": Move(State.RESOLVED, State.CLOSED, DISPATCHERS),
    "reopen": Move(State.CLOSED, State.NEW, DISPATCHERS),
    "cancel": Move(State.ACKNOWLEDGED, State.CANCELLED, DISPATCHERS),
}

_FORWARD = (State.ACKNOWLEDGED, State.DISPATCHED, State.EN_ROUTE, State.ON_SITE, State.RESOLVED, State.CLOSED)


def app_routes(app: FastAPI) -> set[tuple[str, str]]:
    """(method, path) of every HTTP and WebSocket route the app serves, docs and public ones aside."""
    try:  # FastAPI >= 0.13x keeps included routers as lazy entries of app.routes
        from fastapi.routing import iter_route_contexts

        routes: list[tuple[BaseRoute, str | None]] = [
            (ctx.original_route, ctx.path) for ctx in iter_route_contexts(app.routes)
        ]
    except ImportError:  # pragma: no cover - older FastAPI: a flat list
        routes = [(r, getattr(r, "path", None)) for r in app.routes]
    found: set[tuple[str, str]] = set()
    for route, path in routes:
        if path is None or path in PUBLIC:
            continue
        if isinstance(route, APIWebSocketRoute):
            found.add(("WS", path))
        elif isinstance(route, APIRoute):
            found.update((method, path) for method in (route.methods or set()) - {"HEAD", "OPTIONS"})
    return found


# -- the world the requests run in ----------------------------------------------------------------


@dataclass
class World:
    api: ApiServer
    clients: dict[str, httpx.AsyncClient]
    anonymous: httpx.AsyncClient
    incident: int  # water mains, Oost: moved around by the matrix and the transition cases
    other: int  # water mains, Zuid: dispatched to crew W2 (not ours)
    spare_device: Device  # a lamp: each alert on it opens an incident while none is open
    quiet_device: Device  # an env station: maintenance windows go here
    tokens: dict[str, str] = field(default_factory=dict)
    counter: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def centre(self) -> Centre:
        return centre_of(self.api)

    async def state_of(self, incident_id: int) -> dict[str, Any]:
        async with self.centre.events.read() as unit:
            return await self.centre.desk.get(unit, incident_id)

    async def audit_rows(self, incident_id: int | None = None) -> list[dict[str, Any]]:
        async with self.centre.events.read() as unit:
            return await unit.rows(
                "SELECT * FROM audit_log WHERE %(i)s::bigint IS NULL OR incident_id = %(i)s ORDER BY audit_id",
                {"i": incident_id},
            )

    async def put_in(self, incident_id: int, state: State, crew: str = "W1") -> None:
        """Move an incident (as the system) to ``state``; in a crew state, with ``crew`` on the job."""
        desk = self.centre.desk
        current = State((await self.state_of(incident_id))["state"])
        if current in OPEN and current is not State.NEW:
            await desk.transition(SYSTEM, incident_id, State.RESOLVED, override="test set-up")
            current = State.RESOLVED
        if current in (State.RESOLVED, State.CLOSED) and state is not current:
            await desk.transition(SYSTEM, incident_id, State.NEW)
            current = State.NEW
        if current is state:
            return
        for step in _FORWARD:
            await desk.transition(
                SYSTEM,
                incident_id,
                step,
                crew_id=crew if step is State.DISPATCHED else None,
                override="test set-up" if step is State.RESOLVED else None,
            )
            if step is state:
                return
        raise AssertionError(f"cannot put incident {incident_id} in {state}")

    async def fresh_incident(self) -> int:
        """An open incident (electrical) to use up, e.g. by cancelling it: the open one, or a new one."""
        n = next(self.counter)
        at = self.api_clock() + timedelta(seconds=n)
        await self.centre.receive([alert(self.spare_device, f"current_a_{n}", at)])
        async with self.centre.events.read() as unit:
            row = await unit.row(
                "SELECT max(incident_id) AS id FROM incidents WHERE category = 'electrical' AND state = ANY(%s)",
                ([s.value for s in OPEN],),
            )
        assert row is not None and row["id"] is not None
        return int(row["id"])

    def api_clock(self) -> datetime:
        return self.centre.clock()

    async def new_window(self) -> int:
        now = self.api_clock()
        async with self.centre.events.unit() as unit:
            window = await maintenance.create(
                unit,
                SYSTEM,
                starts_at=now,
                ends_at=now + timedelta(hours=1),
                reason="test",
                device_id=self.quiet_device.device_id,
            )
        return int(window["window_id"])


async def _incident_of(c: Centre, device: Device, at: datetime) -> int:
    await c.receive([alert(device, "pressure_kpa", at)])
    async with c.events.read() as unit:
        row = await unit.row("SELECT incident_id FROM incidents WHERE %s = ANY(assets)", (device.device_id,))
    assert row is not None, f"no incident for {device.device_id}"
    return int(row["incident_id"])


@pytest.fixture
async def world(
    api: ApiServer, login: Callable[[str], httpx.AsyncClient], registered: list[Device], clock: ManualClock
) -> World:
    c = centre_of(api)
    pipes = [d for d in registered if d.kind == "pipe_node"]
    assert len(pipes) >= 2
    first = await _incident_of(c, pipes[0], clock.now - timedelta(minutes=5))
    second = await _incident_of(c, pipes[1], clock.now - timedelta(minutes=5))
    assert first != second
    world = World(
        api=api,
        clients={role: login(role) for role in ROLES},
        anonymous=login("viewer"),
        incident=first,
        other=second,
        spare_device=next(d for d in registered if d.kind == "lamp_pole"),
        quiet_device=next(d for d in registered if d.kind == "env_station"),
    )
    world.anonymous.headers.pop("Authorization")
    world.tokens = {
        role: str(cl.headers["Authorization"]).removeprefix("Bearer ") for role, cl in world.clients.items()
    }
    await world.put_in(second, State.DISPATCHED, crew="W2")
    await c.desk.issue_cap(SYSTEM, first)  # so that GET .../cap has a message to return
    return world


# -- the route matrix -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """How to call a route so that only authorisation can refuse it."""

    json: Any = None
    params: dict[str, str] | None = None
    state: State | None = None  # the matrix incident's state (a crew state: crew W1 on it)


def _calls(w: World) -> dict[tuple[str, str], Call]:
    now = w.api_clock()
    return {
        ("POST", "/users"): Call(json={"username": "placeholder", "password": "long enough", "role": "viewer"}),
        ("GET", "/readings"): Call(
            params={
                "device_id": w.quiet_device.device_id,
                "metric": "pm25_ugm3",
                "start": (now - timedelta(hours=1)).isoformat(),
                "end": now.isoformat(),
            }
        ),
        ("POST", "/maintenance"): Call(
            json={
                "starts_at": now.isoformat(),
                "ends_at": (now + timedelta(hours=1)).isoformat(),
                "reason": "works",
                "device_id": w.quiet_device.device_id,
            }
        ),
        ("POST", "/maintenance/{window_id}/end"): Call(json={"note": "done"}),
        ("POST", "/incidents/{incident_id}/cap"): Call(state=State.NEW),
        ("PUT", "/crews/{crew_id}"): Call(json={"name": "Water mains 2", "skills": ["water_mains", "drainage"]}),
        ("PUT", "/sites/{site_id}"): Call(
            json={"name": "Clinic", "kind": "hospital", "weight": 3, "lat": 52.36, "lon": 4.9}
        ),
        ("GET", "/crew/jobs/{incident_id}"): Call(state=State.DISPATCHED),
        ("POST", "/crew/jobs/{incident_id}/acknowledge"): Call(json={"note": "seen"}, state=State.DISPATCHED),
        ("POST", "/crew/jobs/{incident_id}/en_route"): Call(json={}, state=State.DISPATCHED),
        ("POST", "/crew/jobs/{incident_id}/on_site"): Call(json={}, state=State.EN_ROUTE),
        ("POST", "/crew/jobs/{incident_id}/done"): Call(json={"note": "fixed"}, state=State.ON_SITE),
        ("POST", "/crew/location"): Call(json={"lat": 52.36, "lon": 4.89}),
    }


async def _url(w: World, path: str) -> str:
    if "{window_id}" in path:  # every allowed caller ends a window of its own
        path = path.replace("{window_id}", str(await w.new_window()))
    return path.replace("{incident_id}", str(w.incident)).replace("{crew_id}", "W2").replace("{site_id}", "C1")


def _body(key: tuple[str, str], call: Call, w: World) -> Any:
    if key == ("POST", "/users"):
        return {**call.json, "username": f"user-{next(w.counter)}"}
    return call.json


async def test_the_matrix_covers_every_route(api: ApiServer) -> None:
    served = app_routes(api.app)
    missing = sorted(served - EXPECTED.keys())
    stale = sorted(EXPECTED.keys() - served)
    assert not missing, f"routes without an entry in the access matrix (add them to EXPECTED): {missing}"
    assert not stale, f"the access matrix names routes the app no longer has: {stale}"
    # The route-level check of transitions cannot tell roles apart: every target needs a case.
    assert {m.to for m in TRANSITIONS.values()} == set(State)


async def test_every_route_refuses_strangers_and_roles_without_the_permission(world: World) -> None:
    calls = _calls(world)
    wrong: list[str] = []
    for (method, path), allowed in sorted(EXPECTED.items()):
        if method == "WS":
            continue  # test_websockets_refuse_with_policy_violation
        key = (method, path)
        call = calls.get(key, Call())
        url = await _url(world, path)
        before = len(await world.audit_rows())
        resp = await world.anonymous.request(method, url, json=_body(key, call, world), params=call.params)
        if resp.status_code != 401 or resp.headers.get("www-authenticate") != "Bearer":
            wrong.append(f"{method} {path} without a token: {resp.status_code} {resp.text[:200]}")
        elif len(await world.audit_rows()) != before:
            wrong.append(f"{method} {path} without a token: refused, but the audit log changed")
        if allowed is BY_TARGET:
            continue  # test_transitions_are_authorised_per_target
        for role in ROLES:
            if call.state is not None:
                await world.put_in(world.incident, call.state)
            url = await _url(world, path)
            before = len(await world.audit_rows())
            resp = await world.clients[role].request(method, url, json=_body(key, call, world), params=call.params)
            if role in allowed:
                if not 200 <= resp.status_code < 300:
                    wrong.append(f"{method} {path} as {role} (allowed): {resp.status_code} {resp.text[:200]}")
            else:
                if resp.status_code != 403:
                    wrong.append(f"{method} {path} as {role} (denied): {resp.status_code} {resp.text[:200]}")
                elif len(await world.audit_rows()) != before:
                    wrong.append(f"{method} {path} as {role}: refused, but the audit log changed")
    assert not wrong, "\n".join(wrong)


async def test_transitions_are_authorised_per_target(world: World) -> None:
    wrong: list[str] = []
    path = "/incidents/{}/transitions"
    for name, move in TRANSITIONS.items():
        body = {"to": move.to.value, "note": name, **move.body}
        resp = await world.anonymous.post(path.format(world.incident), json=body)
        if resp.status_code != 401:
            wrong.append(f"{name} without a token: {resp.status_code}")
        for role in ROLES:
            target = await world.fresh_incident() if move.to is State.CANCELLED else world.incident
            await world.put_in(target, move.source)  # a crew state: crew W1 (the crew user's) on the job
            before = await world.state_of(target)
            audit = await world.audit_rows(target)
            resp = await world.clients[role].post(path.format(target), json=body)
            after = await world.state_of(target)
            if role in move.allowed:
                if resp.status_code != move.status:
                    wrong.append(f"{name} as {role} (allowed): {resp.status_code} {resp.text[:200]}")
                elif move.status == 200 and after["state"] != move.to.value:
                    wrong.append(f"{name} as {role}: answered 200 but the incident is {after['state']}")
                elif move.status == 202 and not (after["resolve_pending"] and after["state"] == move.source.value):
                    seen = {k: after[k] for k in ("state", "resolve_pending")}
                    wrong.append(f"{name} as {role}: answered 202 but the resolve was not recorded: {seen}")
            else:
                if resp.status_code != 403:
                    wrong.append(f"{name} as {role} (denied): {resp.status_code} {resp.text[:200]}")
                if after != before or await world.audit_rows(target) != audit:
                    wrong.append(f"{name} as {role}: refused, but the incident or its audit trail changed")
    assert not wrong, "\n".join(wrong)


# -- crews see and move only their own jobs ---------------------------------------------------------


async def test_a_crew_cannot_see_or_move_another_crews_job(world: World) -> None:
    ours, theirs = world.incident, world.other
    await world.put_in(ours, State.DISPATCHED, crew="W1")
    crew = world.clients["crew"]
    assert (await world.state_of(theirs))["crew_id"] == "W2"

    jobs = (await crew.get("/crew/jobs")).json()
    assert [j["incident_id"] for j in jobs] == [ours]
    assert (await crew.get(f"/crew/jobs/{ours}")).status_code == 200

    before, audit, everything = await world.state_of(theirs), await world.audit_rows(theirs), await world.audit_rows()
    assert (await crew.get(f"/crew/jobs/{theirs}")).status_code == 404
    for step in ("acknowledge", "en_route", "on_site", "done"):
        resp = await crew.post(f"/crew/jobs/{theirs}/{step}", json={"note": "not mine"})
        assert resp.status_code == 404, (step, resp.status_code, resp.text)
    for to in ("en_route", "on_site", "resolved"):
        resp = await crew.post(f"/incidents/{theirs}/transitions", json={"to": to})
        assert resp.status_code == 404, (to, resp.status_code, resp.text)
    assert await world.state_of(theirs) == before
    assert await world.audit_rows(theirs) == audit
    assert await world.audit_rows() == everything

    # The crew it belongs to does see it, so the 404s above are about ownership.
    async with httpx.AsyncClient(base_url=world.api.url) as w2:
        w2.headers["Authorization"] = f"Bearer {await token(world.api, 'crew-w2')}"
        assert [j["incident_id"] for j in (await w2.get("/crew/jobs")).json()] == [theirs]
        assert (await w2.get(f"/crew/jobs/{theirs}")).status_code == 200
        assert (await w2.get(f"/crew/jobs/{ours}")).status_code == 404


async def test_a_crew_cannot_use_the_operators_routes(world: World) -> None:
    crew = world.clients["crew"]
    for path in ("/incidents", f"/incidents/{world.incident}", "/incidents/queue", "/audit", "/alerts", "/crews"):
        resp = await crew.get(path)
        assert resp.status_code == 403, (path, resp.status_code, resp.text)


# -- WebSockets -------------------------------------------------------------------------------------


async def _ws_answer(url: str) -> int | str:
    """The close code the server sent, or the type of its first message if it sent one."""
    async with websockets.connect(url, open_timeout=10) as ws:
        try:
            return str(json.loads(await asyncio.wait_for(ws.recv(), 10))["type"])
        except websockets.ConnectionClosed as closed:
            assert closed.rcvd is not None, "closed without a close frame"
            return closed.rcvd.code


async def test_websockets_refuse_with_policy_violation(world: World, clock: ManualClock) -> None:
    base = f"ws://127.0.0.1:{world.api.port}"
    assert await _ws_answer(f"{base}/ws/wall") == 1008
    assert await _ws_answer(f"{base}/ws/wall?token=not.a.token") == 1008
    assert await _ws_answer(f"{base}/ws/crew?token={world.tokens['viewer']}") == 1008
    for (method, path), allowed in EXPECTED.items():
        if method != "WS":
            continue
        assert await _ws_answer(f"{base}{path}") == 1008, path
        for role in ROLES:
            answer = await _ws_answer(f"{base}{path}?token={world.tokens[role]}")
            assert answer == ("snapshot" if role in allowed else 1008), (path, role, answer)
    clock.advance(world.centre.settings.token_ttl_s + 1)
    assert await _ws_answer(f"{base}/ws/wall?token={world.tokens['viewer']}") == 1008
    assert await _ws_answer(f"{base}/ws/crew?token={world.tokens['crew']}") == 1008


# -- tokens -----------------------------------------------------------------------------------------


async def test_an_expired_token_is_refused(
    api: ApiServer, login: Callable[[str], httpx.AsyncClient], clock: ManualClock
) -> None:
    viewer = login("viewer")
    ttl = centre_of(api).settings.token_ttl_s
    assert (await viewer.get("/me")).status_code == 200
    clock.advance(ttl - 1)
    assert (await viewer.get("/incidents")).status_code == 200
    clock.advance(2)
    for path in ("/me", "/incidents"):
        resp = await viewer.get(path)
        assert resp.status_code == 401, (path, resp.status_code, resp.text)
        assert "expired" in resp.json()["detail"]


async def test_a_wall_left_running_refreshes_its_token(
    api: ApiServer, login: Callable[[str], httpx.AsyncClient], clock: ManualClock
) -> None:
    viewer = login("viewer")
    ttl = centre_of(api).settings.token_ttl_s
    clock.advance(ttl - 60)
    resp = await viewer.post("/token/refresh")
    assert resp.status_code == 200 and resp.json()["role"] == "viewer", resp.text
    fresh = resp.json()["access_token"]
    clock.advance(120)  # the first token has expired, the refreshed one has not
    assert (await viewer.get("/me")).status_code == 401
    viewer.headers["Authorization"] = f"Bearer {fresh}"
    assert (await viewer.get("/me")).json()["username"] == "viewer"
    # A token for an account that no longer exists (or changed role) is not renewed.
    async with httpx.AsyncClient(base_url=api.url) as http:
        http.headers["Authorization"] = f"Bearer {api.token('ghost', Role.VIEWER)}"
        assert (await http.get("/me")).status_code == 200
        resp = await http.post("/token/refresh")
        assert resp.status_code == 401 and "log in again" in resp.json()["detail"]
        http.headers["Authorization"] = f"Bearer {api.token('viewer', Role.ADMIN)}"
        assert (await http.post("/token/refresh")).status_code == 401


async def test_a_token_issued_on_the_centres_clock_is_valid(api: ApiServer, clock: ManualClock) -> None:
    # Tokens are judged on the injected clock: one issued after the clock moved on must work,
    # however far ahead of the wall clock the centre's clock is (replays, driven tests).
    clock.advance(3600)
    async with httpx.AsyncClient(base_url=api.url) as http:
        http.headers["Authorization"] = f"Bearer {await token(api, 'viewer')}"
        resp = await http.get("/me")
        assert resp.status_code == 200, resp.text
