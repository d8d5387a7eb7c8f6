"""Incidents: the queue, one incident with its alerts and audit trail, its moves, crews to send."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, Field

from ioc import dispatch, evidence
from ioc.auth import Principal
from ioc.errors import RequestError
from ioc.incidents import SELECT_INCIDENT
from ioc.routes.deps import CentreDep, Dispatcher, IncidentId, Reader, allow_any
from ioc.transitions import OPEN, State, allowed

router = APIRouter(tags=["incidents"])


class Move(BaseModel):
    to: State = Field(description="the state to move to")
    note: str = Field("", max_length=2000)
    crew_id: str | None = Field(None, description="the crew to send (to = dispatched)", max_length=100)
    override_reason: str | None = Field(
        None,
        max_length=2000,
        description="resolve without the sensors' confirmation (dispatcher, admin): why",
    )


@router.get("/incidents")
async def list_incidents(
    c: CentreDep,
    _: Reader,
    state: State | None = None,
    open_only: bool = True,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 200,
) -> list[dict[str, Any]]:
    """Incidents, most urgent first: open ones (default), or all, or those in one state."""
    async with c.events.read() as unit:
        return await unit.rows(
            SELECT_INCIDENT + " WHERE (%(state)s::text IS NULL OR i.state = %(state)s) "
            "AND (NOT %(open)s OR %(state)s::text IS NOT NULL OR i.state = ANY(%(open_states)s)) "
            "ORDER BY i.priority DESC, i.opened_at DESC LIMIT %(limit)s",
            {
                "state": state.value if state else None,
                "open": open_only,
                "open_states": [s.value for s in OPEN],
                "limit": limit,
            },
        )


@router.get("/incidents/queue")
async def incident_queue(c: CentreDep, _: Reader) -> list[dict[str, Any]]:
    """Incidents waiting for a crew (new, acknowledged), by priority = (severity + breaches) x impact."""
    async with c.events.read() as unit:
        return await unit.rows(
            SELECT_INCIDENT + " WHERE i.state IN ('new', 'acknowledged') ORDER BY i.priority DESC, i.opened_at"
        )


@router.get("/incidents/{incident_id}")
async def get_incident(c: CentreDep, _: Reader, incident_id: IncidentId) -> dict[str, Any]:
    async with c.events.read() as unit:
        incident = await c.desk.get(unit, incident_id)
    incident["allowed"] = allowed(State(incident["state"]))
    return incident


@router.get("/incidents/{incident_id}/alerts")
async def incident_alerts(c: CentreDep, _: Reader, incident_id: IncidentId) -> list[dict[str, Any]]:
    async with c.events.read() as unit:
        await c.desk.get(unit, incident_id)
        return await unit.rows(
            "SELECT alert_id, ts, device_id, kind, metric, value, score, detector, baseline, spread, window_size, "
            "detectors, explanation FROM alerts WHERE incident_id = %s ORDER BY ts, alert_id",
            (incident_id,),
        )


@router.get("/incidents/{incident_id}/audit")
async def incident_audit(c: CentreDep, _: Reader, incident_id: IncidentId) -> list[dict[str, Any]]:
    """Every move and every action on the incident, oldest first."""
    async with c.events.read() as unit:
        await c.desk.get(unit, incident_id)
        return await unit.rows("SELECT * FROM audit_log WHERE incident_id = %s ORDER BY audit_id", (incident_id,))


@router.get("/incidents/{incident_id}/chart")
async def incident_chart(c: CentreDep, _: Reader, incident_id: IncidentId) -> dict[str, Any]:
    """The incident's sensor series around it, with the anomalous points and each detector's
    explanation (raw readings, or the one-minute rollup for spans over 3 h)."""
    async with c.events.read() as unit:
        return await evidence.chart(unit, await c.desk.get(unit, incident_id))


@router.get("/incidents/{incident_id}/recommendations")
async def recommendations(c: CentreDep, _: Reader, incident_id: IncidentId) -> list[dict[str, Any]]:
    """Available crews with the incident's skill, best first (distance and workload)."""
    async with c.events.read() as unit:
        incident = await c.desk.get(unit, incident_id)
        if incident["lat"] is None:
            raise RequestError("the incident has no location (its devices are not registered)")
        return await dispatch.recommend(unit, c.settings, incident)


@router.post("/incidents/{incident_id}/transitions")
async def move_incident(
    c: CentreDep, who: Annotated[Principal, Depends(allow_any)], incident_id: IncidentId, move: Move, response: Response
) -> dict[str, Any]:
    """Move an incident along its lifecycle.

    - `acknowledged`: operator, dispatcher, admin; from a crew state it recalls the crew
      (dispatcher, admin).
    - `dispatched` with `crew_id`: dispatcher, admin. See `/recommendations` first.
    - `en_route`, `on_site`: the assigned crew, or a dispatcher on its behalf.
    - `resolved`: confirmed by the data (every affected series back in bounds for the recovery
      period); otherwise answered 202 and resolved by itself when they are. A dispatcher may
      give `override_reason` to resolve anyway.
    - `closed`, `new` (reopen), `cancelled`: dispatcher, admin.

    A move the lifecycle does not allow is answered 409 with the allowed states.
    """
    moved = await c.desk.transition(
        who, incident_id, move.to, note=move.note, crew_id=move.crew_id, override=move.override_reason
    )
    moved["allowed"] = allowed(State(moved["state"]))
    return moved


CAP_MEDIA_TYPE = "application/cap+xml"


@router.post("/incidents/{incident_id}/cap", response_class=Response, tags=["public warnings"])
async def issue_cap(c: CentreDep, who: Dispatcher, incident_id: IncidentId) -> Response:
    """Publish the incident as an OASIS CAP 1.2 alert for public warning systems (dispatcher).

    The first message is an Alert; after a change, an Update referencing the previous one; a
    cancelled incident a Cancel; a resolved one an all-clear. Unchanged incidents return the
    message already published. Outside production the status is "Exercise".
    """
    return Response(await c.desk.issue_cap(who, incident_id), media_type=CAP_MEDIA_TYPE)


@router.get("/incidents/{incident_id}/cap", response_class=Response, tags=["public warnings"])
async def latest_cap(c: CentreDep, _: Reader, incident_id: IncidentId) -> Response:
    """The latest CAP 1.2 message published for the incident."""
    async with c.events.read() as unit:
        return Response(await c.desk.latest_cap(unit, incident_id), media_type=CAP_MEDIA_TYPE)
