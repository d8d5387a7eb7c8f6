"""Grafana dashboards as code: ``python -m dashboards.grafana_build`` writes the JSON files that
``dashboards/grafana/provisioning/dashboards/cityops.yml`` provisions; ``--check`` only compares.

Built with Grafana's Foundation SDK, whose models follow Grafana's dashboard schema. The SDK has
no PostgreSQL query type, so :class:`Sql` supplies one (the fields Grafana's SQL query editor
saves in code mode). The committed JSON must equal this module's output, and every query in it
runs against a database and a Prometheus filled by a simulated city (tests/dashboards/test_grafana.py).

Queries name only relations that both storage paths create (``cityops/core/schema.py``): on
TimescaleDB ``readings_1m``/``readings_1h`` are continuous aggregates, on plain PostgreSQL tables
with the same columns. For the same reason the datasource leaves Grafana's ``timescaledb``
switch off: with it on, ``$__timeGroup`` becomes ``time_bucket()``, which plain PostgreSQL lacks.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import typing
from collections.abc import Iterable
from pathlib import Path

from grafana_foundation_sdk.builders import barchart, geomap, piechart, stat, table, timeseries
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders.dashboard import Dashboard, FieldColor, QueryVariable, Row, ThresholdsConfig
from grafana_foundation_sdk.builders.prometheus import Dataquery as PromQuery
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.dashboard import DataSourceRef, DynamicConfigValue
from grafana_foundation_sdk.models.geomap import TooltipMode as GeomapTooltipMode
from grafana_foundation_sdk.models.piechart import PieChartLegendValues, PieChartType

from cityops.core.contracts import KPI_MILESTONES as MILESTONES
from cityops.core.contracts import OPEN_INCIDENT_STATES as OPEN
from cityops.core.contracts import DeviceKind

GRAFANA_DIR = Path(__file__).resolve().parent / "grafana"
OUT = GRAFANA_DIR / "dashboards"

# The provisioned datasources (dashboards/grafana/provisioning/datasources/cityops.yml).
DB = DataSourceRef(type_val="grafana-postgresql-datasource", uid="cityops-db")
PROM = DataSourceRef(type_val="prometheus", uid="cityops-prometheus")

OPEN_SQL = "state IN (" + ", ".join(f"'{s}'" for s in sorted(OPEN)) + ")"
# Severity 1..4 as the IOC grades it (ioc/correlation.py: 1 minor .. 4 extreme), in CAP's words.
SEVERITIES = {1: "minor", 2: "moderate", 3: "severe", 4: "extreme"}

# Which relation the history panel reads, by the length of the time range: every reading for
# short ranges, then minute and hour rollups, so that a panel never pulls more than a few
# thousand rows per series.
RAW_UP_TO = "6 hours"
MINUTES_UP_TO = "3 days"
SPAN = "($__timeTo()::timestamptz - $__timeFrom()::timestamptz)"

DEVICE_IN_DISTRICT = "device_id IN (SELECT device_id FROM devices WHERE district IN ($district))"
# Incidents whose assets have no registered position have no district: keep them visible
# whatever the filter rather than hide them.
INCIDENT_IN_DISTRICT = "(district IS NULL OR district IN ($district))"

SERVICES = '{job=~"gateway|stream|api", instance=~"$instance"}'
SELECT = '{instance=~"$instance"}'


class SqlQuery(cogvariants.Dataquery):
    """A PostgreSQL target as Grafana's SQL query editor saves it in code mode."""

    def __init__(self, raw_sql: str, fmt: str, ref_id: str) -> None:
        self.raw_sql = raw_sql
        self.fmt = fmt
        self.ref_id = ref_id

    def to_json(self) -> dict[str, object]:
        return {
            "refId": self.ref_id,
            "datasource": DB,
            "editorMode": "code",
            "format": self.fmt,
            "rawQuery": True,
            "rawSql": self.raw_sql,
        }


