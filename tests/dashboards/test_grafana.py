"""Grafana provisioning, tested as far as it can be without Grafana (which these machines cannot
install): the dashboards are what dashboards/grafana_build.py generates and point at provisioned
datasources; every SQL query, with Grafana's macros and variables expanded as Grafana would
expand them, runs against a database filled by a simulated city and returns what its panel
draws; every PromQL query runs on a real Prometheus (Debian's package) that scraped the services
during that run, and returns data.

The expansion follows Grafana's PostgreSQL datasource (pkg/tsdb/grafana-postgresql-datasource:
macros.go, sqleng's global $__interval substitutions), its SQL and Prometheus variable
formatting (quoted literals for multi-value SQL variables, escaped regex alternations for
Prometheus) and its interval arithmetic (rangeutil.calculateInterval / roundInterval,
$__rate_interval = max($__interval + scrape interval, 4 x scrape interval)).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from aiokafka.admin import AIOKafkaAdminClient

from cityops.core import schema
from cityops.core.contracts import Topics
from cityops.core.kafka import ensure_topics
from cityops.devstack import Stack
from dashboards import grafana_build
from firmware_sim import EventKind, Scheduled, SimSettings, Simulator, build_city
from firmware_sim.scenario import PlatformFault
from gateway import Gateway, GatewaySettings
from ioc import ApiServer
from ioc.auth import Role
from stream import StreamService, StreamSettings
from tests.dashboards.prometheus import Prometheus, PrometheusError
from tests.dashboards.prometheus import binary as prometheus_binary
from tests.helpers import eventually, small_scenario
from tests.ioc.conftest import ioc_settings

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "dashboards" / "grafana"
DATASOURCES = {
    d["uid"]: d
    for d in yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "cityops.yml").read_text())["datasources"]
}
DASHBOARDS: dict[str, dict[str, Any]] = {
    p.name: json.loads(p.read_text()) for p in sorted((GRAFANA / "dashboards").glob("*.json"))
}
MINUTE = 60
# The test Prometheus scrapes every second, so that rates have samples within a short run.
SCRAPE_S = 1
# What a full-width panel on a 1920-pixel screen asks for (Grafana's maxDataPoints default is
# the panel's width in pixels).
MAX_DATA_POINTS = 1000


# -- the dashboards as files ---------------------------------------------------------------------


def test_committed_dashboards_are_what_the_generator_makes() -> None:
    generated = grafana_build.generate()
    assert sorted(DASHBOARDS) == sorted(generated), "run: python -m dashboards.grafana_build"
    for name, text in generated.items():
        assert (GRAFANA / "dashboards" / name).read_text() == text, (
            f"{name} is stale: python -m dashboards.grafana_build"
        )


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def test_every_panel_query_and_variable_uses_a_provisioned_datasource() -> None:
    uses = 0
    for name, dashboard in DASHBOARDS.items():
        refs = [v["datasource"] for v in dashboard["templating"]["list"]]
        for panel in _panels(dashboard):
            if panel["type"] == "row":
                continue
            assert panel.get("targets"), f"{name}: {panel['title']} has no query"
            refs += [panel["datasource"], *(t.get("datasource", panel["datasource"]) for t in panel["targets"])]
        for ref in refs:
            assert ref["uid"] in DATASOURCES, (name, ref)
            assert DATASOURCES[ref["uid"]]["type"] == ref["type"], (name, ref)
            uses += 1
    assert uses > 50


def test_dashboards_have_unique_uids_and_panel_ids_and_fit_the_grid() -> None:
    uids = [d["uid"] for d in DASHBOARDS.values()]
    assert len(set(uids)) == len(uids) == 4
    for name, dashboard in DASHBOARDS.items():
        ids = [p["id"] for p in _panels(dashboard)]
        assert len(set(ids)) == len(ids), name
        for panel in _panels(dashboard):
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24, (name, panel["title"])
            refs = [t["refId"] for t in panel.get("targets", [])]
            assert all(refs) and len(set(refs)) == len(refs), (name, panel["title"])


def test_prometheus_datasource_knows_the_scrape_interval() -> None:
    # $__rate_interval is built on the datasource's scrape interval; a shorter one than the real
    # scrape interval gives rate() windows holding a single sample, that is no data.
    compose = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    assert DATASOURCES["cityops-prometheus"]["jsonData"]["timeInterval"] == compose["global"]["scrape_interval"]


def test_composes_prometheus_configuration_is_valid() -> None:
    # promtool ships with Debian's prometheus package, next to the server.
    promtool = Path(prometheus_binary()).with_name("promtool")
    done = subprocess.run(
        [str(promtool), "check", "config", str(ROOT / "deploy" / "prometheus.yml")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


# -- Grafana's expansion -------------------------------------------------------------------------

SQL_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")
VARIABLE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?::(\w+))?\}")
UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000, "y": 31_536_000_000}
# rangeutil.roundInterval: (below this many ms, use this interval).
LADDER = [
    (10, 1),
    (15, 10),
    (35, 20),
    (75, 50),
    (150, 100),
    (350, 200),
    (750, 500),
    (1_500, 1_000),
    (3_500, 2_000),
    (7_500, 5_000),
    (12_500, 10_000),
    (17_500, 15_000),
    (25_000, 20_000),
    (45_000, 30_000),
    (90_000, 60_000),
    (210_000, 120_000),
    (450_000, 300_000),
    (750_000, 600_000),
    (1_050_000, 900_000),
    (1_500_000, 1_200_000),
    (2_700_000, 1_800_000),
    (5_400_000, 3_600_000),
    (9_000_000, 7_200_000),
    (16_200_000, 10_800_000),
    (32_400_000, 21_600_000),
    (86_400_000, 43_200_000),
    (604_800_000, 86_400_000),
    (1_814_400_000, 604_800_000),
    (3_628_800_000, 2_592_000_000),
]


def interval_ms(text: str) -> int:
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d|w|y)", text.strip().strip("'\""))
    assert m, f"not a Grafana interval: {text!r}"
    return int(m[1]) * UNITS_MS[m[2]]


def format_interval(ms: int) -> str:
    """gtime.FormatInterval / secondsToHms: the largest whole unit."""
    for unit in ("y", "d", "h", "m", "s", "ms"):
        if ms >= UNITS_MS[unit]:
            return f"{ms // UNITS_MS[unit]}{unit}"
    return "1ms"


def calculate_interval(span: timedelta, lower_limit: str) -> int:
    """$__interval in ms for a time range: the range over the panel's data points, rounded to a
    "nice" value, and no less than the panel's (or else the datasource's) minimum interval."""
    raw = span.total_seconds() * 1000 / MAX_DATA_POINTS
    rounded = next((nice for below, nice in LADDER if raw < below), 31_536_000_000)
    return max(rounded, interval_ms(lower_limit))


def go_float(x: float) -> str:
    """Go's %v of a float64 (shortest representation, exponent form from 1e+06 on)."""
    d = Decimal(repr(x)).normalize()
    exponent = d.adjusted()
    if -4 <= exponent < 6:
        return format(d, "f")
    digits = "".join(map(str, d.as_tuple().digits))
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{mantissa}e{'+' if exponent >= 0 else '-'}{abs(exponent):02d}"


