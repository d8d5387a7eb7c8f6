"""The incident lifecycle as a state machine: every allowed and every refused transition."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import httpx
import pytest

from cityops.core.registry import Device
from ioc import ApiServer
from ioc.clock import ManualClock
from ioc.errors import TransitionRefused
from ioc.transitions import State, check
from tests.ioc.conftest import alert, centre_of

N, A, D, E, S, R, C, X = (
    State.NEW,
    State.ACKNOWLEDGED,
    State.DISPATCHED,
    State.EN_ROUTE,
    State.ON_SITE,
    State.RESOLVED,
    State.CLOSED,
    State.CANCELLED,
)

# Written out independently of ioc.transitions.ALLOWED, so a change there must be made here too.
EXPECTED = {
    (N, A), (N, R), (N, X),
    (A, D), (A, R), (A, X),
    (D, E), (D, S), (D, A), (D, R), (D, X),
    (E, S), (E, A), (E, R), (E, X),
    (S, R), (S, A), (S, X),
    (R, C), (R, N),
    (C, N),
}  # fmt: skip


@pytest.mark.parametrize(("current", "target"), list(itertools.product(State, State)))
def test_every_transition_is_allowed_or_refused_as_specified(current: State, target: State) -> None:
    if (current, target) in EXPECTED:
        check(current, target)
    else:
        with pytest.raises(TransitionRefused) as refused:
            check(current, target)
        assert refused.value.status == 409
        allowed = refused.value.extra["allowed"]
        assert allowed == sorted(t.value for c, t in EXPECTED if c is current)


# A path through the API that reaches each state, with the override resolving without data.
PATH_TO: dict[State, list[dict[str, object]]] = {
    N: [],
    A: [{"to": "acknowledged"}],
    D: [{"to": "acknowledged"}, {"to": "dispatched", "crew_id": "W1"}],
    E: [{"to": "acknowledged"}, {"to": "dispatched", "crew_id": "W1"}, {"to": "en_route"}],
    S: [{"to": "acknowledged"}, {"to": "dispatched", "crew_id": "W1"}, {"to": "on_site"}],
    R: [{"to": "resolved", "override_reason": "checked on site"}],
    C: [{"to": "resolved", "override_reason": "checked on site"}, {"to": "closed"}],
    X: [{"to": "cancelled", "note": "false alarm"}],
}


def _move(target: State) -> dict[str, object]:
    body: dict[str, object] = {"to": target.value, "note": "test"}
    if target is D:
        body["crew_id"] = "W2"
    if target is R:
        body["override_reason"] = "confirmed by phone"
    return body


@pytest.mark.parametrize("current", list(State))
async def test_the_api_answers_every_move_from_every_state(
    api: ApiServer,
    registered: list[Device],
    login: Callable[[str], httpx.AsyncClient],
    clock: ManualClock,
    current: State,
) -> None:
    """From each state, every target through the REST API: 200 when allowed (state and audit
    change), 409 with the allowed states when not (nothing changes)."""
    c = centre_of(api)
    admin = login("admin")
    pipe = next(d for d in registered if d.kind == "pipe_node")
    for target in State:
        clock.advance(c.settings.correlation_window_s + 1)  # a new incident each time
        await c.receive([alert(pipe, "pressure_kpa", clock.now)])
        incident_id = max(i["incident_id"] for i in (await admin.get("/incidents", params={"open_only": False})).json())
        for step in PATH_TO[current]:
            resp = await admin.post(f"/incidents/{incident_id}/transitions", json=step)
            assert resp.status_code == 200, (current, step, resp.text)
        before = (await admin.get(f"/incidents/{incident_id}")).json()
        assert before["state"] == current.value
        audit_before = (await admin.get(f"/incidents/{incident_id}/audit")).json()
        resp = await admin.post(f"/incidents/{incident_id}/transitions", json=_move(target))
        after = (await admin.get(f"/incidents/{incident_id}")).json()
        audit = (await admin.get(f"/incidents/{incident_id}/audit")).json()
        if (current, target) in EXPECTED:
            assert resp.status_code == 200, (current, target, resp.text)
            assert after["state"] == target.value and after["version"] == before["version"] + 1
            assert audit[-1]["from_state"] == current.value and audit[-1]["to_state"] == target.value
            assert audit[-1]["actor"] == "admin" and audit[-1]["role"] == "admin" and audit[-1]["note"] == "test"
        else:
            assert resp.status_code == 409, (current, target, resp.text)
            assert resp.json()["allowed"] == sorted(t.value for c_, t in EXPECTED if c_ is current)
            assert current.value in resp.json()["detail"]
            assert after == before and audit == audit_before