class Sql(cogbuilder.Builder[cogvariants.Dataquery]):
    """``Sql(template, fmt, name=[...])``: the template dedented, and each ``{name}`` replaced by
    its items, one a line, aligned under the first (so the query reads well in Grafana's editor)."""

    def __init__(
        self,
        template: str,
        *,
        fmt: typing.Literal["table", "time_series"] = "table",
        ref_id: str = "A",
        **lists: Iterable[str],
    ) -> None:
        text = "\n".join(line.rstrip() for line in textwrap.dedent(template).strip().splitlines())
        for name, items in lists.items():
            token = "{" + name + "}"
            line = next(line for line in text.splitlines() if token in line)
            text = text.replace(token, (",\n" + " " * line.index(token)).join(items))
        self._query = SqlQuery(text, fmt, ref_id)

    def build(self) -> cogvariants.Dataquery:
        return self._query


def prom(expr: str, legend: str, ref_id: str = "A") -> PromQuery:
    return PromQuery().expr(expr).legend_format(legend).ref_id(ref_id).range()


def rate(metric: str, by: str = "") -> str:
    """Per-second rate of a counter summed over the selected instances."""
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({metric}{SELECT}[$__rate_interval]))"


def p95(histogram: str) -> str:
    return f"histogram_quantile(0.95, sum by (le) (rate({histogram}_bucket{SELECT}[$__rate_interval])))"


def thresholds(*steps: tuple[float | None, str]) -> ThresholdsConfig:
    return (
        ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=value, color=color) for value, color in steps])
    )


def organize(columns: Iterable[str], rename: dict[str, str] | None = None) -> model.DataTransformerConfig:
    """A table's columns in order and their headers. The test checks that the query returns
    exactly these columns, so a renamed SQL column cannot silently blank a table column."""
    return model.DataTransformerConfig(
        id_val="organize",
        options={
            "indexByName": {name: i for i, name in enumerate(columns)},
            "renameByName": rename or {},
            "excludeByName": {},
        },
    )


def with_unit(panel: table.Panel, unit: str, fields: Iterable[str]) -> table.Panel:
    for name in fields:
        panel = panel.override_by_name(name, [DynamicConfigValue(id_val="unit", value=unit)])
    return panel


PIE_LEGEND = (
    piechart.PieChartLegendOptions()
    .show_legend(True)
    .display_mode(common.LegendDisplayMode.LIST)
    .placement(common.LegendPlacement.RIGHT)
    .values([PieChartLegendValues.VALUE])
)

# Multi-value variables open on "All".
ALL = model.VariableOption(text="All", value="$__all", selected=True)


def stacked_bars(title: str, sql: str) -> timeseries.Panel:
    """Counts per interval as stacked bars, one colour per ``metric`` value."""
    return (
        timeseries.Panel()
        .title(title)
        .datasource(DB)
        .with_target(Sql(sql, fmt="time_series"))
        .draw_style(common.GraphDrawStyle.BARS)
        .stacking(cb.StackingConfig().mode(common.StackingMode.NORMAL))
        .fill_opacity(80)
    )


def mean_time(milestone: str, column: str) -> stat.Panel:
    """Mean seconds from detection to a milestone, over the incidents opened in the range."""
    return (
        stat.Panel()
        .title(f"Mean time to {milestone}")
        .description("From detection, over incidents opened in the time range.")
        .datasource(DB)
        .unit("s")
        .with_target(
            Sql(
                f"""
                SELECT avg(extract(epoch FROM {column} - detected_at))::float8 AS {milestone}_s
                FROM incidents
                WHERE $__timeFilter(opened_at) AND {INCIDENT_IN_DISTRICT}
                """
            )
        )
        .span(5)
        .height(5)
    )


def district_variable() -> QueryVariable:
    return (
        QueryVariable("district")
        .label("District")
        .datasource(DB)
        .query("SELECT DISTINCT district FROM devices ORDER BY 1")
        .refresh(model.VariableRefresh.ON_DASHBOARD_LOAD)
        .multi(True)
        .include_all(True)
        .current(ALL)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
    )


# -- city overview -------------------------------------------------------------------------------


