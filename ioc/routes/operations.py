"""Logging in, users, the city's data (devices, readings, alerts), maintenance windows, KPIs, audit."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel, Field, field_validator

from ioc import kpis, maintenance, situation
from ioc.auth import Principal, Role, Unauthorized, add_user, authenticate
from ioc.errors import RequestError
from ioc.routes.deps import Admin, CentreDep, Maintainer, Reader, allow_any

router = APIRouter()

Limit = Annotated[int | None, Query(ge=1)]


def _aware(name: str, value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise RequestError(f"{name} needs a timezone offset, e.g. 2026-01-01T00:00:00Z")
    return value


def _page(c: CentreDep, limit: int | None, default: int) -> int:
    if limit is None:
        return min(default, c.settings.max_page)
    if limit > c.settings.max_page:
        raise RequestError(f"limit may be at most {c.settings.max_page}")
    return limit


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    role: Role
    crew_id: str | None = None


class UserIn(BaseModel):
    username: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.@-]+$")
    password: str = Field(min_length=8, max_length=200)
    role: Role
    crew_id: str | None = Field(None, max_length=100)


Lon = Annotated[float, Field(ge=-180, le=180)]
Lat = Annotated[float, Field(ge=-90, le=90)]


class Polygon(BaseModel):
    """A GeoJSON Polygon: closed rings of [lon, lat], the first the outline, others holes."""

    type: Literal["Polygon"]
    coordinates: list[Annotated[list[tuple[Lon, Lat]], Field(min_length=4)]] = Field(min_length=1)

    @field_validator("coordinates")
    @classmethod
    def _closed(cls, rings: list[list[tuple[float, float]]]) -> list[list[tuple[float, float]]]:
        for ring in rings:
            if ring[0] != ring[-1]:
                raise ValueError("each ring must end where it starts")
        return rings


class WindowIn(BaseModel):
    starts_at: datetime
    ends_at: datetime
    reason: str = Field(min_length=1, max_length=2000)
    device_id: str | None = Field(None, max_length=200)
    group_key: str | None = Field(
        None, max_length=200, description="cabinet:<id>, feeder:<id>, dma:<id>, concentrator:<id> or district:<name>"
    )
    area: Polygon | None = Field(None, description="a GeoJSON Polygon (lon, lat)")


class EndWindow(BaseModel):
    note: str = Field("", max_length=2000)


@router.post("/token", response_model=TokenOut, tags=["auth"])
async def login(c: CentreDep, form: Annotated[OAuth2PasswordRequestForm, Depends()]) -> TokenOut:
    """OAuth2 password flow: a bearer token for REST (``Authorization``) and WebSockets (``?token=``)."""
    async with c.pool.connection() as conn:
        who = await authenticate(conn, form.username, form.password)
    return TokenOut(access_token=c.tokens.issue(who), role=who.role, crew_id=who.crew_id)


@router.post("/token/refresh", response_model=TokenOut, tags=["auth"])
async def refresh_token(c: CentreDep, who: Annotated[Principal, Depends(allow_any)]) -> TokenOut:
    """A fresh token for a valid one, so a wall screen left running outlives ``token_ttl_s``.
    The user must still exist with the same role and crew; otherwise 401: log in again."""
    async with c.pool.connection() as conn:
        cur = await conn.execute("SELECT role, crew_id FROM users WHERE username = %s", (who.username,))
        row = await cur.fetchone()
    if row is None or (str(row[0]), row[1]) != (who.role.value, who.crew_id):
        raise Unauthorized("this account changed or no longer exists; log in again")
    return TokenOut(access_token=c.tokens.issue(who), role=who.role, crew_id=who.crew_id)


@router.get("/me", tags=["auth"])
async def me(who: Annotated[Principal, Depends(allow_any)]) -> dict[str, Any]:
    return {"username": who.username, "role": who.role.value, "crew_id": who.crew_id}


@router.post("/users", status_code=201, tags=["auth"])
async def create_user(c: CentreDep, who: Admin, user: UserIn) -> dict[str, Any]:
    """Add a user (admin). A crew member names their crew."""
    async with c.events.unit() as unit:
        if (
            user.crew_id is not None
            and await unit.row("SELECT 1 FROM crews WHERE crew_id = %s", (user.crew_id,)) is None
        ):
            raise RequestError(f"no crew {user.crew_id}")
        await add_user(unit.conn, user.username, user.password, user.role, user.crew_id)
        await unit.audit(who, "user_created", data={"username": user.username, "role": user.role.value})
    return {"username": user.username, "role": user.role.value, "crew_id": user.crew_id}


@router.get("/devices", tags=["city"])
async def devices(
    c: CentreDep, _: Reader, kind: str | None = None, district: str | None = None
) -> list[dict[str, Any]]:
    """Registered devices with their position."""
    async with c.events.read() as unit:
        return await unit.rows(
            "SELECT device_id, kind, district, ST_Y(geom::geometry) AS lat, ST_X(geom::geometry) AS lon, attrs "
            "FROM devices WHERE (%(kind)s::text IS NULL OR kind = %(kind)s) "
            "AND (%(district)s::text IS NULL OR district = %(district)s) ORDER BY device_id",
            {"kind": kind, "district": district},
        )


@router.get("/map", tags=["city"])
async def city_map(c: CentreDep, _: Annotated[Principal, Depends(allow_any)]) -> dict[str, Any]:
    """What a map needs without internet: district outlines (GeoJSON), and the tile URL for
    deployments that have tiles (empty: draw the outlines only). Every role: crews too."""
    async with c.events.read() as unit:
        outlines = await situation.outlines(unit)
    return {"tile_url": c.settings.map_tile_url, "attribution": c.settings.map_attribution, "outlines": outlines}


@router.get("/city", tags=["city"])
async def city_status(c: CentreDep, _: Reader) -> dict[str, Any]:
    """Every device's state (healthy, alerting, offline, maintenance), the vital signs, the
    pipeline's health and today's KPIs: what the wall's ``status`` events carry."""
    async with c.events.read() as unit:
        return await c.city_status(unit)


