"""Operations KPIs: how fast incidents are detected, acknowledged, dispatched, reached and resolved.

Every time is measured from ``detected_at``, the first anomalous reading; "detect" is from
there to the incident opening (the pipeline's latency plus correlation). Means cover the
incidents opened since ``since`` (default: midnight, city time).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from cityops.core.contracts import KPI_MILESTONES
from ioc import metrics
from ioc.events import Unit
from ioc.settings import IocSettings

MILESTONES = KPI_MILESTONES

_MEANS = ", ".join(
    f"avg(extract(epoch FROM {col} - detected_at))::float8 AS {name}_s, count({col}) AS {name}_n"
    for name, col in MILESTONES.items()
)


def start_of_day(now: datetime, settings: IocSettings) -> datetime:
    local = now.astimezone(ZoneInfo(settings.city_timezone))
    return local.replace(hour=0, minute=0, second=0, microsecond=0)


async def compute(unit: Unit, settings: IocSettings, since: datetime | None = None) -> dict[str, Any]:
    since = since or start_of_day(unit.now, settings)
    groups = await unit.rows(
        f"""
        SELECT coalesce(district, '') AS district, type, count(*) AS incidents, {_MEANS},
               count(*) FILTER (WHERE ack_breached) AS ack_breaches,
               count(*) FILTER (WHERE arrive_breached) AS arrive_breaches
        FROM incidents WHERE opened_at >= %s GROUP BY 1, 2 ORDER BY 1, 2
        """,
        (since,),
    )
    overall = await unit.row(
        f"""
        SELECT count(*) AS incidents, {_MEANS},
               count(*) FILTER (WHERE ack_breached) AS ack_breaches,
               count(*) FILTER (WHERE arrive_breached) AS arrive_breaches
        FROM incidents WHERE opened_at >= %s
        """,
        (since,),
    )
    open_rows = await unit.rows(
        "SELECT severity, coalesce(district, '') AS district, type, count(*) AS n FROM incidents "
        "WHERE state IN ('new', 'acknowledged', 'dispatched', 'en_route', 'on_site') GROUP BY 1, 2, 3"
    )
    by_severity = {str(s): 0 for s in range(1, 5)}
    for r in open_rows:
        by_severity[str(r["severity"])] += int(r["n"])
    return {
        "since": since,
        "now": unit.now,
        "overall": overall,
        "groups": groups,
        "open_by_severity": by_severity,
        "open": open_rows,
    }


def export(kpis: dict[str, Any]) -> None:
    """Mirror the KPIs into Prometheus gauges (replacing the previous label sets)."""
    metrics.OPEN_INCIDENTS.clear()
    for r in kpis["open"]:
        metrics.OPEN_INCIDENTS.labels(str(r["severity"]), r["district"], r["type"]).set(r["n"])
    metrics.KPI_SECONDS.clear()
    for g in kpis["groups"]:
        for name in MILESTONES:
            value = g[f"{name}_s"]
            if value is not None:
                metrics.KPI_SECONDS.labels(name, g["district"], g["type"]).set(float(value))