def city_overview() -> Dashboard:
    per_kind = [f"count(*) FILTER (WHERE kind = '{k}') AS {k}" for k in DeviceKind]
    open_columns = [
        "incident_id",
        "severity",
        "type",
        "district",
        "state",
        "crew_id",
        "opened_at",
        "age_s",
        "alert_count",
        "title",
    ]
    open_table = (
        table.Panel()
        .title("Open incidents")
        .datasource(DB)
        .with_target(
            Sql(
                f"""
                SELECT incident_id, severity, type, district, state, crew_id, opened_at,
                       extract(epoch FROM now() - opened_at)::float8 AS age_s, alert_count, title
                FROM incidents
                WHERE {OPEN_SQL} AND {INCIDENT_IN_DISTRICT}
                ORDER BY priority DESC, opened_at
                LIMIT 200
                """
            )
        )
        .with_transformation(
            organize(open_columns, {"incident_id": "id", "crew_id": "crew", "age_s": "age", "alert_count": "alerts"})
        )
        .span(24)
        .height(9)
    )
    return (
        Dashboard("cityops · City overview")
        .uid("cityops-overview")
        .tags(["cityops"])
        .description("Devices, readings, alerts and open incidents across the city.")
        .time("now-6h", "now")
        .refresh("30s")
        .with_variable(district_variable())
        .with_row(Row("Now"))
        .with_panel(
            stat.Panel()
            .title("Devices")
            .datasource(DB)
            .with_target(Sql("SELECT count(*) AS devices FROM devices WHERE district IN ($district)"))
            .span(4)
            .height(4)
        )
        .with_panel(
            stat.Panel()
            .title("Reporting")
            .description("Devices with a reading in the five minutes before the end of the time range.")
            .datasource(DB)
            .with_target(
                Sql(
                    f"""
                    SELECT count(DISTINCT device_id) AS reporting
                    FROM readings
                    WHERE ts > $__timeTo()::timestamptz - interval '5 minutes' AND ts <= $__timeTo()
                      AND {DEVICE_IN_DISTRICT}
                    """
                )
            )
            .span(5)
            .height(4)
        )
        .with_panel(
            stat.Panel()
            .title("Readings per second")
            .description("Mean over the time range, from the minute rollups (the newest minute may be missing).")
            .datasource(DB)
            .unit("reqps")
            .decimals(1)
            .with_target(
                Sql(
                    f"""
                    SELECT coalesce(sum(n), 0) / extract(epoch FROM {SPAN})::float8 AS readings_per_s
                    FROM readings_1m
                    WHERE $__timeFilter(bucket) AND {DEVICE_IN_DISTRICT}
                    """
                )
            )
            .span(5)
            .height(4)
        )
        .with_panel(
            stat.Panel()
            .title("Alerts")
            .datasource(DB)
            .with_target(Sql(f"SELECT count(*) AS alerts FROM alerts WHERE $__timeFilter(ts) AND {DEVICE_IN_DISTRICT}"))
            .thresholds(thresholds((None, "green"), (1, "orange")))
            .span(5)
            .height(4)
        )
        .with_panel(
            stat.Panel()
            .title("Open incidents")
            .datasource(DB)
            .with_target(
                Sql(f"SELECT count(*) AS open_incidents FROM incidents WHERE {OPEN_SQL} AND {INCIDENT_IN_DISTRICT}")
            )
            .thresholds(thresholds((None, "green"), (1, "red")))
            .span(5)
            .height(4)
        )
        .with_row(Row("Devices"))
        .with_panel(
            piechart.Panel()
            .title("Devices by kind")
            .datasource(DB)
            .with_target(
                Sql("SELECT kind, count(*) AS devices FROM devices WHERE district IN ($district) GROUP BY 1 ORDER BY 1")
            )
            .reduce_options(cb.ReduceDataOptions().values(True).calcs([]))
            .pie_type(PieChartType.DONUT)
            .legend(PIE_LEGEND)
            .span(8)
            .height(9)
        )
        .with_panel(
            barchart.Panel()
            .title("Devices by district and kind")
            .datasource(DB)
            .with_target(
                Sql(
                    """
                    SELECT district,
                           {per_kind}
                    FROM devices
                    WHERE district IN ($district)
                    GROUP BY 1
                    ORDER BY 1
                    """,
                    per_kind=per_kind,
                )
            )
            .x_field("district")
            .stacking(common.StackingMode.NORMAL)
            .legend(cb.VizLegendOptions().show_legend(True).display_mode(common.LegendDisplayMode.LIST))
            .span(8)
            .height(9)
        )
        .with_panel(
            geomap.Panel()
            .title("Devices, coloured by alerts in range")
            .datasource(DB)
            .with_target(
                Sql(
                    """
                    SELECT d.device_id, d.kind, d.district,
                           ST_Y(d.geom::geometry) AS latitude, ST_X(d.geom::geometry) AS longitude,
                           count(a.alert_id) AS alerts
                    FROM devices d
                    LEFT JOIN alerts a ON a.device_id = d.device_id AND $__timeFilter(a.ts)
                    WHERE d.district IN ($district)
                    GROUP BY 1, 2, 3, 4, 5
                    ORDER BY 1
                    """
                )
            )
            .view(geomap.MapViewConfig().id("fit").lat(0).lon(0).zoom(12))
            # Grafana's default basemap; a deployment without internet access sees the markers only.
            .basemap(cb.MapLayerOptions().type("default").name("Basemap"))
            .tooltip(geomap.TooltipOptions().mode(GeomapTooltipMode.DETAILS))
            .layers(
                [
                    cb.MapLayerOptions()
                    .type("markers")
                    .name("Devices")
                    .location(
                        cb.FrameGeometrySource()
                        .mode(common.FrameGeometrySourceMode.COORDS)
                        .latitude("latitude")
                        .longitude("longitude")
                    )
                    .config(
                        {
                            "showLegend": True,
                            "style": {
                                "color": {"field": "alerts", "fixed": "green"},
                                "size": {"fixed": 6, "min": 4, "max": 14, "field": "alerts"},
                                "opacity": 0.8,
                            },
                        }
                    )
                    .tooltip(True)
                ]
            )
            # The markers take their colour from these thresholds on the alert count.
            .color_scheme(FieldColor().mode(model.FieldColorModeId.THRESHOLDS))
            .thresholds(thresholds((None, "green"), (1, "orange"), (10, "red")))
            .span(8)
            .height(9)
        )
        .with_row(Row("Activity"))
        .with_panel(
            timeseries.Panel()
            .title("Readings per second by device kind")
            .description("From the minute rollups: the finest resolution is a minute.")
            .datasource(DB)
            .unit("reqps")
            # The rollups' own resolution: a finer $__interval would divide a minute's count by less than a minute.
            .interval("1m")
            .with_target(
                Sql(
                    """
                    SELECT $__timeGroupAlias(r.bucket, $__interval), d.kind AS metric,
                           sum(r.n) / ($__interval_ms / 1000.0) AS readings_per_s
                    FROM readings_1m r JOIN devices d USING (device_id)
                    WHERE $__timeFilter(r.bucket) AND d.district IN ($district)
                    GROUP BY 1, 2
                    ORDER BY 1
                    """,
                    fmt="time_series",
                )
            )
            .stacking(cb.StackingConfig().mode(common.StackingMode.NORMAL))
            .fill_opacity(30)
            .span(12)
            .height(8)
        )
        .with_panel(
            stacked_bars(
                "Alerts by device kind",
                f"""
                    SELECT $__timeGroupAlias(ts, $__interval), kind AS metric, count(*) AS alerts
                    FROM alerts
                    WHERE $__timeFilter(ts) AND {DEVICE_IN_DISTRICT}
                    GROUP BY 1, 2
                    ORDER BY 1
                    """,
            )
            .span(12)
            .height(8)
        )
        .with_row(Row("Incidents"))
        .with_panel(with_unit(open_table, "s", ["age_s"]))
    )