def rfc3339(t: datetime) -> str:
    """Go's time.RFC3339Nano in UTC (no trailing zeros in the fraction)."""
    t = t.astimezone(UTC)
    fraction = f"{t.microsecond:06d}".rstrip("0")
    return t.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


@dataclass
class TimeRange:
    start: datetime
    end: datetime

    @property
    def span(self) -> timedelta:
        return self.end - self.start


def expand_sql_macros(sql: str, rng: TimeRange, *, timescaledb: bool) -> str:
    """The PostgreSQL datasource's macro engine (macros.go); unknown macros are an error there too."""

    def time_group(args: list[str]) -> str:
        assert len(args) in (2, 3), f"$__timeGroup needs a column and an interval: {args}"
        seconds = interval_ms(args[1]) / 1000
        if timescaledb:
            return f"time_bucket('{seconds:.3f}s',{args[0]})"
        return f"floor(extract(epoch from {args[0]})/{go_float(seconds)})*{go_float(seconds)}"

    def expand(m: re.Match[str]) -> str:
        name, args = m[1], [a.strip() for a in m[2].split(",")]
        if name == "__timeGroup" and sql[m.end() : m.end() + 1] == ",":
            name = "__timeGroupAlias"  # Grafana's pre-5.3 compatibility: a following comma adds the alias
        match name:
            case "__time":
                return f'{args[0]} AS "time"'
            case "__timeEpoch":
                return f'extract(epoch from {args[0]}) as "time"'
            case "__timeFilter":
                return f"{args[0]} BETWEEN '{rfc3339(rng.start)}' AND '{rfc3339(rng.end)}'"
            case "__timeFrom":
                return f"'{rfc3339(rng.start)}'"
            case "__timeTo":
                return f"'{rfc3339(rng.end)}'"
            case "__timeGroup":
                return time_group(args)
            case "__timeGroupAlias":
                return time_group(args) + ' AS "time"'
            case "__unixEpochFilter":
                return f"{args[0]} >= {int(rng.start.timestamp())} AND {args[0]} <= {int(rng.end.timestamp())}"
        raise AssertionError(f"unknown macro ${name}")

    return SQL_MACRO.sub(expand, sql)


