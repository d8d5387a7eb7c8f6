"""Maintenance windows: alerts inside one are stored and shown, but open no incident and page nobody.

A window covers one device, an asset group (``cabinet:<id>``, ``feeder:<id>``, ``dma:<id>``, ``concentrator:<id>``,
``district:<name>``) or a map polygon, from ``starts_at`` to ``ends_at``; it expires by itself.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from ioc.auth import Principal
from ioc.errors import NotFound, RequestError
from ioc.events import WALL, Unit

GROUP_PREFIXES = ("cabinet:", "feeder:", "dma:", "district:", "concentrator:")

COLUMNS = """
    w.window_id, w.device_id, w.group_key, ST_AsGeoJSON(w.area)::jsonb AS area, w.starts_at, w.ends_at,
    w.reason, w.created_by, w.created_at
"""


async def create(
    unit: Unit,
    who: Principal,
    *,
    starts_at: datetime,
    ends_at: datetime,
    reason: str,
    device_id: str | None = None,
    group_key: str | None = None,
    area: dict[str, Any] | None = None,
) -> dict[str, Any]:
    if sum(x is not None for x in (device_id, group_key, area)) != 1:
        raise RequestError("give exactly one of device_id, group_key or area")
    if ends_at <= starts_at:
        raise RequestError("ends_at must be after starts_at")
    if ends_at <= unit.now:
        raise RequestError("the window has already ended")
    if (group_key is not None and not group_key.startswith(GROUP_PREFIXES)) or group_key in GROUP_PREFIXES:
        raise RequestError(f"group_key must look like {', '.join(p + '<id>' for p in GROUP_PREFIXES)}")
    if not reason.strip():
        raise RequestError("a maintenance window needs a reason")
    geom = None
    if area is not None:
        if area.get("type") != "Polygon":
            raise RequestError("area must be a GeoJSON Polygon")
        row = await unit.row("SELECT ST_IsValidReason(ST_GeomFromGeoJSON(%s)) AS why", (json.dumps(area),))
        if row is None or row["why"] != "Valid Geometry":
            raise RequestError(f"area is not a valid polygon: {row['why'] if row else 'unreadable'}")
        geom = json.dumps(area)
    row = await unit.row(
        "INSERT INTO maintenance_windows (device_id, group_key, area, starts_at, ends_at, reason, created_by) "
        "VALUES (%s, %s, ST_SetSRID(ST_GeomFromGeoJSON(%s), 4326)::geography, %s, %s, %s, %s) RETURNING window_id",
        (device_id, group_key, geom, starts_at, ends_at, reason, who.username),
    )
    assert row is not None
    window = await get(unit, int(row["window_id"]))
    await unit.audit(who, "maintenance_created", note=reason, data=window)
    await unit.emit(WALL, {"type": "maintenance", "window": window, "active": _active(window, unit.now)})
    return window


async def end(unit: Unit, who: Principal, window_id: int, note: str) -> dict[str, Any]:
    window = await get(unit, window_id)
    if window["ends_at"] <= unit.now:
        raise RequestError(f"maintenance window {window_id} has already ended")
    await unit.conn.execute(
        "UPDATE maintenance_windows SET ends_at = greatest(starts_at + INTERVAL '1 microsecond', %s) "
        "WHERE window_id = %s",
        (unit.now, window_id),
    )
    window = await get(unit, window_id)
    await unit.audit(who, "maintenance_ended", note=note, data={"window_id": window_id})
    await unit.emit(WALL, {"type": "maintenance", "window": window, "active": False})
    return window


async def get(unit: Unit, window_id: int) -> dict[str, Any]:
    row = await unit.row(f"SELECT {COLUMNS} FROM maintenance_windows w WHERE w.window_id = %s", (window_id,))
    if row is None:
        raise NotFound(f"no maintenance window {window_id}")
    return row


async def current(unit: Unit, *, include_future: bool = True) -> list[dict[str, Any]]:
    """Windows in force now (and those still to come), soonest first."""
    return await unit.rows(
        f"SELECT {COLUMNS} FROM maintenance_windows w WHERE w.ends_at > %(now)s "
        "AND (%(future)s OR w.starts_at <= %(now)s) ORDER BY w.starts_at, w.window_id",
        {"now": unit.now, "future": include_future},
    )


async def changes(unit: Unit, since: datetime) -> None:
    """Tell the wall about windows that began or expired since ``since``."""
    rows = await unit.rows(
        f"SELECT {COLUMNS} FROM maintenance_windows w WHERE (w.starts_at > %(since)s AND w.starts_at <= %(now)s) "
        "OR (w.ends_at > %(since)s AND w.ends_at <= %(now)s) ORDER BY w.window_id",
        {"since": since, "now": unit.now},
    )
    for window in rows:
        await unit.emit(WALL, {"type": "maintenance", "window": window, "active": _active(window, unit.now)})


def _active(window: dict[str, Any], now: datetime) -> bool:
    return bool(window["starts_at"] <= now < window["ends_at"])