# -- device history ------------------------------------------------------------------------------


def _history_sql() -> str:
    where = "device_id = '$device' AND metric IN ($metric)"
    return f"""
        SELECT $__timeGroupAlias(ts, $__interval), avg(value) AS mean, min(value) AS min, max(value) AS max
        FROM readings
        WHERE {SPAN} <= interval '{RAW_UP_TO}'
          AND {where} AND $__timeFilter(ts)
        GROUP BY 1
        UNION ALL
        SELECT $__timeGroupAlias(bucket, $__interval), sum(mean * n) / sum(n), min(min), max(max)
        FROM readings_1m
        WHERE {SPAN} > interval '{RAW_UP_TO}' AND {SPAN} <= interval '{MINUTES_UP_TO}'
          AND {where} AND $__timeFilter(bucket)
        GROUP BY 1
        UNION ALL
        SELECT $__timeGroupAlias(bucket, $__interval), sum(mean * n) / sum(n), min(min), max(max)
        FROM readings_1h
        WHERE {SPAN} > interval '{MINUTES_UP_TO}'
          AND {where} AND $__timeFilter(bucket)
        GROUP BY 1
        ORDER BY 1
        """


def device_history() -> Dashboard:
    band = (
        timeseries.Panel()
        .title("$metric")
        .description(
            f"Mean with its min-max band. Up to {RAW_UP_TO} every reading; up to {MINUTES_UP_TO} the minute "
            "rollups (readings_1m); beyond, the hour rollups (readings_1h)."
        )
        .datasource(DB)
        # Down to one second, so that short ranges show the readings themselves.
        .interval("1s")
        .repeat("metric")
        .repeat_direction("h")
        .max_per_row(2)
        .with_target(Sql(_history_sql(), fmt="time_series"))
        .span(12)
        .height(8)
        .override_by_name(
            "max",
            [
                DynamicConfigValue(id_val="custom.fillBelowTo", value="min"),
                DynamicConfigValue(id_val="custom.fillOpacity", value=20),
                DynamicConfigValue(id_val="custom.lineWidth", value=0),
            ],
        )
        .override_by_name(
            "min",
            [
                DynamicConfigValue(id_val="custom.lineWidth", value=0),
                DynamicConfigValue(id_val="custom.fillOpacity", value=0),
            ],
        )
    )
    summary_columns = ["metric", "readings", "min", "mean", "max", "first_minute", "last_minute"]
    alert_columns = ["time", "metric", "value", "baseline", "spread", "score", "detector", "incident_id", "explanation"]
    return (
        Dashboard("cityops · Device history")
        .uid("cityops-device-history")
        .tags(["cityops"])
        .description("One device's readings over any time range, from the raw table or the rollups.")
        .time("now-3h", "now")
        .with_variable(
            QueryVariable("device")
            .label("Device")
            .datasource(DB)
            .query(
                "SELECT device_id AS __value, device_id || ' (' || kind || ', ' || district || ')' AS __text "
                "FROM devices ORDER BY device_id"
            )
            .refresh(model.VariableRefresh.ON_DASHBOARD_LOAD)
        )
        .with_variable(
            QueryVariable("metric")
            .label("Metric")
            .datasource(DB)
            # The hour rollups hold every series that reported in the retention period.
            .query("SELECT DISTINCT metric FROM readings_1h WHERE device_id = '$device' ORDER BY 1")
            .refresh(model.VariableRefresh.ON_DASHBOARD_LOAD)
            .multi(True)
            .include_all(True)
            .current(ALL)
        )
        .with_row(Row("Device"))
        .with_panel(
            table.Panel()
            .title("Device")
            .datasource(DB)
            .with_target(
                Sql(
                    """
                    SELECT device_id, kind, district,
                           ST_Y(geom::geometry) AS latitude, ST_X(geom::geometry) AS longitude,
                           attrs::text AS attrs, registered_at
                    FROM devices
                    WHERE device_id = '$device'
                    """
                )
            )
            .with_transformation(
                organize(["device_id", "kind", "district", "latitude", "longitude", "attrs", "registered_at"])
            )
            .span(12)
            .height(4)
        )
        .with_panel(
            table.Panel()
            .title("Latest readings")
            .description("Each metric's last reading in the day before the end of the time range.")
            .datasource(DB)
            .with_target(
                Sql(
                    """
                    SELECT DISTINCT ON (metric) metric, ts AS time, value
                    FROM readings
                    WHERE device_id = '$device'
                      AND ts > $__timeTo()::timestamptz - interval '1 day' AND ts <= $__timeTo()
                    ORDER BY metric, ts DESC
                    """
                )
            )
            .with_transformation(organize(["metric", "time", "value"]))
            .span(12)
            .height(4)
        )
        .with_row(Row("History"))
        .with_panel(band)
        .with_row(Row("In range"))
        .with_panel(
            table.Panel()
            .title("Series summary")
            .datasource(DB)
            .with_target(
                Sql(
                    """
                    SELECT metric, sum(n) AS readings, min(min) AS min, sum(mean * n) / sum(n) AS mean, max(max) AS max,
                           min(bucket) AS first_minute, max(bucket) AS last_minute
                    FROM readings_1m
                    WHERE device_id = '$device' AND $__timeFilter(bucket)
                    GROUP BY 1
                    ORDER BY 1
                    """
                )
            )
            .with_transformation(organize(summary_columns))
            .span(24)
            .height(6)
        )
        .with_panel(
            table.Panel()
            .title("Alerts")
            .datasource(DB)
            .with_target(
                Sql(
                    """
                    SELECT ts AS time, metric, value, baseline, spread, score, detector, incident_id, explanation
                    FROM alerts
                    WHERE device_id = '$device' AND $__timeFilter(ts)
                    ORDER BY ts DESC
                    LIMIT 500
                    """
                )
            )
            .with_transformation(organize(alert_columns, {"incident_id": "incident"}))
            .span(24)
            .height(8)
        )
    )