@dataclass
class Variable:
    name: str
    values: list[str]
    multi: bool  # multi-value or "include All": formatted as a list even with one value


def sql_value(var: Variable) -> str:
    """SqlDatasource.interpolateVariable: quoted literals for multi-value variables, the bare value
    (quotes doubled) otherwise."""
    if var.multi:
        return ",".join("'" + v.replace("'", "''") + "'" for v in var.values)
    return var.values[0].replace("'", "''")


def prom_value(var: Variable) -> str:
    """The Prometheus datasource's interpolateQueryExpr: an escaped regex alternation."""
    if not var.multi:
        return var.values[0].replace("\\", "\\\\").replace("'", "\\\\'")
    escaped = [re.sub(r"[$^*{}\[\]+?.()|]", lambda m: "\\\\" + m[0], v.replace("\\", "\\\\\\\\")) for v in var.values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def substitute(text: str, values: dict[str, str]) -> str:
    """templateSrv.replace: $var, ${var}, [[var]]; names it does not know are left alone
    (the datasource's own macros). Formats (``${var:csv}``) are not expanded here."""

    def replace(m: re.Match[str]) -> str:
        name = m[1] or m[2] or m[4]
        assert not (m[3] or m[5]), f"variable format {m[0]} not supported by this expander"
        return values.get(name, m[0])

    return VARIABLE.sub(replace, text)


def expand_sql(sql: str, rng: TimeRange, variables: dict[str, Variable], min_interval: str) -> str:
    ms = calculate_interval(rng.span, min_interval)
    values = {name: sql_value(v) for name, v in variables.items()}
    # sqleng.Interpolate: $__interval_ms before $__interval (templateSrv's word match does the same).
    values |= {"__interval_ms": str(ms), "__interval": format_interval(ms)}
    expanded = expand_sql_macros(
        substitute(sql, values), rng, timescaledb=DATASOURCES["cityops-db"]["jsonData"]["timescaledb"]
    )
    assert "$" not in expanded, f"unexpanded variable or macro in:\n{expanded}"
    return expanded


def rate_interval(interval: int, scrape: int) -> int:
    return max(interval + scrape, 4 * scrape)


def test_the_expansion_matches_grafanas_own_examples() -> None:
    # Cases from Grafana's macros_test.go and the documentation of the SQL datasources.
    rng = TimeRange(datetime(2018, 4, 12, 18, 0, tzinfo=UTC), datetime(2018, 4, 12, 18, 5, tzinfo=UTC))
    macros = {
        "select $__time(time_column)": 'select time_column AS "time"',
        "WHERE $__timeFilter(t)": "WHERE t BETWEEN '2018-04-12T18:00:00Z' AND '2018-04-12T18:05:00Z'",
        "select $__timeFrom()": "select '2018-04-12T18:00:00Z'",
        "SELECT $__timeGroup(time_column,'5m')": "SELECT floor(extract(epoch from time_column)/300)*300",
        "SELECT $__timeGroup(t,'5m'), value": 'SELECT floor(extract(epoch from t)/300)*300 AS "time", value',
        "$__timeGroupAlias(time_column , '5m')": 'floor(extract(epoch from time_column)/300)*300 AS "time"',
        "select $__unixEpochFilter(time)": "select time >= 1523556000 AND time <= 1523556300",
    }
    for sql, expected in macros.items():
        assert expand_sql_macros(sql, rng, timescaledb=False) == expected
    assert expand_sql_macros("GROUP BY $__timeGroup(time_column , '12d')", rng, timescaledb=True) == (
        "GROUP BY time_bucket('1036800.000s',time_column)"
    )
    half = TimeRange(datetime(1960, 2, 1, 7, 0, 0, 500_000, tzinfo=UTC), rng.end)
    assert "'1960-02-01T07:00:00.5Z'" in expand_sql_macros("$__timeFilter(t)", half, timescaledb=False)
    assert go_float(2_592_000.0) == "2.592e+06" and go_float(0.5) == "0.5" and go_float(60.0) == "60"
    # Intervals: 6 h over 1000 points is 21.6 s, rounded to 20 s; a 1 m minimum wins.
    assert format_interval(calculate_interval(timedelta(hours=6), "1s")) == "20s"
    assert format_interval(calculate_interval(timedelta(hours=6), "1m")) == "1m"
    assert format_interval(calculate_interval(timedelta(days=30), "1m")) == "30m"
    assert rate_interval(5_000, 5_000) == 20_000
    # Variables: SQL quotes multi-value ones; Prometheus escapes regex metacharacters.
    district = Variable("district", ["Noord", "Oost'"], multi=True)
    device = Variable("device", ["pipe-1"], multi=False)
    sql = substitute(
        "d IN ($district) AND id = '${device}'", {"district": sql_value(district), "device": sql_value(device)}
    )
    assert sql == "d IN ('Noord','Oost''') AND id = 'pipe-1'"
    instance = Variable("instance", ["127.0.0.1:9101", "api:8080"], multi=True)
    assert prom_value(instance) == r"(127\\.0\\.0\\.1:9101|api:8080)"


# -- what the panels expect ----------------------------------------------------------------------

NUMBER = (int, float, Decimal)


def _numeric(value: object) -> bool:
    return isinstance(value, NUMBER) and not isinstance(value, bool)


def check_sql_shape(
    panel: dict[str, Any], target: dict[str, Any], columns: list[str], rows: list[tuple[Any, ...]]
) -> list[object]:
    """Rows of the shape the panel draws; returns the numbers it plots.

    Time series: a ``time`` column in ascending order (Grafana refuses to turn an unsorted long
    frame into series), numbers, and at most a ``metric`` column naming the series (Grafana
    would turn any other text column into a label); stat: one row of numbers; table: exactly
    the columns its organize step lays out; pie and bar charts: a text column, then numbers;
    geomap: coordinates, and the alert counts that colour the markers."""
    title = panel["title"]
    assert rows, f"{title}: no rows"
    kind = panel["type"]
    values: list[object] = []
    if target["format"] == "time_series":
        assert "time" in columns, f"{title}: no time column in {columns}"
        t = columns.index("time")
        times = [r[t] for r in rows]
        assert all(isinstance(v, datetime | int | float | Decimal) for v in times), f"{title}: bad time values"
        assert times == sorted(times), f"{title}: not in time order"
        value_columns = [i for i, c in enumerate(columns) if c not in ("time", "metric")]
        assert value_columns, f"{title}: no value column"
        for r in rows:
            assert "metric" not in columns or isinstance(r[columns.index("metric")], str)
            for i in value_columns:
                assert r[i] is None or _numeric(r[i]), f"{title}: {columns[i]} = {r[i]!r} is not a number"
                values.append(r[i])
    elif kind == "stat":
        assert len(rows) == 1, f"{title}: a stat shows one row, got {len(rows)}"
        assert all(v is None or _numeric(v) for v in rows[0]), f"{title}: {dict(zip(columns, rows[0], strict=True))}"
        values += rows[0]
    elif kind == "table":
        (organize,) = [t for t in panel.get("transformations", []) if t["id"] == "organize"]
        assert columns == list(organize["options"]["indexByName"]), f"{title}: columns {columns}"
        return []
    elif kind in ("piechart", "barchart"):
        assert all(isinstance(r[0], str) for r in rows), f"{title}: the first column names the slices or bars"
        assert all(_numeric(v) for r in rows for v in r[1:]), f"{title}: numbers after the first column"
        values += [v for r in rows for v in r[1:]]
    elif kind == "geomap":
        lat, lon = columns.index("latitude"), columns.index("longitude")
        assert all(-90 <= r[lat] <= 90 and -180 <= r[lon] <= 180 for r in rows), f"{title}: coordinates"
        return [r[columns.index("alerts")] for r in rows]
    else:
        raise AssertionError(f"{title}: no shape check for panel type {kind}")
    return values


# -- the city run --------------------------------------------------------------------------------


@dataclass
class CityRun:
    dsn: str
    prometheus: Prometheus
    start: datetime
    end: datetime
    device: str  # the device the history dashboard is looked at for: one with alerts


async def _transition(http: httpx.AsyncClient, incident_id: int, **body: object) -> None:
    resp = await http.post(f"/incidents/{incident_id}/transitions", json=body)
    assert resp.status_code == 200, resp.text


async def _work_incidents(api: ApiServer, dsn: str) -> None:
    """Give the KPIs something to measure: the contamination incident goes through every
    milestone, missing its arrival deadline on the way; the others stay open and miss their
    acknowledgement deadline."""
    dispatcher = httpx.AsyncClient(base_url=api.url, timeout=30)
    dispatcher.headers["Authorization"] = f"Bearer {api.token('dispatcher', Role.DISPATCHER)}"
    async with dispatcher:

        async def incidents() -> list[dict[str, Any]]:
            resp = await dispatcher.get("/incidents", params={"open_only": False})
            return list(resp.json())

        async def two() -> bool:
            found = await incidents()
            return len(found) >= 2 and any(i["type"] == "water_contamination" for i in found)

        await eventually(two, timeout=60)
        water = next(i for i in await incidents() if i["type"] == "water_contamination")
        incident_id = int(water["incident_id"])
        await _transition(dispatcher, incident_id, to="acknowledged", note="seen")
        ranked = (await dispatcher.get(f"/incidents/{incident_id}/recommendations")).json()
        assert ranked, "no crew to dispatch"
        crew_id = ranked[0]["crew_id"]
        await _transition(dispatcher, incident_id, to="dispatched", crew_id=crew_id)

        async def breached(column: str) -> bool:
            async with await psycopg.AsyncConnection.connect(dsn) as conn:
                cur = await conn.execute(f"SELECT count(*) FROM incidents WHERE {column}".encode())
                row = await cur.fetchone()
                return bool(row and row[0])

        await eventually(lambda: breached("arrive_breached"), timeout=20)
        await eventually(lambda: breached("ack_breached AND state = 'new'"), timeout=20)
        crew = httpx.AsyncClient(base_url=api.url, timeout=30)
        crew.headers["Authorization"] = f"Bearer {api.token(f'crew-{crew_id.lower()}', Role.CREW, crew_id)}"
        async with crew:
            for step in ("acknowledge", "en_route", "on_site"):
                resp = await crew.post(f"/crew/jobs/{incident_id}/{step}", json={"note": step})
                assert resp.status_code == 200, resp.text
        await _transition(dispatcher, incident_id, to="resolved", override_reason="test: sensors replaced")
        await _transition(dispatcher, incident_id, to="closed")


@pytest.fixture(scope="module")
async def city_run(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[CityRun]:
    """Simulator -> Mosquitto -> gateway -> Kafka -> stream -> PostgreSQL -> IOC, on a database
    and topics of its own, with a Prometheus scraping the three services throughout."""
    uid = uuid.uuid4().hex[:10]
    base = stack.settings.pg_dsn
    name = f"test_{uid}"
    dsn = base.rsplit("/", 1)[0] + "/" + name
    topics = Topics(prefix=f"test.{uid}.")
    scenario = small_scenario(
        uid,
        start="-20m",
        speed=300,
        interval_s=5,
        incidents=[
            Scheduled(kind=EventKind.FEEDER_OUTAGE, at_s=12 * MINUTE, duration_s=3 * MINUTE, target=f"t{uid}-CAB-001"),
            Scheduled(kind=EventKind.CONTAMINATION, at_s=13 * MINUTE, duration_s=4 * MINUTE, target=f"t{uid}-wq-0001"),
        ],
        # Truncated payloads, for the dead-letter panels.
        platform_rates={PlatformFault.MALFORMED: 6.0},
    )
    city = build_city(scenario)
    common: dict[str, Any] = {"topic_prefix": topics.prefix, "pg_dsn": dsn}
    prometheus: Prometheus | None = None
    async with await psycopg.AsyncConnection.connect(base, autocommit=True) as conn:
        await conn.execute(f'CREATE DATABASE "{name}"'.encode())
    try:
        await ensure_topics(stack.settings.kafka_bootstrap, topics.all(), partitions=3)
        stack.register(city.devices)
        async with (
            StreamService(StreamSettings(**common, group_id=f"stream-{uid}", metrics_port=0)) as stream,
            # Deadlines of a second, so that SLA breaches happen within the run; no self-clearing,
            # so that incidents stay open for the open-incident panels.
            ApiServer(
                ioc_settings(topics, dsn, uid, tick_s=1.0, ack_s=(1.0,) * 4, arrive_s=(1.0,) * 4, self_clear=False)
            ) as api,
            Gateway(
                GatewaySettings(**common, mqtt_client_id=f"gw-{uid}", mqtt_clean_session=True, metrics_port=0)
            ) as gw,
            asyncio.TaskGroup() as tasks,
        ):
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                await schema.upsert_devices(conn, city.devices)
            assert gw.metrics_port and stream.metrics_port
            prometheus = Prometheus(
                tmp_path_factory.mktemp("prometheus"),
                {
                    "gateway": f"127.0.0.1:{gw.metrics_port}",
                    "stream": f"127.0.0.1:{stream.metrics_port}",
                    "api": f"127.0.0.1:{api.port}",
                },
                scrape_interval=f"{SCRAPE_S}s",
            )
            prometheus.start()
            start = datetime.now(UTC)
            await eventually(lambda: _all_up(prometheus), timeout=20)
            services = [tasks.create_task(stream.run()), tasks.create_task(gw.run())]
            async with Simulator(SimSettings(**common), scenario) as sim:
                assert sim.sim is not None
                await sim.run(until_us=sim.sim.t0 + 19 * MINUTE * 1_000_000)
            await _work_incidents(api, dsn)
            # What the stream service does about once a minute on this storage path.
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                await schema.refresh_rollups(conn)
            # Scrapes after everything above, so that the range queries see all of it: a counter
            # that first appeared at the end (the last transitions) has a rate once a query step
            # (the datasource's scrape interval) finds two samples of it in its window.
            settle = interval_ms(DATASOURCES["cityops-prometheus"]["jsonData"]["timeInterval"]) / 1000 + 2 * SCRAPE_S
            done = datetime.now(UTC).timestamp()
            await eventually(lambda: _scraped_since(prometheus, done + settle), timeout=30)
            end = datetime.now(UTC)
            for task in services:
                task.cancel()
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            # Among this run's devices: the gateway serves the whole broker, so a simulator that
            # another test process runs at the same time also lands here.
            cur = await conn.execute(
                "SELECT device_id FROM alerts WHERE device_id IN (SELECT device_id FROM devices) "
                "GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1"
            )
            row = await cur.fetchone()
        assert row, "the run raised no alerts"
        yield CityRun(dsn, prometheus, start, end, str(row[0]))
    finally:
        if prometheus is not None:
            prometheus.stop()
        stack.unregister([d.device_id for d in city.devices])
        await schema.drop_database(base, name)
        admin = AIOKafkaAdminClient(bootstrap_servers=stack.settings.kafka_bootstrap)
        await admin.start()
        try:
            await admin.delete_topics(topics.all())
        finally:
            await admin.close()


async def _all_up(prometheus: Prometheus) -> bool:
    result = await prometheus.query("up")
    return len(result) == 3 and all(r["value"][1] == "1" for r in result)


async def _scraped_since(prometheus: Prometheus, t: float) -> bool:
    result = await prometheus.query("timestamp(up)")
    return len(result) == 3 and all(float(r["value"][1]) >= t for r in result)


# -- SQL panels ----------------------------------------------------------------------------------


@dataclass
class Case:
    dashboard: dict[str, Any]
    panel: dict[str, Any]
    target: dict[str, Any]


def _cases(field: str) -> list[Any]:
    """Every query target holding ``field`` (rawSql or expr), named dashboard/panel id:title/refId."""
    return [
        pytest.param(
            Case(dashboard, panel, target),
            id=f"{name.removesuffix('.json')}/{panel['id']}:{panel['title']}/{target['refId']}",
        )
        for name, dashboard in DASHBOARDS.items()
        for panel in _panels(dashboard)
        for target in panel.get("targets", [])
        if field in target
    ]


# The history dashboard reads raw readings, minute rollups or hour rollups by the range's
# length: these ranges take each path (and the other dashboards' queries run on all three).
RANGES = {"30m": timedelta(minutes=30), "2d": timedelta(days=2), "30d": timedelta(days=30)}


async def _rows(dsn: str, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(sql.encode())
        columns = [d.name for d in cur.description or []]
        return columns, list(await cur.fetchall())


async def _variables(dashboard: dict[str, Any], run: CityRun, rng: TimeRange) -> dict[str, Variable]:
    """Each SQL variable's options from its own query (expanded with the variables before it),
    and the selection a user makes: "All" for multi-value variables, the device with alerts."""
    resolved: dict[str, Variable] = {}
    for var in dashboard["templating"]["list"]:
        if var["datasource"]["uid"] != "cityops-db":
            continue
        sql = expand_sql(var["query"], rng, resolved, "1m")
        columns, rows = await _rows(run.dsn, sql)
        assert rows, f"variable {var['name']} has no options: {sql}"
        column = columns.index("__value") if "__value" in columns else 0
        options = [str(r[column]) for r in rows]
        multi = bool(var.get("multi") or var.get("includeAll"))
        if multi:
            values = options
        else:
            assert var["name"] == "device", f"choose a value for {var['name']}"
            assert run.device in options, f"{run.device} not among {options}"
            values = [run.device]
        resolved[var["name"]] = Variable(var["name"], values, multi)
    return resolved


@pytest.mark.slow
@pytest.mark.parametrize("span", list(RANGES), ids=list(RANGES))
@pytest.mark.parametrize("case", _cases("rawSql"))
async def test_sql_panel_returns_what_it_draws(city_run: CityRun, case: Case, span: str) -> None:
    rng = TimeRange(city_run.end - RANGES[span], city_run.end)
    variables = await _variables(case.dashboard, city_run, rng)
    # The SQL datasource's default minimum interval is a minute; a panel may set its own.
    min_interval = case.panel.get("interval") or DATASOURCES["cityops-db"]["jsonData"].get("timeInterval", "1m")
    # A repeated panel is drawn once per value of its variable, with that value alone.
    repeat = case.panel.get("repeat")
    runs: list[dict[str, Variable]] = [variables]
    if repeat:
        assert variables[repeat].values, repeat
        runs = [variables | {repeat: Variable(repeat, [v], multi=True)} for v in variables[repeat].values]
    plotted: list[object] = []
    for scoped in runs:
        sql = expand_sql(case.target["rawSql"], rng, scoped, min_interval)
        try:
            columns, rows = await _rows(city_run.dsn, sql)
            plotted += check_sql_shape(case.panel, case.target, columns, rows)
        except (psycopg.Error, AssertionError) as exc:
            raise AssertionError(f"{exc}\n{sql}") from None
    # The city run fills every chart and stat: nothing but zeros and nulls would hide a broken
    # filter (a repeated panel may have quiet series, such as a door that stayed shut).
    if case.panel["type"] != "table":
        assert any(_numeric(v) and v != 0 for v in plotted), f"{case.panel['title']}: only zeros or nulls"


# -- PromQL panels -------------------------------------------------------------------------------


async def _prom_variables(dashboard: dict[str, Any], run: CityRun) -> dict[str, Variable]:
    resolved: dict[str, Variable] = {}
    for var in dashboard["templating"]["list"]:
        assert var["datasource"]["uid"] == "cityops-prometheus"
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["query"])
        assert m, f"variable {var['name']}: only label_values(selector, label) is expanded here"
        values = await run.prometheus.label_values(m[2], m[1], run.start.timestamp(), run.end.timestamp())
        assert values, f"variable {var['name']} has no options"
        resolved[var["name"]] = Variable(var["name"], sorted(values), bool(var.get("multi") or var.get("includeAll")))
    return resolved


LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")


@pytest.mark.slow
@pytest.mark.parametrize("case", _cases("expr"))
async def test_promql_panel_returns_data(city_run: CityRun, case: Case) -> None:
    variables = await _prom_variables(case.dashboard, city_run)
    rng = TimeRange(city_run.start, city_run.end)
    scrape = interval_ms(DATASOURCES["cityops-prometheus"]["jsonData"]["timeInterval"])
    ms = calculate_interval(rng.span, case.panel.get("interval") or format_interval(scrape))
    values = {name: prom_value(v) for name, v in variables.items()}
    values |= {
        "__interval": format_interval(ms),
        "__interval_ms": str(ms),
        "__rate_interval": format_interval(rate_interval(ms, scrape)),
        "__range": format_interval(int(rng.span.total_seconds() * 1000)),
    }
    expr = substitute(case.target["expr"], values)
    assert "$" not in expr, expr
    step = ms / 1000
    # Grafana aligns the range to the step.
    start = math.floor(rng.start.timestamp() / step) * step
    result = await city_run.prometheus.query_range(expr, start, rng.end.timestamp(), step)
    assert result, f"no series: {expr}"
    numbers = [float(v) for series in result for _, v in series["values"]]
    assert any(math.isfinite(v) for v in numbers), f"no finite value: {expr}"
    # The legend names series by labels the result must carry.
    for label in LEGEND_LABEL.findall(case.target.get("legendFormat", "")):
        assert all(label in series["metric"] for series in result), f"{label} missing from {expr}"


@pytest.mark.slow
async def test_promql_syntax_errors_are_caught(city_run: CityRun) -> None:
    # The check above would notice a broken expression: Prometheus refuses it.
    with pytest.raises(PrometheusError, match="bad_data"):
        await city_run.prometheus.query_range("sum(rate(cityops_gateway_messages_in_total[5s])", 0, 1, 1)
