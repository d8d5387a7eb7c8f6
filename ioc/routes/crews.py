"""Crews: the roster (dispatchers), and each crew's own channel (its jobs, its position)."""

from __future__ import annotations

from datetime import time
from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from ioc import dispatch
from ioc.correlation import SKILL
from ioc.errors import NotFound, RequestError
from ioc.events import WALL
from ioc.incidents import SELECT_INCIDENT
from ioc.routes.deps import Admin, CentreDep, CrewMember, IncidentId, Reader
from ioc.transitions import State

router = APIRouter(tags=["crews"])

CrewId = Annotated[str, Path(min_length=1, max_length=100)]
SKILLS = sorted(set(SKILL.values()))


class CrewIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    skills: list[str] = Field(min_length=1, description=f"any of {', '.join(SKILLS)}")
    shift_start: time = Field(time(0), description="city time; equal to shift_end = around the clock")
    shift_end: time = time(0)
    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)


class Position(BaseModel):
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class Report(BaseModel):
    note: str = Field("", max_length=2000)


@router.get("/crews")
async def list_crews(c: CentreDep, _: Reader) -> list[dict[str, Any]]:
    """Every crew: skills, shift, whether on shift now, last reported position, active jobs."""
    async with c.events.read() as unit:
        return await dispatch.crews(unit, c.settings)


@router.put("/crews/{crew_id}")
async def put_crew(c: CentreDep, who: Admin, crew_id: CrewId, crew: CrewIn) -> dict[str, Any]:
    """Create or change a crew (admin)."""
    unknown = set(crew.skills) - set(SKILLS)
    if unknown:
        raise RequestError(f"unknown skills {sorted(unknown)}; known: {SKILLS}")
    if crew.shift_start.tzinfo is not None or crew.shift_end.tzinfo is not None:
        raise RequestError("shift times are city time: give them without an offset, e.g. 06:00")
    if (crew.lat is None) != (crew.lon is None):
        raise RequestError("give both lat and lon, or neither")
    async with c.events.unit() as unit:
        await unit.conn.execute(
            "INSERT INTO crews (crew_id, name, skills, shift_start, shift_end) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (crew_id) DO UPDATE SET name = EXCLUDED.name, skills = EXCLUDED.skills, "
            "shift_start = EXCLUDED.shift_start, shift_end = EXCLUDED.shift_end",
            (crew_id, crew.name, crew.skills, crew.shift_start, crew.shift_end),
        )
        await unit.audit(who, "crew_saved", data={"crew_id": crew_id, **crew.model_dump(mode="json")})
        if crew.lat is not None and crew.lon is not None:
            return await dispatch.locate(unit, c.settings, crew_id, crew.lat, crew.lon)
        saved = (await dispatch.crews(unit, c.settings, crew_id))[0]
        await unit.emit(WALL, {"type": "crew", "crew": saved})
        return saved


# -- the crew's own channel ---------------------------------------------------------------------


@router.get("/crew/jobs")
async def my_jobs(c: CentreDep, who: CrewMember) -> list[dict[str, Any]]:
    """This crew's jobs: the current one first, then the queued ones."""
    async with c.events.read() as unit:
        return await unit.rows(
            SELECT_INCIDENT + " WHERE i.crew_id = %s AND i.state IN ('dispatched', 'en_route', 'on_site') "
            "ORDER BY i.state = 'dispatched', i.dispatched_at",
            (who.crew_id,),
        )


@router.get("/crew/jobs/{incident_id}")
async def my_job(c: CentreDep, who: CrewMember, incident_id: IncidentId) -> dict[str, Any]:
    async with c.events.read() as unit:
        incident = await c.desk.get(unit, incident_id)
    if incident["crew_id"] != who.crew_id:
        raise NotFound(f"no job {incident_id} for crew {who.crew_id}")
    return incident


@router.post("/crew/jobs/{incident_id}/acknowledge")
async def job_acknowledge(c: CentreDep, who: CrewMember, incident_id: IncidentId, report: Report) -> dict[str, Any]:
    """The crew has seen the job."""
    return await c.desk.crew_acknowledge(who, incident_id, report.note)


@router.post("/crew/jobs/{incident_id}/en_route")
async def job_en_route(c: CentreDep, who: CrewMember, incident_id: IncidentId, report: Report) -> dict[str, Any]:
    return await c.desk.transition(who, incident_id, State.EN_ROUTE, note=report.note)


@router.post("/crew/jobs/{incident_id}/on_site")
async def job_on_site(c: CentreDep, who: CrewMember, incident_id: IncidentId, report: Report) -> dict[str, Any]:
    return await c.desk.transition(who, incident_id, State.ON_SITE, note=report.note)


@router.post("/crew/jobs/{incident_id}/done")
async def job_done(c: CentreDep, who: CrewMember, incident_id: IncidentId, report: Report) -> dict[str, Any]:
    """Work done: the incident resolves when the sensors confirm it (202 until they do)."""
    return await c.desk.transition(who, incident_id, State.RESOLVED, note=report.note)


@router.post("/crew/location")
async def my_location(c: CentreDep, who: CrewMember, position: Position) -> dict[str, Any]:
    """The crew phone's position."""
    assert who.crew_id is not None
    async with c.events.unit() as unit:
        return await dispatch.locate(unit, c.settings, who.crew_id, position.lat, position.lon)
