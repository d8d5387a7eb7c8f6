"""The city at a glance: the map's outlines, each device's state and the city's vital signs.

A device's state, most telling first:

- ``maintenance``: an active maintenance window covers it (its alerts page nobody);
- ``alerting``: it is one of an open incident's assets, or alerted in the last ``alerting_s``;
- ``offline``: no reading for ``offline_after_s`` (judged on the one-minute rollup, so it
  shows within about two minutes of the last reading; ``last_seen`` is only looked up that far
  back, and is empty for a device silent for longer);
- ``healthy``: otherwise.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from ioc.events import Unit
from ioc.settings import IocSettings
from ioc.transitions import OPEN

STATES = ("healthy", "alerting", "offline", "maintenance")

_COVERS = """
    w.device_id = d.device_id
    OR w.group_key IN ('cabinet:' || (d.attrs->>'cabinet'), 'feeder:' || (d.attrs->>'feeder'),
                       'dma:' || (d.attrs->>'dma'), 'district:' || d.district,
                       'concentrator:' || (d.attrs->>'concentrator'))
    OR ST_Covers(w.area, d.geom)
"""


async def outlines(unit: Unit) -> dict[str, Any]:
    """District outlines as GeoJSON: the registered ones, else the hull around the district's
    devices (so a deployment without an outline layer still gets a map)."""
    rows = await unit.rows(
        """
        WITH hulls AS (
            SELECT district, ST_Buffer(ST_ConvexHull(ST_Collect(geom::geometry))::geography, 150)::geometry AS g
            FROM devices WHERE district NOT IN (SELECT district FROM districts) GROUP BY district
        )
        SELECT district, ST_AsGeoJSON(geom::geometry, 6)::jsonb AS geometry, true AS registered FROM districts
        UNION ALL
        SELECT district, ST_AsGeoJSON(g, 6)::jsonb, false FROM hulls
        ORDER BY district
        """
    )
    features = [
        {
            "type": "Feature",
            "geometry": r["geometry"],
            "properties": {"district": r["district"], "registered": r["registered"]},
        }
        for r in rows
    ]
    return {"type": "FeatureCollection", "features": features}


async def devices(unit: Unit, settings: IocSettings) -> list[dict[str, Any]]:
    """Every registered device with its position, state and when it was last heard from."""
    now = unit.now
    return await unit.rows(
        f"""
        WITH seen AS (
            SELECT device_id, max(bucket) + interval '1 minute' AS last_seen FROM readings_1m
            WHERE bucket >= %(recent)s GROUP BY device_id
        ), busy AS (
            SELECT DISTINCT unnest(assets) AS device_id FROM incidents WHERE state = ANY(%(open)s)
            UNION SELECT device_id FROM alerts
            WHERE ts >= %(alerting)s AND maintenance_id IS NULL AND detector <> 'staleness'
        )
        SELECT d.device_id, d.kind, d.district, ST_Y(d.geom::geometry) AS lat, ST_X(d.geom::geometry) AS lon,
               s.last_seen, coalesce(s.last_seen >= %(offline)s, false) AS online,
               CASE WHEN EXISTS (SELECT 1 FROM maintenance_windows w
                                 WHERE w.starts_at <= %(now)s AND w.ends_at > %(now)s AND ({_COVERS}))
                         THEN 'maintenance'
                    WHEN d.device_id IN (SELECT device_id FROM busy) THEN 'alerting'
                    WHEN s.last_seen IS NULL OR s.last_seen < %(offline)s THEN 'offline'
                    ELSE 'healthy' END AS state
        FROM devices d LEFT JOIN seen s USING (device_id)
        ORDER BY d.device_id
        """,
        {
            "now": now,
            "open": [s.value for s in OPEN],
            # Only as far back as "offline" needs: the rollup's rows for the last hour of a large
            # city are millions (benchmarks.wall); older silence is offline, with no last_seen.
            "recent": now - timedelta(seconds=settings.offline_after_s + 120),
            "alerting": now - timedelta(seconds=settings.alerting_s),
            "offline": now - timedelta(seconds=settings.offline_after_s),
        },
    )


async def vitals(unit: Unit, settings: IocSettings, states: list[dict[str, Any]]) -> dict[str, Any]:
    """Devices by state, and readings per second over ``rate_window_min`` settled minutes of the rollup."""
    by_state = dict.fromkeys(STATES, 0)
    for d in states:
        by_state[d["state"]] += 1
    now = unit.now
    minutes = settings.rate_window_min
    # Two minutes back: the newest minutes are still filling (readings arrive late, and the
    # native rollup is refreshed once a minute), and would read low.
    end = now.replace(second=0, microsecond=0) - timedelta(minutes=2)
    row = await unit.row(
        "SELECT coalesce(sum(n), 0)::float8 AS n FROM readings_1m WHERE bucket >= %s AND bucket < %s",
        (end - timedelta(minutes=minutes), end),
    )
    readings = float(row["n"]) if row else 0.0
    return {
        "devices": len(states),
        "devices_online": sum(1 for d in states if d["online"]),
        "devices_by_state": by_state,
        "readings_per_s": readings / (minutes * 60),
    }


async def maintenance_areas(unit: Unit) -> list[dict[str, Any]]:
    """Each active window's area on the map: its polygon, else the hull of the devices it covers."""
    return await unit.rows(
        f"""
        SELECT w.window_id, w.reason, w.ends_at,
               ST_AsGeoJSON(coalesce(w.area::geometry, (
                   SELECT ST_Buffer(ST_ConvexHull(ST_Collect(d.geom::geometry))::geography, 40)::geometry
                   FROM devices d WHERE {_COVERS})), 6)::jsonb AS area
        FROM maintenance_windows w
        WHERE w.starts_at <= %(now)s AND w.ends_at > %(now)s
        ORDER BY w.window_id
        """,
        {"now": unit.now},
    )