# -- incidents and KPIs --------------------------------------------------------------------------


def incidents_and_kpis() -> Dashboard:
    by_severity = [f"count(*) FILTER (WHERE severity = {n}) AS {name}" for n, name in SEVERITIES.items()]
    # The IOC's own KPI definitions (contracts.KPI_MILESTONES): every time from detection to the milestone.
    means = [
        f"avg(extract(epoch FROM {column} - detected_at))::float8 AS {name}_s" for name, column in MILESTONES.items()
    ]
    kpi_columns = [
        "district",
        "type",
        "incidents",
        *(f"{name}_s" for name in MILESTONES),
        "ack_breaches",
        "arrive_breaches",
    ]
    kpi_table = (
        table.Panel()
        .title("Mean time from detection, by district and type")
        .description("Incidents opened in the time range; the IOC's KPI definitions (ioc/kpis.py).")
        .datasource(DB)
        .with_target(
            Sql(
                f"""
                SELECT coalesce(district, '') AS district, type, count(*) AS incidents,
                       {{means}},
                       count(*) FILTER (WHERE ack_breached) AS ack_breaches,
                       count(*) FILTER (WHERE arrive_breached) AS arrive_breaches
                FROM incidents
                WHERE $__timeFilter(opened_at) AND {INCIDENT_IN_DISTRICT}
                GROUP BY 1, 2
                ORDER BY 1, 2
                """,
                means=means,
            )
        )
        .with_transformation(organize(kpi_columns, {f"{name}_s": name for name in MILESTONES}))
        .span(24)
        .height(8)
    )
    recent_columns = [
        "incident_id",
        "opened_at",
        "severity",
        "type",
        "district",
        "state",
        "crew_id",
        "alert_count",
        "acknowledged_at",
        "resolved_at",
        "ack_breached",
        "arrive_breached",
        "title",
    ]
    return (
        Dashboard("cityops · Incidents and KPIs")
        .uid("cityops-incidents")
        .tags(["cityops"])
        .description("Open incidents, response times against the SLAs, and the incident log.")
        .time("now-24h", "now")
        .refresh("1m")
        .with_variable(district_variable())
        .with_row(Row("Now"))
        .with_panel(
            stat.Panel()
            .title("Open incidents by severity")
            .datasource(DB)
            .with_target(
                Sql(
                    f"""
                    SELECT {{by_severity}}
                    FROM incidents
                    WHERE {OPEN_SQL} AND {INCIDENT_IN_DISTRICT}
                    """,
                    by_severity=by_severity,
                )
            )
            .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
            .color_mode(common.BigValueColorMode.BACKGROUND)
            .thresholds(thresholds((None, "green"), (1, "red")))
            .span(8)
            .height(5)
        )
        .with_panel(mean_time("acknowledge", "acknowledged_at"))
        .with_panel(mean_time("resolve", "resolved_at"))
        .with_panel(
            stat.Panel()
            .title("SLA breaches")
            .description("Incidents opened in the time range that missed their acknowledge or arrive deadline.")
            .datasource(DB)
            .with_target(
                Sql(
                    f"""
                    SELECT count(*) FILTER (WHERE ack_breached) AS acknowledge,
                           count(*) FILTER (WHERE arrive_breached) AS arrive
                    FROM incidents
                    WHERE $__timeFilter(opened_at) AND {INCIDENT_IN_DISTRICT}
                    """
                )
            )
            .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
            .thresholds(thresholds((None, "green"), (1, "red")))
            .span(6)
            .height(5)
        )
        .with_row(Row("Over time"))
        .with_panel(
            stacked_bars(
                "Incidents opened by type",
                f"""
                    SELECT $__timeGroupAlias(opened_at, $__interval), type AS metric, count(*) AS opened
                    FROM incidents
                    WHERE $__timeFilter(opened_at) AND {INCIDENT_IN_DISTRICT}
                    GROUP BY 1, 2
                    ORDER BY 1
                    """,
            )
            .span(12)
            .height(8)
        )
        .with_panel(
            timeseries.Panel()
            .title("SLA breaches by deadline")
            .description("When escalations happened (the audit log's escalation entries).")
            .datasource(DB)
            .with_target(
                Sql(
                    """
                    SELECT $__timeGroupAlias(a.at, $__interval), replace(a.action, 'escalated_', '') AS metric,
                           count(*) AS breaches
                    FROM audit_log a JOIN incidents i USING (incident_id)
                    WHERE a.action IN ('escalated_ack', 'escalated_arrive') AND $__timeFilter(a.at)
                      AND (i.district IS NULL OR i.district IN ($district))
                    GROUP BY 1, 2
                    ORDER BY 1
                    """,
                    fmt="time_series",
                )
            )
            .draw_style(common.GraphDrawStyle.BARS)
            .fill_opacity(80)
            .span(12)
            .height(8)
        )
        .with_row(Row("KPIs"))
        .with_panel(with_unit(kpi_table, "s", [f"{name}_s" for name in MILESTONES]))
        .with_panel(
            piechart.Panel()
            .title("Incidents opened in range, by state")
            .datasource(DB)
            .with_target(
                Sql(
                    f"""
                    SELECT state, count(*) AS incidents
                    FROM incidents
                    WHERE $__timeFilter(opened_at) AND {INCIDENT_IN_DISTRICT}
                    GROUP BY 1
                    ORDER BY 1
                    """
                )
            )
            .reduce_options(cb.ReduceDataOptions().values(True).calcs([]))
            .legend(PIE_LEGEND)
            .span(6)
            .height(9)
        )
        .with_panel(
            table.Panel()
            .title("Recent incidents")
            .datasource(DB)
            .with_target(
                Sql(
                    f"""
                    SELECT incident_id, opened_at, severity, type, district, state, crew_id, alert_count,
                           acknowledged_at, resolved_at, ack_breached, arrive_breached, title
                    FROM incidents
                    WHERE $__timeFilter(opened_at) AND {INCIDENT_IN_DISTRICT}
                    ORDER BY opened_at DESC
                    LIMIT 200
                    """
                )
            )
            .with_transformation(
                organize(recent_columns, {"incident_id": "id", "crew_id": "crew", "alert_count": "alerts"})
            )
            .span(18)
            .height(9)
        )
    )


