"""The live channels over real WebSockets: /ws/wall and /ws/crew.

Snapshot then deltas, resume after a disconnect (exactly the missed events), a snapshot when
the resume point is gone, nothing lost while clients connect under load, each crew seeing only
its own jobs, escalations for dispatchers only, a slow client dropped with a resync without
holding up a fast one, a pending resolve on the wall, and refused tokens.

Alerts come from pipe nodes registered kilometres apart, in no shared district metered area:
each device is an incident of its own (water main pressure, severity 2), so the tests know which
changes to expect.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import httpx
import msgspec
import psycopg
import pytest
import websockets
from psycopg.rows import dict_row
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from cityops.core import schema
from cityops.core.contracts import Alert, DeviceKind, Topics
from cityops.core.registry import Device
from ioc import ApiServer
from ioc.centre import Centre
from ioc.clock import ManualClock
from tests.ioc.conftest import alert, centre_of, ioc_settings, token

Event = dict[str, Any]
Login = Callable[[str], httpx.AsyncClient]

TIMEOUT = 10.0
DEMO_CREWS = {"W1", "W2", "E1", "E2", "V1", "D1"}


# -- helpers ---------------------------------------------------------------------------------------


# Registered for every test: far enough apart (> 1 km) that no two alerts correlate.
PIPES = [f"pipe-{x}" for x in "abcdem"] + [f"pipe-{i}" for i in range(150)]


class Alerts:
    """Distinct alerts (one a millisecond apart) on the test's clock, from ``PIPES``."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.n = 0

    def __call__(self, device: str, *, explanation: str | None = None) -> Alert:
        self.n += 1
        at = self.clock.now - timedelta(minutes=5) + timedelta(milliseconds=self.n)
        made = alert(device, "pressure_kpa", at)
        return made if explanation is None else msgspec.structs.replace(made, explanation=explanation)


