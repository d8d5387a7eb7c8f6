"""The sensor evidence around an incident: its series' readings, and the alerts on them.

The wall's incident view charts this: the readings from a while before the first anomaly to
a while after the incident ended (or now), with the anomalous points and each detector's
explanation. Long spans come from the one-minute rollup (mean, min, max) so that a chart never
carries more than a few thousand points per series.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from ioc.events import Unit

BEFORE = timedelta(minutes=15)
AFTER = timedelta(minutes=5)
RAW_SPAN = timedelta(hours=3)  # longer spans use readings_1m
MAX_SERIES = 4


async def chart(unit: Unit, incident: dict[str, Any]) -> dict[str, Any]:
    """Up to ``MAX_SERIES`` series of the incident (those with the most alerts first)."""
    start = incident["detected_at"] - BEFORE
    ended = incident["resolved_at"] or incident["closed_at"]
    end = min(unit.now, ended + AFTER) if ended else unit.now
    counts = await unit.rows(
        "SELECT device_id || '/' || metric AS series, count(*) AS n FROM alerts WHERE incident_id = %s "
        "GROUP BY 1 ORDER BY 2 DESC, 1",
        (incident["incident_id"],),
    )
    ranked = [r["series"] for r in counts] + sorted(set(incident["series"]) - {r["series"] for r in counts})
    rollup = end - start > RAW_SPAN
    out = []
    for name in ranked[:MAX_SERIES]:
        device_id, metric = name.rsplit("/", 1)
        params = {"d": device_id, "m": metric, "s": start, "e": end}
        if rollup:
            points = await unit.rows(
                "SELECT bucket AS ts, mean AS value, min, max FROM readings_1m WHERE device_id = %(d)s "
                "AND metric = %(m)s AND bucket >= %(s)s AND bucket < %(e)s ORDER BY bucket",
                params,
            )
        else:
            points = await unit.rows(
                "SELECT ts, value FROM readings WHERE device_id = %(d)s AND metric = %(m)s "
                "AND ts >= %(s)s AND ts < %(e)s ORDER BY ts",
                params,
            )
        alerts = await unit.rows(
            "SELECT ts, value, score, detector, detectors, baseline, spread, explanation FROM alerts "
            "WHERE incident_id = %(i)s AND device_id = %(d)s AND metric = %(m)s ORDER BY ts",
            {**params, "i": incident["incident_id"]},
        )
        out.append({"device_id": device_id, "metric": metric, "points": points, "alerts": alerts})
    return {
        "incident_id": incident["incident_id"],
        "start": start,
        "end": end,
        "resolution": "1m" if rollup else "raw",
        "series": out,
    }
