"""Crews and dispatch: who is available, who is closest, what is next in the queue.

A crew is available for an incident when it has the incident's skill, is on shift now (local
city time) and has reported a position. Candidates rank by ``distance_km + workload_km x
active jobs`` (PostGIS distance on the WGS 84 spheroid), so a crew with a job in hand needs to
be that much closer to win. The dispatcher accepts the first or picks another.
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from ioc.correlation import SKILL, Category
from ioc.events import WALL, Unit
from ioc.settings import IocSettings

CREW_COLUMNS = """
    c.crew_id, c.name, c.skills, c.shift_start, c.shift_end, ST_Y(c.geom::geometry) AS lat,
    ST_X(c.geom::geometry) AS lon, c.located_at,
    ARRAY(SELECT i.incident_id FROM incidents i WHERE i.crew_id = c.crew_id
          AND i.state IN ('dispatched', 'en_route', 'on_site') ORDER BY i.dispatched_at, i.incident_id) AS jobs,
    (CASE WHEN c.shift_start = c.shift_end THEN true
          WHEN c.shift_start < c.shift_end THEN %(t)s::time >= c.shift_start AND %(t)s::time < c.shift_end
          ELSE %(t)s::time >= c.shift_start OR %(t)s::time < c.shift_end END) AS on_shift
"""


def _params(unit: Unit, settings: IocSettings) -> dict[str, Any]:
    return {"t": unit.now.astimezone(ZoneInfo(settings.city_timezone)).time()}


async def crews(unit: Unit, settings: IocSettings, crew_id: str | None = None) -> list[dict[str, Any]]:
    return await unit.rows(
        f"SELECT {CREW_COLUMNS} FROM crews c WHERE (%(id)s::text IS NULL OR c.crew_id = %(id)s) ORDER BY c.crew_id",
        {**_params(unit, settings), "id": crew_id},
    )


async def recommend(unit: Unit, settings: IocSettings, incident: dict[str, Any]) -> list[dict[str, Any]]:
    skill = SKILL[Category(incident["category"])]
    rows = await unit.rows(
        f"""
        SELECT * FROM (
            SELECT {CREW_COLUMNS},
                   ST_Distance(c.geom, ST_SetSRID(ST_MakePoint(%(lon)s, %(lat)s), 4326)::geography) AS distance_m
            FROM crews c WHERE %(skill)s = ANY(c.skills) AND c.geom IS NOT NULL
        ) x
        WHERE on_shift
        ORDER BY coalesce(distance_m, 1e12) / 1000 + %(w)s * cardinality(jobs), crew_id
        """,
        {
            **_params(unit, settings),
            "skill": skill,
            "lat": incident["lat"],
            "lon": incident["lon"],
            "w": settings.workload_km,
        },
    )
    for rank, r in enumerate(rows, 1):
        r["rank"] = rank
        r["score_km"] = (r["distance_m"] or 0) / 1000 + settings.workload_km * len(r["jobs"])
    return rows


async def locate(unit: Unit, settings: IocSettings, crew_id: str, lat: float, lon: float) -> dict[str, Any]:
    await unit.conn.execute(
        "UPDATE crews SET geom = ST_SetSRID(ST_MakePoint(%s, %s), 4326)::geography, located_at = %s WHERE crew_id = %s",
        (lon, lat, unit.now, crew_id),
    )
    crew = (await crews(unit, settings, crew_id))[0]
    await unit.emit(WALL, {"type": "crew", "crew": crew})
    return crew