@pytest.fixture
async def alerts(clock: ManualClock, database: str) -> Alerts:
    pipes = [
        Device(name, DeviceKind.PIPE_NODE, 52.2 + 0.01 * (i // 20), 4.7 + 0.02 * (i % 20), "Live")
        for i, name in enumerate(PIPES)
    ]
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await schema.apply(conn)  # idempotent; the API may not have created it yet
        await schema.upsert_devices(conn, pipes)
    return Alerts(clock)


def ws_url(api: ApiServer, path: str, tok: str | None, last: int | str | None = None) -> str:
    query = [] if tok is None else [f"token={tok}"]
    if last is not None:
        query.append(f"last_event_id={last}")
    return f"ws://127.0.0.1:{api.port}{path}" + ("?" + "&".join(query) if query else "")


def connect(
    api: ApiServer, tok: str | None, *, path: str = "/ws/wall", last: int | str | None = None, **kw: Any
) -> ws_connect:
    return ws_connect(ws_url(api, path, tok, last), open_timeout=TIMEOUT, **kw)


async def recv(ws: ClientConnection, timeout: float = TIMEOUT) -> Event:
    event: Event = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return event


async def poll(ws: ClientConnection, timeout: float = 0.1) -> Event | None:
    """The next event, or None if none comes within ``timeout`` (recv() is safe to cancel)."""
    try:
        return await recv(ws, timeout)
    except TimeoutError:
        return None


async def recv_n(ws: ClientConnection, n: int, timeout: float = TIMEOUT) -> list[Event]:
    return [await recv(ws, timeout) for _ in range(n)]


async def closed_with(ws: ClientConnection, timeout: float = TIMEOUT) -> tuple[list[Event], int | None]:
    """Read until the server closes; returns what was read and the close code."""
    got: list[Event] = []
    with pytest.raises(websockets.ConnectionClosed) as closed:
        async with asyncio.timeout(timeout):
            while True:
                got.append(json.loads(await ws.recv()))
    rcvd = closed.value.rcvd
    return got, None if rcvd is None else rcvd.code


async def logged(database: str, channel: str, after: int = 0) -> list[Event]:
    """The events of ``channel`` after id ``after`` as the server logged them, in order."""
    async with await psycopg.AsyncConnection.connect(database, autocommit=True, row_factory=dict_row) as conn:
        cur = await conn.execute(
            "SELECT event_id, body FROM ioc_events WHERE channel = %s AND event_id > %s ORDER BY event_id",
            (channel, after),
        )
        return [{"id": int(r["event_id"]), **r["body"]} for r in await cur.fetchall()]


async def last_logged(database: str, channel: str | None = None) -> int:
    """The last event id logged (of ``channel``, or of any)."""
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT coalesce(max(event_id), 0) FROM ioc_events WHERE %(c)s::text IS NULL OR channel = %(c)s",
            {"c": channel},
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def incident_of(c: Centre, device: str) -> dict[str, Any]:
    async with c.events.read() as unit:
        row = await unit.row("SELECT incident_id, state, version FROM incidents WHERE %s = ANY(assets)", (device,))
    assert row is not None, f"no incident for {device}"
    return row


async def move(http: httpx.AsyncClient, incident_id: int, to: str, **extra: Any) -> dict[str, Any]:
    resp = await http.post(f"/incidents/{incident_id}/transitions", json={"to": to, **extra})
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    assert body["state"] == to
    return body


def by_id(rows: list[dict[str, Any]], key: str) -> dict[Any, dict[str, Any]]:
    return {r[key]: r for r in rows}


# -- the wall --------------------------------------------------------------------------------------


async def test_wall_gets_a_snapshot_then_deltas(
    api: ApiServer, login: Login, alerts: Alerts, clock: ManualClock, database: str
) -> None:
    c = centre_of(api)
    first = alerts("pipe-a")
    await c.receive([first])
    a = await incident_of(c, "pipe-a")
    window = await login("operator").post(
        "/maintenance",
        json={
            "device_id": "pipe-m",
            "starts_at": (clock.now - timedelta(minutes=1)).isoformat(),
            "ends_at": (clock.now + timedelta(hours=1)).isoformat(),
            "reason": "valve replacement",
        },
    )
    assert window.status_code == 201, window.text

    async with connect(api, await token(api, "viewer")) as ws:
        snap = await recv(ws)
        assert snap["type"] == "snapshot"
        assert snap["id"] == await last_logged(database) > 0
        incidents = by_id(snap["incidents"], "incident_id")
        assert set(incidents) == {a["incident_id"]}
        assert incidents[a["incident_id"]]["state"] == "new"
        assert incidents[a["incident_id"]]["assets"] == ["pipe-a"]
        assert [(x["alert_id"], x["incident_id"]) for x in snap["alerts"]] == [(first.alert_id, a["incident_id"])]
        assert {x["crew_id"] for x in snap["crews"]} == DEMO_CREWS
        assert by_id(snap["crews"], "crew_id")["W1"]["skills"] == ["water_mains"]
        assert [(w["window_id"], w["device_id"]) for w in snap["maintenance"]] == [
            (window.json()["window_id"], "pipe-m")
        ]
        assert snap["kpis"]["overall"]["incidents"] == 1
        assert snap["kpis"]["open_by_severity"] == {"1": 0, "2": 1, "3": 0, "4": 0}

        # An alert after connecting: an alerts event, then its (new) incident's.
        second = alerts("pipe-b")
        await c.receive([second])
        b = await incident_of(c, "pipe-b")
        got_alert, got_incident = await recv_n(ws, 2)
        assert got_alert["type"] == "alerts" and got_alert["alerts"][0]["alert_id"] == second.alert_id
        assert got_alert["alerts"][0]["incident_id"] == b["incident_id"]
        assert got_incident["type"] == "incident" and got_incident["incident"]["incident_id"] == b["incident_id"]
        assert got_incident["incident"]["state"] == "new"
        # A second alert on the same device: the same incident, one more alert.
        await c.receive([alerts("pipe-b")])
        again = await recv_n(ws, 2)
        assert [e["type"] for e in again] == ["alerts", "incident"]
        assert again[1]["incident"]["incident_id"] == b["incident_id"]
        assert again[1]["incident"]["alert_count"] == 2

        # A dispatcher's move.
        await move(login("dispatcher"), a["incident_id"], "acknowledged")
        moved = await recv(ws)
        assert moved["type"] == "incident"
        assert moved["incident"]["incident_id"] == a["incident_id"]
        assert moved["incident"]["state"] == "acknowledged"
        assert moved["incident"]["version"] == a["version"] + 1

        # Every wall event, numbered in order after the snapshot, as logged.
        events = [got_alert, got_incident, *again, moved]
        assert [e["id"] for e in events] == list(range(snap["id"] + 1, snap["id"] + 6))
        assert events == await logged(database, "wall", snap["id"])


# -- resume ----------------------------------------------------------------------------------------


async def test_reconnect_resumes_with_exactly_the_missed_events(
    api: ApiServer, login: Login, alerts: Alerts, clock: ManualClock, database: str
) -> None:
    c = centre_of(api)
    viewer = await token(api, "viewer")
    dispatcher = login("dispatcher")
    await c.receive([alerts("pipe-a")])
    a = await incident_of(c, "pipe-a")

    async with connect(api, viewer) as ws:
        snap = await recv(ws)
        await c.receive([alerts("pipe-b")])
        last = (await recv_n(ws, 2))[-1]["id"]
    assert last == snap["id"] + 2

    # While away: two alerts (one new incident, one update), a move, a dispatch (also on the
    # crew's channel, which the wall must not get), and a maintenance window.
    away = [alerts("pipe-c"), alerts("pipe-a")]
    await c.receive(away[:1])
    await c.receive(away[1:])
    await move(dispatcher, a["incident_id"], "acknowledged")
    await move(dispatcher, a["incident_id"], "dispatched", crew_id="W1")
    resp = await login("operator").post(
        "/maintenance",
        json={
            "device_id": "pipe-m",
            "starts_at": clock.now.isoformat(),
            "ends_at": (clock.now + timedelta(hours=1)).isoformat(),
            "reason": "flushing",
        },
    )
    assert resp.status_code == 201
    missed = await logged(database, "wall", last)
    assert [e["type"] for e in missed] == [
        "alerts",
        "incident",
        "alerts",
        "incident",
        "incident",
        "incident",
        "maintenance",
    ]
    assert [e["incident"]["state"] for e in missed if e["type"] == "incident"] == [
        "new",
        "new",
        "acknowledged",
        "dispatched",
    ]
    assert [a["alert_id"] for e in missed if e["type"] == "alerts" for a in e["alerts"]] == [x.alert_id for x in away]
    assert missed[-1]["window"]["window_id"] == resp.json()["window_id"] and missed[-1]["active"] is True
    assert len(await logged(database, "crew:W1", last)) == 1

    async with connect(api, viewer, last=last) as ws:
        assert await recv(ws) == {"type": "resume", "from": last}
        replayed = await recv_n(ws, len(missed))
        assert replayed == missed
        assert [e["id"] for e in replayed] == sorted({e["id"] for e in replayed})
        assert replayed[0]["id"] > last
        # Then live, with nothing repeated in between.
        live = alerts("pipe-d")
        await c.receive([live])
        after = await recv(ws)
        assert after["type"] == "alerts" and after["alerts"][0]["alert_id"] == live.alert_id
        assert after["id"] > replayed[-1]["id"]
        current = (await recv(ws))["id"]

    # Nothing missed: an empty resume, then live events.
    async with connect(api, viewer, last=current) as ws:
        assert await recv(ws) == {"type": "resume", "from": current}
        await c.receive([alerts("pipe-e")])
        assert (await recv(ws))["id"] == current + 1


async def test_stale_or_future_resume_points_get_a_snapshot(api: ApiServer, alerts: Alerts, database: str) -> None:
    c = centre_of(api)
    viewer = await token(api, "viewer")
    for device in ("pipe-a", "pipe-b", "pipe-c"):
        await c.receive([alerts(device)])
    top = await last_logged(database)
    assert top >= 6

    async def first(last: int | str) -> Event:
        async with connect(api, viewer, last=last) as ws:
            return await recv(ws)

    for bad in (top + 1, top + 1000, -1, "soon"):
        got = await first(bad)
        assert got["type"] == "snapshot" and got["id"] == top, bad
        assert len(got["incidents"]) == 3

    # Pruned: the first four events are gone.
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute("DELETE FROM ioc_events WHERE event_id <= 4")
    for gone in (0, 1, 3):
        got = await first(gone)
        assert got["type"] == "snapshot" and got["id"] == top, gone
    # Every event after 4 is still there: a client at 4 resumes.
    async with connect(api, viewer, last=4) as ws:
        assert await recv(ws) == {"type": "resume", "from": 4}
        assert await recv_n(ws, top - 4) == await logged(database, "wall", 4)

    # All pruned: only a client that saw the very last event can resume (with nothing).
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute("DELETE FROM ioc_events")
    assert (await first(top - 1))["type"] == "snapshot"
    assert await first(top) == {"type": "resume", "from": top}


# -- no event lost while clients connect -------------------------------------------------------------


async def test_no_change_is_lost_while_clients_connect(
    api: ApiServer, login: Login, alerts: Alerts, database: str
) -> None:
    c = centre_of(api)
    viewer = await token(api, "viewer")
    dispatcher = login("dispatcher")
    rng, jitter = random.Random(7), random.Random(11)
    devices = [f"pipe-{i}" for i in range(24)]
    touched = set(devices[:3])
    await c.receive([alerts(d) for d in devices[:3]])
    writers, rounds, n_clients = 4, 20, 24
    done = 0  # rounds done, over all writers
    writing = writers
    target = 1 << 62  # the last event id, once every writer is done

    async def write(w: int) -> None:
        nonlocal done, writing
        try:
            for i in range(rounds):
                some = rng.sample(devices, rng.randint(1, 3))
                touched.update(some)
                await c.receive([alerts(d) for d in some])
                if w == 0 and i % 5 == 2:
                    fresh = (await dispatcher.get("/incidents", params={"state": "new"})).json()
                    if fresh:
                        await move(dispatcher, fresh[0]["incident_id"], "acknowledged")
                done += 1
        finally:
            writing -= 1

    class Client:
        def __init__(self, n: int) -> None:
            self.n = n
            self.snapshot: Event | None = None
            self.events: list[Event] = []  # after the snapshot, over every connection
            self.resumed = False

        @property
        def last(self) -> int:
            assert self.snapshot is not None
            return self.events[-1]["id"] if self.events else int(self.snapshot["id"])

        async def read(self, ws: ClientConnection, quota: int) -> None:
            while self.last < target and quota > 0:
                event = await poll(ws)
                if event is not None:
                    self.events.append(event)
                    quota -= 1

        async def run(self) -> None:
            # Clients connect all along the writes.
            while done < self.n * writers * rounds // n_clients and writing:
                await asyncio.sleep(0.001)
            await asyncio.sleep(jitter.uniform(0, 0.03))
            async with connect(api, viewer) as ws:
                self.snapshot = await recv(ws)
                assert self.snapshot["type"] == "snapshot"
                # Every third client drops out after a few events and resumes at once.
                await self.read(ws, 3 if self.n % 3 == 0 else 1 << 30)
            if self.last >= target:
                return
            async with connect(api, viewer, last=self.last) as ws:
                self.resumed = True
                assert await recv(ws) == {"type": "resume", "from": self.last}
                await self.read(ws, 1 << 30)

    snapshots: list[Event] = []  # from clients that only look, over and over

    async def glance() -> None:
        while writing:
            async with connect(api, viewer) as ws:
                snapshots.append(await recv(ws))
            await asyncio.sleep(0.01)

    async def clients() -> list[Client]:
        nonlocal target
        made = [Client(n) for n in range(n_clients)]
        tasks = [asyncio.create_task(cl.run()) for cl in made] + [asyncio.create_task(glance()) for _ in range(3)]
        while writing:
            await asyncio.sleep(0.01)
        target = await last_logged(database, "wall")
        await asyncio.wait_for(asyncio.gather(*tasks), 20)
        return made

    writes = [asyncio.create_task(write(w)) for w in range(writers)]
    made = await clients()
    await asyncio.gather(*writes)
    final = by_id((await dispatcher.get("/incidents", params={"open_only": "false"})).json(), "incident_id")
    assert sorted(i["assets"][0] for i in final.values()) == sorted(touched)
    assert any(i["state"] == "acknowledged" for i in final.values())
    every_alert = {r["alert_id"] for r in (await dispatcher.get("/alerts", params={"limit": 500})).json()}
    wall = await logged(database, "wall")
    assert wall[-1]["id"] == target
    # The clients did connect while the writers wrote.
    assert len({cl.snapshot["id"] for cl in made if cl.snapshot is not None}) >= n_clients // 2
    assert len({snap["id"] for snap in snapshots}) >= 10

    # Every snapshot is the state as of its id: each incident as its last event up to there has
    # it, and every alert published up to there.
    for snap in snapshots + [cl.snapshot for cl in made if cl.snapshot is not None]:
        as_of = {
            e["incident"]["incident_id"]: e["incident"]["version"]
            for e in wall
            if e["type"] == "incident" and e["id"] <= snap["id"]
        }
        assert {i["incident_id"]: i["version"] for i in snap["incidents"]} == as_of, snap["id"]
        published = {
            a["alert_id"] for e in wall if e["type"] == "alerts" and e["id"] <= snap["id"] for a in e["alerts"]
        }
        assert published == {x["alert_id"] for x in snap["alerts"]}, snap["id"]

    for cl in made:
        assert cl.snapshot is not None
        # Then exactly the logged events after the snapshot: no gap, no duplicate, in order.
        expected = [e for e in wall if e["id"] > cl.snapshot["id"]]
        assert [e["id"] for e in cl.events] == [e["id"] for e in expected], (cl.n, cl.resumed)
        assert cl.events == expected
        # Snapshot + events = the final state of every incident, and every alert.
        seen = by_id(cl.snapshot["incidents"], "incident_id")
        seen_alerts = {x["alert_id"] for x in cl.snapshot["alerts"]}
        for e in cl.events:
            if e["type"] == "incident":
                seen[e["incident"]["incident_id"]] = e["incident"]
            elif e["type"] == "alerts":
                seen_alerts.update(a["alert_id"] for a in e["alerts"])
        assert set(seen) == set(final), cl.n
        for incident_id, state in final.items():
            got = seen[incident_id]
            assert (got["version"], got["state"], got["alert_count"]) == (
                state["version"],
                state["state"],
                state["alert_count"],
            ), (cl.n, incident_id)
        assert seen_alerts == every_alert, cl.n
    assert any(cl.resumed for cl in made)


# -- the crews' channels -------------------------------------------------------------------------------


async def test_crews_get_their_own_jobs_only(api: ApiServer, login: Login, alerts: Alerts, database: str) -> None:
    c = centre_of(api)
    dispatcher = login("dispatcher")
    for device in ("pipe-a", "pipe-b", "pipe-c"):
        await c.receive([alerts(device)])
    a, b, cc = [(await incident_of(c, d))["incident_id"] for d in ("pipe-a", "pipe-b", "pipe-c")]
    await move(dispatcher, a, "acknowledged")
    await move(dispatcher, a, "dispatched", crew_id="W1")

    async with (
        connect(api, await token(api, "crew-w1"), path="/ws/crew") as w1,
        connect(api, await token(api, "crew-w2"), path="/ws/crew") as w2,
    ):
        snap1, snap2 = await recv(w1), await recv(w2)
        assert snap1["type"] == "snapshot" and snap1["crew"]["crew_id"] == "W1"
        assert [(j["incident_id"], j["state"], j["crew_id"]) for j in snap1["jobs"]] == [(a, "dispatched", "W1")]
        assert snap1["crew"]["jobs"] == [a]
        assert snap2["type"] == "snapshot" and snap2["crew"]["crew_id"] == "W2" and snap2["jobs"] == []
        assert "incidents" not in snap1 and "alerts" not in snap1

        # Dispatched to W1: a job event (acknowledging it first is not the crew's business).
        await move(dispatcher, b, "acknowledged")
        await move(dispatcher, b, "dispatched", crew_id="W1")
        job = await recv(w1)
        assert job["type"] == "job" and job["id"] > snap1["id"]
        assert (job["incident"]["incident_id"], job["incident"]["state"], job["incident"]["crew_id"]) == (
            b,
            "dispatched",
            "W1",
        )
        # The crew reports en route: its own move comes back on its channel.
        resp = await login("crew").post(f"/crew/jobs/{b}/en_route", json={"note": "on our way"})
        assert resp.status_code == 200, resp.text
        job = await recv(w1)
        assert (job["type"], job["incident"]["incident_id"], job["incident"]["state"]) == ("job", b, "en_route")
        # Recalled: the crew is told the job is no longer theirs.
        await move(dispatcher, b, "acknowledged", note="recalled")
        job = await recv(w1)
        assert (job["type"], job["incident"]["incident_id"], job["incident"]["state"]) == ("job", b, "acknowledged")
        assert job["incident"]["crew_id"] is None

        # W2 heard nothing of W1's jobs: the first thing it gets is its own dispatch.
        await move(dispatcher, cc, "acknowledged")
        await move(dispatcher, cc, "dispatched", crew_id="W2")
        job = await recv(w2)
        assert (job["type"], job["incident"]["incident_id"], job["incident"]["crew_id"]) == ("job", cc, "W2")
        # And W1 nothing of W2's: its next event is about its own job.
        await move(dispatcher, a, "en_route")
        job = await recv(w1)
        assert (job["type"], job["incident"]["incident_id"], job["incident"]["state"]) == ("job", a, "en_route")
        last_w1 = job["id"]
        assert [e["id"] for e in await logged(database, "crew:W1", snap1["id"])][-1] == last_w1

    # W1 away: its job moves, and W2's; on resume W1 gets only its own.
    await move(dispatcher, a, "on_site")
    await move(dispatcher, cc, "en_route")
    async with connect(api, await token(api, "crew-w1"), path="/ws/crew", last=last_w1) as w1:
        assert await recv(w1) == {"type": "resume", "from": last_w1}
        job = await recv(w1)
        assert (job["type"], job["incident"]["incident_id"], job["incident"]["state"]) == ("job", a, "on_site")
        assert [job] == await logged(database, "crew:W1", last_w1)
        with pytest.raises(TimeoutError):
            await recv(w1, timeout=0.3)


# -- escalations -----------------------------------------------------------------------------------------


async def test_escalations_go_to_dispatchers_not_viewers(
    api: ApiServer, alerts: Alerts, clock: ManualClock, database: str
) -> None:
    c = centre_of(api)
    await c.receive([alerts("pipe-a")])
    a = await incident_of(c, "pipe-a")
    severity = (await logged(database, "wall"))[-1]["incident"]["severity"]
    ack_s = c.settings.ack_s[severity - 1]

    # Logged in before the clock moves, as a wall screen is.
    dispatcher, viewer = await token(api, "dispatcher"), await token(api, "viewer")
    async with connect(api, dispatcher) as boss, connect(api, viewer) as view:
        await recv(boss)
        before = (await recv(view))["id"]
        # Not yet due: nothing.
        clock.advance(ack_s - 10)
        assert (await c.tick())["ack_breaches"] == 0
        clock.advance(20)
        assert (await c.tick())["ack_breaches"] == 1

        update, escalation = await recv_n(boss, 2)
        assert update["type"] == "incident" and update["incident"]["incident_id"] == a["incident_id"]
        assert update["incident"]["ack_breached"] is True
        assert escalation["type"] == "escalation" and escalation["breach"] == "ack"
        assert escalation["incident"]["incident_id"] == a["incident_id"]
        assert escalation["id"] > update["id"]

        seen = await recv(view)
        assert seen == update
        # The viewer's next event is the next wall change, not the escalation.
        later = alerts("pipe-b")
        await c.receive([later])
        nxt = await recv(view)
        assert nxt["type"] == "alerts" and nxt["alerts"][0]["alert_id"] == later.alert_id
        assert nxt["id"] > escalation["id"]
        # Nor is it in the viewer's resume; a dispatcher's has it.
    async with connect(api, viewer, last=before) as view:
        assert await recv(view) == {"type": "resume", "from": before}
        assert [e["type"] for e in await recv_n(view, 3)] == ["incident", "alerts", "incident"]
    async with connect(api, dispatcher, last=before) as boss:
        assert await recv(boss) == {"type": "resume", "from": before}
        assert [e["type"] for e in await recv_n(boss, 4)] == ["incident", "escalation", "alerts", "incident"]


# -- a slow client ---------------------------------------------------------------------------------------


@pytest.fixture
async def small_queue_api(topics: Topics, database: str, uid: str, clock: ManualClock) -> AsyncIterator[ApiServer]:
    async with ApiServer(ioc_settings(topics, database, uid, ws_queue_size=20), clock=clock) as server:
        yield server


async def test_a_slow_client_is_dropped_without_holding_up_a_fast_one(
    small_queue_api: ApiServer, alerts: Alerts, database: str
) -> None:
    api = small_queue_api
    c = centre_of(api)
    viewer = await token(api, "viewer")
    # Large events fill the TCP buffers of a client that stops reading (uncompressed: "x" * n deflates to nothing).
    big = "x" * 100_000
    fast_events: list[Event] = []

    async with (
        connect(api, viewer, max_size=None) as fast,
        connect(api, viewer, max_size=None, max_queue=1, compression=None) as slow,
    ):
        fast_snap, slow_snap = await recv(fast), await recv(slow)
        assert len(c.hub) == 2

        async def read_fast() -> None:
            while True:
                fast_events.append(await recv(fast, timeout=60))

        reader = asyncio.create_task(read_fast())
        try:
            dropped_at = None
            for i in range(150):
                await c.receive([alerts(f"pipe-{i}", explanation=big)])
                top = await last_logged(database, "wall")
                # The fast client has it promptly, whatever the slow one does.
                async with asyncio.timeout(3):
                    while not fast_events or fast_events[-1]["id"] < top:
                        await asyncio.sleep(0.005)
                if dropped_at is None and len(c.hub) == 1:
                    dropped_at = i
                if dropped_at is not None and i >= dropped_at + 3:
                    break
            assert dropped_at is not None, "the slow client was never dropped"
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

        wall = await logged(database, "wall")
        assert fast_events == [e for e in wall if e["id"] > fast_snap["id"]]

        # The slow client reads at last: what was queued, then the resync notice and 1013.
        got, code = await closed_with(slow, timeout=30)
        assert code == 1013
        assert got[-1]["type"] == "resync"
        received = got[:-1]
        assert received == [e for e in wall if slow_snap["id"] < e["id"] <= received[-1]["id"]]
        last = received[-1]["id"]
        assert last < wall[-1]["id"]

    # Reconnecting with its last id, it misses nothing.
    async with connect(api, viewer, last=last, max_size=None) as slow:
        assert await recv(slow) == {"type": "resume", "from": last}
        missed = [e for e in wall if e["id"] > last]
        assert await recv_n(slow, len(missed)) == missed
        assert len(c.hub) == 1


# -- a resolve the data do not confirm yet ----------------------------------------------------------


async def test_a_resolve_waiting_for_the_sensors_is_published(api: ApiServer, login: Login, alerts: Alerts) -> None:
    c = centre_of(api)
    await c.receive([alerts("pipe-a")])
    a = (await incident_of(c, "pipe-a"))["incident_id"]
    dispatcher = login("dispatcher")
    await move(dispatcher, a, "acknowledged")
    async with connect(api, await token(api, "viewer")) as ws:
        await recv(ws)
        # No readings: the data do not confirm the resolve yet (202), the request is recorded.
        resp = await dispatcher.post(f"/incidents/{a}/transitions", json={"to": "resolved"})
        assert resp.status_code == 202, resp.text
        assert resp.json()["incident"]["resolve_pending"] is True
        event = await recv(ws, timeout=3)
        assert event["type"] == "incident" and event["incident"]["incident_id"] == a
        assert (event["incident"]["state"], event["incident"]["resolve_pending"]) == ("acknowledged", True)
    assert (await dispatcher.get(f"/incidents/{a}")).json()["resolve_pending"] is True


# -- refused -----------------------------------------------------------------------------------------


async def test_missing_or_bad_tokens_are_refused_with_1008(api: ApiServer) -> None:
    crew = await token(api, "crew-w1")
    viewer = await token(api, "viewer")
    for path, tok in (
        ("/ws/wall", None),
        ("/ws/wall", "not-a-token"),
        ("/ws/wall", viewer[:-4] + "AAAA"),
        ("/ws/crew", None),
        ("/ws/crew", "not-a-token"),
        ("/ws/wall", crew),  # a crew has no wall
        ("/ws/crew", viewer),  # a viewer has no crew channel
    ):
        async with connect(api, tok, path=path) as ws:
            got, code = await closed_with(ws)
            assert (got, code) == ([], 1008), (path, tok)
    assert len(centre_of(api).hub) == 0