@router.get("/readings", tags=["city"])
async def readings(
    c: CentreDep, _: Reader, device_id: str, metric: str, start: datetime, end: datetime, limit: Limit = None
) -> list[dict[str, Any]]:
    """One series (device x metric) between ``start`` (inclusive) and ``end`` (exclusive)."""
    _aware("start", start)
    _aware("end", end)
    if end <= start:
        raise RequestError("end must be after start")
    async with c.events.read() as unit:
        return await unit.rows(
            "SELECT ts, value, seq FROM readings WHERE device_id = %(d)s AND metric = %(m)s "
            "AND ts >= %(s)s AND ts < %(e)s ORDER BY ts LIMIT %(l)s",
            {"d": device_id, "m": metric, "s": start, "e": end, "l": _page(c, limit, 1_000)},
        )


@router.get("/alerts", tags=["city"])
async def alerts(
    c: CentreDep, _: Reader, device_id: str | None = None, since: datetime | None = None, limit: Limit = None
) -> list[dict[str, Any]]:
    """Most recent alerts first, with the incident or maintenance window each went to, and what the
    stream judged each to be (``alert_class``: incident, sensor_fault or platform)."""
    _aware("since", since)
    async with c.events.read() as unit:
        return await unit.rows(
            "SELECT alert_id, ts, device_id, kind, metric, value, score, detector, baseline, spread, "
            "window_size, seq, emitted_at, received_at, detectors, explanation, alert_class, incident_id, "
            "maintenance_id "
            "FROM alerts WHERE (%(d)s::text IS NULL OR device_id = %(d)s) "
            "AND (%(s)s::timestamptz IS NULL OR ts >= %(s)s) ORDER BY ts DESC LIMIT %(l)s",
            {"d": device_id, "s": since, "l": _page(c, limit, 100)},
        )