# -- pipeline health -----------------------------------------------------------------------------


def pipeline_health() -> Dashboard:
    def series(title: str, unit: str, *targets: PromQuery) -> timeseries.Panel:
        panel = timeseries.Panel().title(title).datasource(PROM).unit(unit).span(12).height(8)
        for target in targets:
            panel = panel.with_target(target)
        return panel

    return (
        Dashboard("cityops · Pipeline health")
        .uid("cityops-pipeline")
        .tags(["cityops"])
        .description("The services' own Prometheus metrics: throughput, dead letters, lag, latency, the IOC.")
        .time("now-1h", "now")
        .refresh("10s")
        .with_variable(
            QueryVariable("instance")
            .label("Instance")
            .datasource(PROM)
            .query('label_values(up{job=~"gateway|stream|api"}, instance)')
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
            .current(ALL)
            .sort(model.VariableSort.ALPHABETICAL_ASC)
        )
        .with_row(Row("Services"))
        .with_panel(
            stat.Panel()
            .title("Targets up")
            .datasource(PROM)
            .with_target(prom(f"up{SERVICES}", "{{job}} {{instance}}"))
            .mappings(
                [
                    model.ValueMap(
                        options={
                            "0": model.ValueMappingResult(text="DOWN", color="red"),
                            "1": model.ValueMappingResult(text="UP", color="green"),
                        }
                    )
                ]
            )
            .color_mode(common.BigValueColorMode.BACKGROUND)
            .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
            .span(24)
            .height(4)
        )
        .with_row(Row("Gateway"))
        .with_panel(
            series(
                "Gateway: MQTT messages in, readings out",
                "reqps",
                prom(rate("cityops_gateway_messages_in_total"), "messages in", "A"),
                prom(rate("cityops_gateway_readings_out_total"), "readings out", "B"),
            )
        )
        .with_panel(
            series(
                "Dead letters",
                "reqps",
                prom(rate("cityops_gateway_dead_letters_total", by="kind"), "gateway: {{kind}}", "A"),
                prom(rate("cityops_stream_dead_letters_total"), "stream: undecodable", "B"),
            )
        )
        .with_row(Row("Stream"))
        .with_panel(
            series(
                "Consumer lag",
                "short",
                prom(f"sum by (instance) (cityops_stream_consumer_lag{SELECT})", "stream {{instance}}", "A"),
                prom(f"sum by (instance) (cityops_ioc_consumer_lag{SELECT})", "IOC {{instance}}", "B"),
            )
        )
        .with_panel(
            series(
                "Latency p95, from the device's timestamp",
                "s",
                prom(p95("cityops_gateway_latency_seconds"), "to Kafka (gateway)", "A"),
                prom(p95("cityops_stream_latency_seconds"), "stored (stream)", "B"),
                prom(p95("cityops_ioc_latency_seconds"), "anomaly to wall screen (IOC)", "C"),
            )
        )
        .with_panel(
            series(
                "Stream: rows stored, alerts",
                "reqps",
                prom(rate("cityops_stream_rows_stored_total"), "rows stored", "A"),
                prom(rate("cityops_stream_rows_duplicate_total"), "duplicates", "B"),
                prom(rate("cityops_stream_alerts_out_total", by="detector"), "alerts: {{detector}}", "C"),
            )
        )
        .with_panel(
            series(
                "Detector time per batch",
                "s",
                prom(p95("cityops_stream_detect_seconds"), "p95", "A"),
                prom(
                    f"sum(rate(cityops_stream_detect_seconds_sum{SELECT}[$__rate_interval]))"
                    f" / sum(rate(cityops_stream_detect_seconds_count{SELECT}[$__rate_interval]))",
                    "mean",
                    "B",
                ),
            )
        )
        .with_row(Row("Operations centre"))
        .with_panel(
            series(
                "IOC: alerts in, incidents opened",
                "reqps",
                prom(rate("cityops_ioc_alerts_in_total"), "alerts in", "A"),
                prom(rate("cityops_ioc_incidents_opened_total", by="type"), "opened: {{type}}", "B"),
            )
        )
        .with_panel(
            series(
                "IOC: incident transitions",
                "reqps",
                prom(rate("cityops_ioc_incident_transitions_total", by="to"), "to {{to}}", "A"),
                prom(
                    f"sum by (deadline) (increase(cityops_ioc_sla_breaches_total{SELECT}[$__rate_interval]))",
                    "SLA breach: {{deadline}}",
                    "B",
                ),
            )
        )
        .with_panel(
            series(
                "IOC: WebSocket clients",
                "short",
                prom(f"sum(cityops_ioc_ws_clients{SELECT})", "clients", "A"),
                prom(rate("cityops_ioc_ws_clients_dropped_total"), "dropped / s", "B"),
            )
        )
    )


# -- output --------------------------------------------------------------------------------------

DASHBOARDS = {
    "city-overview.json": city_overview,
    "device-history.json": device_history,
    "incidents-kpis.json": incidents_and_kpis,
    "pipeline-health.json": pipeline_health,
}


def _number_panels(panels: list[dict[str, typing.Any]], start: int = 1) -> int:
    """Stable panel ids in layout order (links and the panel editor use them)."""
    n = start
    for panel in panels:
        panel["id"] = n
        n += 1
        n = _number_panels(panel.get("panels", []), n)
    return n


def render(builder: Dashboard) -> str:
    data: dict[str, typing.Any] = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    _number_panels(data["panels"])
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def generate() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {name: render(build()) for name, build in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only compare with the committed files")
    args = parser.parse_args(argv)
    stale = []
    for name, text in generate().items():
        path = OUT / name
        if path.exists() and path.read_text() == text:
            continue
        stale.append(name)
        if not args.check:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    extra = sorted(p.name for p in OUT.glob("*.json") if p.name not in DASHBOARDS)
    if args.check:
        for name in stale + extra:
            print(f"{OUT / name}: not what {__name__} generates", file=sys.stderr)
        return 1 if stale or extra else 0
    for name in stale:
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