@router.get("/maintenance", tags=["maintenance"])
async def list_windows(c: CentreDep, _: Reader, include_future: bool = True) -> list[dict[str, Any]]:
    """Maintenance windows in force (and, by default, those still to come)."""
    async with c.events.read() as unit:
        return await maintenance.current(unit, include_future=include_future)


@router.post("/maintenance", status_code=201, tags=["maintenance"])
async def create_window(c: CentreDep, who: Maintainer, window: WindowIn) -> dict[str, Any]:
    """Silence one device, an asset group or a map area for a while: its alerts are stored and
    shown as in maintenance, open no incident and page nobody."""
    _aware("starts_at", window.starts_at)
    _aware("ends_at", window.ends_at)
    async with c.events.unit() as unit:
        return await maintenance.create(unit, who, **window.model_dump(exclude_none=True))


@router.post("/maintenance/{window_id}/end", tags=["maintenance"])
async def end_window(
    c: CentreDep, who: Maintainer, window_id: Annotated[int, Path(ge=1, le=2**63 - 1)], body: EndWindow
) -> dict[str, Any]:
    async with c.events.unit() as unit:
        return await maintenance.end(unit, who, window_id, body.note)


@router.get("/kpis", tags=["kpis"])
async def get_kpis(c: CentreDep, _: Reader, since: datetime | None = None) -> dict[str, Any]:
    """Mean seconds from the first anomalous reading to opening, acknowledging, dispatching,
    arriving and resolving, per district and type; open incidents by severity; SLA breaches."""
    _aware("since", since)
    async with c.events.read() as unit:
        return await kpis.compute(unit, c.settings, since)


@router.get("/audit", tags=["incidents"])
async def audit(
    c: CentreDep, _: Reader, actor: str | None = None, since: datetime | None = None, limit: Limit = None
) -> list[dict[str, Any]]:
    """The audit log, newest first. It is append-only: the database refuses updates and deletes."""
    _aware("since", since)
    async with c.events.read() as unit:
        return await unit.rows(
            "SELECT * FROM audit_log WHERE (%(a)s::text IS NULL OR actor = %(a)s) "
            "AND (%(s)s::timestamptz IS NULL OR at >= %(s)s) ORDER BY audit_id DESC LIMIT %(l)s",
            {"a": actor, "s": since, "l": _page(c, limit, 100)},
        )


class SiteIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    kind: str = Field(min_length=1, max_length=50, description="hospital, school, care home, ...")
    weight: float = Field(1.0, ge=0, le=100, description="added to the impact of incidents near it")
    lat: Lat
    lon: Lon


@router.put("/sites/{site_id}", tags=["city"])
async def put_site(
    c: CentreDep, who: Admin, site_id: Annotated[str, Path(min_length=1, max_length=100)], site: SiteIn
) -> dict[str, Any]:
    """Create or change a critical site (admin). Open incidents keep their priority until they change."""
    async with c.events.unit() as unit:
        await unit.conn.execute(
            "INSERT INTO critical_sites (site_id, name, kind, weight, geom) "
            "VALUES (%s, %s, %s, %s, ST_SetSRID(ST_MakePoint(%s, %s), 4326)::geography) "
            "ON CONFLICT (site_id) DO UPDATE SET name = EXCLUDED.name, kind = EXCLUDED.kind, "
            "weight = EXCLUDED.weight, geom = EXCLUDED.geom",
            (site_id, site.name, site.kind, site.weight, site.lon, site.lat),
        )
        await unit.audit(who, "site_saved", data={"site_id": site_id, **site.model_dump()})
    return {"site_id": site_id, **site.model_dump()}


@router.get("/sites", tags=["city"])
async def sites(c: CentreDep, _: Reader) -> list[dict[str, Any]]:
    """Critical sites (hospitals, schools) that raise the impact of incidents near them."""
    async with c.events.read() as unit:
        return await unit.rows(
            "SELECT site_id, name, kind, weight, ST_Y(geom::geometry) AS lat, ST_X(geom::geometry) AS lon "
            "FROM critical_sites ORDER BY site_id"
        )
