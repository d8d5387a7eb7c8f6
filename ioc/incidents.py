"""Incidents: alerts in, correlated incidents out, driven through their lifecycle.

The :class:`Desk` owns every change to incidents. Each change is one :class:`ioc.events.Unit`
(transaction + audit rows + live events). Time comes from the injected clock, so escalation
and recovery can be driven by tests.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from cityops.core import log
from cityops.core.contracts import Alert, to_datetime
from ioc import cap, correlation, dispatch, metrics
from ioc.alerts import alert_json, store
from ioc.auth import SYSTEM, Permission, Principal, Role
from ioc.clock import Clock
from ioc.correlation import Category, Draft, Signal
from ioc.errors import Conflict, Forbidden, NotFound, RequestError
from ioc.events import SUPERVISOR, WALL, EventLog, Unit, crew_channel
from ioc.settings import Environment, IocSettings
from ioc.transitions import CREW_STATES, OPEN, State, check

_log = log.get("ioc.incidents")

INCIDENT_COLUMNS = """
    i.incident_id, i.version, i.type, i.category, i.title, i.severity, i.state, i.district, i.group_key,
    i.assets, i.series, i.detectors, ST_Y(i.geom::geometry) AS lat, ST_X(i.geom::geometry) AS lon, i.radius_m,
    i.impact, i.priority, i.alert_count, i.explanation, i.crew_id, i.detected_at, i.opened_at, i.last_alert_at,
    i.updated_at, i.acknowledged_at, i.dispatched_at, i.crew_acknowledged_at, i.en_route_at, i.arrived_at,
    i.resolved_at, i.closed_at, i.ack_due, i.arrive_due, i.ack_breached, i.arrive_breached, i.resolve_pending
"""
SELECT_INCIDENT = f"SELECT {INCIDENT_COLUMNS} FROM incidents i"

# The timestamp each state sets when entered for the first time.
_STAMP = {
    State.ACKNOWLEDGED: "acknowledged_at",
    State.DISPATCHED: "dispatched_at",
    State.EN_ROUTE: "en_route_at",
    State.ON_SITE: "arrived_at",
    State.RESOLVED: "resolved_at",
    State.CLOSED: "closed_at",
}

# Priority = (severity + SLA breaches) x impact: a breach lifts an incident up the queue even
# when its severity is already the highest.
REPRIORITISE = """
UPDATE incidents i SET
    impact = s.impact,
    priority = (i.severity + i.ack_breached::int + i.arrive_breached::int) * s.impact
FROM (
    SELECT i.incident_id,
           greatest(1, cardinality(i.assets)) + coalesce((
               SELECT sum(c.weight) FROM critical_sites c WHERE ST_DWithin(c.geom, i.geom, %(radius)s)
           ), 0) AS impact
    FROM incidents i WHERE i.incident_id = ANY(%(ids)s)
) s
WHERE i.incident_id = s.incident_id
"""


class Desk:
    def __init__(self, settings: IocSettings, events: EventLog, clock: Clock) -> None:
        self.settings = settings
        self.events = events
        self.clock = clock
        self._next_recovery_check: datetime | None = None

    # -- reading -------------------------------------------------------------------------------

    async def get(self, unit: Unit, incident_id: int, *, lock: bool = False) -> dict[str, Any]:
        row = await unit.row(
            SELECT_INCIDENT + " WHERE i.incident_id = %s" + (" FOR UPDATE" if lock else ""), (incident_id,)
        )
        if row is None:
            raise NotFound(f"no incident {incident_id}")
        return row

    # -- alerts -> incidents ---------------------------------------------------------------------

    async def receive(self, alerts: list[Alert]) -> list[Alert]:
        """Store alerts and place the new ones: in a maintenance window (no incident, nobody
        paged), or into an incident, new or open. Publishes every new alert and every touched
        incident. One transaction, so a snapshot never holds an alert without its placement."""
        if not alerts:
            return []
        s = self.settings
        async with self.events.unit() as unit:
            alerts = await store(unit.conn, alerts)
            if not alerts:
                return []
            in_maintenance = await self._maintenance_of(unit, alerts)
            devices = {
                r["device_id"]: r
                for r in await unit.rows(
                    "SELECT device_id, kind, district, attrs, ST_Y(geom::geometry) AS lat, ST_X(geom::geometry) AS lon "
                    "FROM devices WHERE device_id = ANY(%s)",
                    ([a.device_id for a in alerts],),
                )
            }
            signals: list[Signal] = []
            for a in alerts:
                dev = devices.get(a.device_id)
                if a.alert_id in in_maintenance:
                    continue
                if dev is None:
                    # Not in the registry (retired, or never provisioned): no place and no crew to
                    # send, so it is stored and shown but opens no incident.
                    metrics.ALERTS_UNPLACED.labels("unregistered").inc()
                    continue
                cat = correlation.category(dev["kind"], a.metric)
                signals.append(
                    Signal(
                        a.alert_id,
                        a.device_id,
                        a.metric,
                        a.detector,
                        a.value,
                        a.baseline,
                        to_datetime(a.ts_us),
                        cat,
                        correlation.group_keys(cat, dev["district"], dev["attrs"], silent=a.detector == "staleness"),
                        dev["district"],
                        dev["lat"],
                        dev["lon"],
                        a.explanation,
                        a.alert_class.value,
                    )
                )
            window = timedelta(seconds=s.correlation_window_s)
            drafts = await self._open_drafts(unit, {sig.category for sig in signals}, signals, window)
            touched = correlation.correlate(signals, drafts, radius_m=s.correlation_radius_m, window=window)
            for d in touched:
                await self._save_draft(unit, d)
            owner = {alert_id: d.incident_id for d in touched for alert_id in d.taken if d.incident_id is not None}
            if owner or in_maintenance:
                await unit.conn.execute(
                    "UPDATE alerts a SET incident_id = v.iid, maintenance_id = v.mid "
                    "FROM unnest(%s::text[], %s::bigint[], %s::bigint[]) AS v(aid, iid, mid) WHERE a.alert_id = v.aid",
                    (
                        [a.alert_id for a in alerts],
                        [owner.get(a.alert_id) for a in alerts],
                        [in_maintenance.get(a.alert_id) for a in alerts],
                    ),
                )
            ids = [d.incident_id for d in touched if d.incident_id is not None]
            await self._reprioritise(unit, ids)
            # One event for the batch: a cabinet's worth of alerts must not overflow every screen's queue.
            await unit.emit(WALL, {"type": "alerts", "alerts": [alert_body(a, owner, in_maintenance) for a in alerts]})
            for incident_id in ids:
                await self._publish(unit, await self.get(unit, incident_id))
        return alerts

    async def _maintenance_of(self, unit: Unit, alerts: list[Alert]) -> dict[str, int]:
        rows = await unit.rows(
            """
            SELECT a.alert_id, min(w.window_id) AS window_id
            FROM unnest(%s::text[], %s::text[], %s::timestamptz[]) AS a(alert_id, device_id, ts)
            LEFT JOIN devices d ON d.device_id = a.device_id
            JOIN maintenance_windows w ON w.starts_at <= a.ts AND w.ends_at > a.ts AND (
                w.device_id = a.device_id
                OR w.group_key IN ('cabinet:' || (d.attrs->>'cabinet'), 'feeder:' || (d.attrs->>'feeder'),
                                   'dma:' || (d.attrs->>'dma'), 'district:' || d.district,
                                   'concentrator:' || (d.attrs->>'concentrator'))
                OR ST_Covers(w.area, d.geom))
            GROUP BY a.alert_id
            """,
            ([a.alert_id for a in alerts], [a.device_id for a in alerts], [to_datetime(a.ts_us) for a in alerts]),
        )
        return {r["alert_id"]: int(r["window_id"]) for r in rows}

    async def _open_drafts(
        self, unit: Unit, categories: set[Category], signals: list[Signal], window: timedelta
    ) -> list[Draft]:
        if not signals:
            return []
        earliest = min(sig.at for sig in signals) - window
        rows = await unit.rows(
            """
            SELECT i.incident_id, i.type, i.category, i.groups, i.district, i.detected_at, i.last_alert_at, i.series,
                   i.detectors, i.drops, i.silences, i.severity, i.explanation, i.alert_count,
                   (SELECT coalesce(json_agg(json_build_array(u.a, ST_Y(d.geom::geometry), ST_X(d.geom::geometry))),
                                    '[]')
                    FROM unnest(i.assets) AS u(a) LEFT JOIN devices d ON d.device_id = u.a) AS points
            FROM incidents i
            WHERE i.state = ANY(%s) AND i.category = ANY(%s) AND i.last_alert_at >= %s
            ORDER BY i.incident_id
            FOR UPDATE
            """,
            ([x.value for x in OPEN], [c.value for c in categories], earliest),
        )
        drafts = []
        for r in rows:
            d = Draft(
                Category(r["category"]),
                set(r["groups"]),
                r["district"],
                r["detected_at"],
                r["last_alert_at"],
                incident_id=int(r["incident_id"]),
                series=set(r["series"]),
                detectors=set(r["detectors"]),
                metrics={x.rsplit("/", 1)[1] for x in r["series"]},
                drops=int(r["drops"]),
                silences=int(r["silences"]),
                severity=int(r["severity"]),
                explanation=r["explanation"],
                alert_count=int(r["alert_count"]),
                alert_class=correlation.SENSOR_FAULT if r["type"] == "sensor_fault" else "incident",
            )
            d.assets = {p[0]: (None if p[1] is None else (float(p[1]), float(p[2]))) for p in r["points"]}
            drafts.append(d)
        return drafts

    async def _save_draft(self, unit: Unit, d: Draft) -> int:
        s = self.settings
        centroid = d.centroid
        fields = {
            "type": d.type,
            "category": d.category.value,
            "title": d.title,
            "severity": d.severity,
            "district": d.district,
            "group_key": d.group,
            "groups": sorted(d.groups),
            "assets": sorted(d.assets),
            "series": sorted(d.series),
            "detectors": sorted(d.detectors),
            "drops": d.drops,
            "silences": d.silences,
            "lon": centroid[1] if centroid else None,
            "lat": centroid[0] if centroid else None,
            "radius_m": d.radius_m,
            "alert_count": d.alert_count,
            "explanation": d.explanation,
            "detected_at": d.detected_at,
            "last_alert_at": d.last_alert_at,
            "now": unit.now,
            "ack_due": unit.now + timedelta(seconds=s.ack_s[d.severity - 1]),
        }
        geom = (
            "CASE WHEN %(lat)s::float8 IS NULL THEN NULL "
            "ELSE ST_SetSRID(ST_MakePoint(%(lon)s, %(lat)s), 4326)::geography END"
        )
        if d.incident_id is None:
            row = await unit.row(
                f"""
                INSERT INTO incidents (type, category, title, severity, state, district, group_key, groups, assets,
                    series, detectors, drops, silences, geom, radius_m, alert_count, explanation, detected_at,
                    opened_at, last_alert_at, updated_at, ack_due)
                VALUES (%(type)s, %(category)s, %(title)s, %(severity)s, 'new', %(district)s, %(group_key)s, %(groups)s,
                    %(assets)s, %(series)s, %(detectors)s, %(drops)s, %(silences)s, {geom}, %(radius_m)s,
                    %(alert_count)s, %(explanation)s, %(detected_at)s, %(now)s, %(last_alert_at)s, %(now)s, %(ack_due)s)
                RETURNING incident_id
                """,
                fields,
            )
            assert row is not None
            d.incident_id = int(row["incident_id"])
            metrics.INCIDENTS_OPENED.labels(d.type).inc()
            await unit.audit(
                SYSTEM,
                "opened",
                incident_id=d.incident_id,
                to_state=State.NEW.value,
                note=d.title,
                data={"severity": d.severity, "assets": sorted(d.assets)},
            )
            _log.info("incident opened", incident_id=d.incident_id, type=d.type, severity=d.severity)
        else:
            await unit.conn.execute(
                f"""
                UPDATE incidents SET type = %(type)s, title = %(title)s, severity = %(severity)s,
                    group_key = %(group_key)s, groups = %(groups)s,
                    assets = %(assets)s, series = %(series)s, detectors = %(detectors)s, drops = %(drops)s,
                    silences = %(silences)s,
                    geom = {geom}, radius_m = %(radius_m)s, alert_count = %(alert_count)s,
                    detected_at = %(detected_at)s, last_alert_at = %(last_alert_at)s, updated_at = %(now)s,
                    version = version + 1,
                    -- A more severe incident is due sooner; an acknowledged one is not due at all.
                    ack_due = CASE WHEN state = 'new' THEN least(ack_due, opened_at + (%(ack_due)s - %(now)s)) END
                WHERE incident_id = %(id)s
                """.encode(),
                {**fields, "id": d.incident_id},
            )
        return d.incident_id

    async def _reprioritise(self, unit: Unit, ids: list[int]) -> None:
        if ids:
            await unit.conn.execute(REPRIORITISE.encode(), {"ids": ids, "radius": self.settings.critical_radius_m})

    async def _publish(self, unit: Unit, incident: dict[str, Any], *, also: str | None = None) -> None:
        """An incident's new state to the wall, and to its crew (and a crew it just left)."""
        event = {"type": "incident", "incident": incident}
        await unit.emit(WALL, event)
        for crew in {incident["crew_id"], also} - {None}:
            await unit.emit(crew_channel(str(crew)), {"type": "job", "incident": incident})

    # -- lifecycle -------------------------------------------------------------------------------

    async def transition(
        self,
        who: Principal,
        incident_id: int,
        target: State,
        *,
        note: str = "",
        crew_id: str | None = None,
        override: str | None = None,
    ) -> dict[str, Any]:
        """Move an incident; returns it. Raises 409 (with the allowed states) for a refused move,
        403 when the role may not make it."""
        if who.role is Role.CREW and (target not in _CREW_MOVES or override is not None):
            raise Forbidden(f"a crew may only report en route, on site or done, not {target.value}")
        _require(who, _permission(target, override, None))
        async with self.events.unit() as unit:
            incident = await self.get(unit, incident_id, lock=True)
            if who.role is Role.CREW and incident["crew_id"] != who.crew_id:
                raise NotFound(f"no job {incident_id} for crew {who.crew_id}")
            current = State(incident["state"])
            _require(who, _permission(target, override, current))
            check(current, target)
            moved = await self._move(unit, who, incident, target, note=note, crew_id=crew_id, override=override)
        if "_recovery" in moved:
            raise ResolvePending(moved.pop("_recovery"), moved)
        return moved

    async def _move(
        self,
        unit: Unit,
        who: Principal,
        incident: dict[str, Any],
        target: State,
        *,
        note: str = "",
        crew_id: str | None = None,
        override: str | None = None,
    ) -> dict[str, Any]:
        s = self.settings
        current = State(incident["state"])
        incident_id = int(incident["incident_id"])
        sets: dict[str, Any] = {"state": target.value, "now": unit.now}
        assignments = ["state = %(state)s", "updated_at = %(now)s", "version = version + 1", "resolve_pending = false"]
        stamp = _STAMP.get(target)
        if stamp and target is not State.DISPATCHED:  # a re-dispatch restarts its clock below
            assignments.append(f"{stamp} = coalesce({stamp}, %(now)s)")
        data: dict[str, Any] = {}
        old_crew = incident["crew_id"]
        if target is State.RESOLVED:
            recovered, detail = await self.recovered(unit, incident)
            data["recovery"] = detail
            if not recovered:
                if override is None:
                    await unit.conn.execute(
                        "UPDATE incidents SET resolve_pending = true, updated_at = %s, version = version + 1 "
                        "WHERE incident_id = %s",
                        (unit.now, incident_id),
                    )
                    await unit.audit(
                        who, "resolve_requested", incident_id=incident_id, from_state=current, note=note, data=data
                    )
                    pending = await self.get(unit, incident_id)
                    await self._publish(unit, pending)
                    pending["_recovery"] = detail  # the caller answers 202 once this commits
                    return pending
                data["override"] = override
        if target is State.DISPATCHED:
            if crew_id is None:
                raise RequestError("dispatching needs a crew_id")
            crew = await unit.row("SELECT crew_id FROM crews WHERE crew_id = %s", (crew_id,))
            if crew is None:
                raise NotFound(f"no crew {crew_id}")
            assignments += ["crew_id = %(crew)s", "arrive_due = %(arrive_due)s", "crew_acknowledged_at = NULL"]
            assignments += ["dispatched_at = %(now)s", "en_route_at = NULL", "arrived_at = NULL"]
            sets["crew"] = crew_id
            sets["arrive_due"] = unit.now + timedelta(seconds=s.arrive_s[int(incident["severity"]) - 1])
            data["crew_id"] = crew_id
            # Accepted or overridden: the audit says where the chosen crew stood in the ranking.
            ranked = [] if incident["lat"] is None else await dispatch.recommend(unit, s, incident)
            data["recommended"] = [r["crew_id"] for r in ranked[:3]]
            data["rank"] = next((r["rank"] for r in ranked if r["crew_id"] == crew_id), None)
        elif target is State.ACKNOWLEDGED and current in CREW_STATES:  # recall
            assignments += ["crew_id = NULL", "arrive_due = NULL"]
            data["recalled_crew"] = old_crew
        elif target is State.NEW:  # reopen: the acknowledgement clock starts again
            assignments += [
                "crew_id = NULL",
                "arrive_due = NULL",
                "resolved_at = NULL",
                "closed_at = NULL",
                "acknowledged_at = NULL",
                "ack_breached = false",
                "arrive_breached = false",
                "ack_due = %(ack_due)s",
                "opened_at = %(now)s",
            ]
            sets["ack_due"] = unit.now + timedelta(seconds=s.ack_s[int(incident["severity"]) - 1])
        elif target is State.CANCELLED:
            assignments += ["crew_id = NULL", "arrive_due = NULL"]
        await unit.conn.execute(
            f"UPDATE incidents SET {', '.join(assignments)} WHERE incident_id = %(id)s".encode(),
            {**sets, "id": incident_id},
        )
        await self._reprioritise(unit, [incident_id])
        if override is not None:
            data["override"] = override
        await unit.audit(
            who, target.value, incident_id=incident_id, from_state=current, to_state=target, note=note, data=data
        )
        moved = await self.get(unit, incident_id)
        await self._publish(unit, moved, also=old_crew if old_crew != moved["crew_id"] else None)
        metrics.TRANSITIONS.labels(target.value).inc()
        _log.info("incident moved", incident_id=incident_id, to=target.value, by=who.username, role=who.role.value)
        return moved

    async def crew_acknowledge(self, who: Principal, incident_id: int, note: str = "") -> dict[str, Any]:
        """The crew confirms it received the dispatch (the incident stays dispatched)."""
        _require(who, Permission.CREW)
        async with self.events.unit() as unit:
            incident = await self.get(unit, incident_id, lock=True)
            if incident["crew_id"] != who.crew_id:
                raise NotFound(f"no job {incident_id} for crew {who.crew_id}")
            if incident["state"] not in CREW_STATES:
                raise Conflict(f"job {incident_id} is {incident['state']}; nothing to acknowledge")
            await unit.conn.execute(
                "UPDATE incidents SET crew_acknowledged_at = coalesce(crew_acknowledged_at, %s), updated_at = %s, "
                "version = version + 1 WHERE incident_id = %s",
                (unit.now, unit.now, incident_id),
            )
            await unit.audit(who, "crew_acknowledged", incident_id=incident_id, from_state=incident["state"], note=note)
            moved = await self.get(unit, incident_id)
            await self._publish(unit, moved)
            return moved

    # -- public warnings ---------------------------------------------------------------------------

    async def issue_cap(self, who: Principal, incident_id: int) -> bytes:
        """Publish the incident's current version as a CAP 1.2 message (or return the one already
        published for it); an update references the previous message as it was sent."""
        s = self.settings
        async with self.events.unit() as unit:
            incident = await self.get(unit, incident_id, lock=True)
            last = await unit.row(
                "SELECT cap_version, incident_version, sent, body FROM cap_messages WHERE incident_id = %s "
                "ORDER BY cap_version DESC LIMIT 1",
                (incident_id,),
            )
            if last is not None and last["incident_version"] == incident["version"]:
                return bytes(last["body"])
            if incident["type"] == "sensor_fault":
                raise Conflict("a sensor fault is maintenance work on one device, not a public warning")
            if incident["lat"] is None:
                raise Conflict("the incident has no location (its devices are not registered); no area to warn")
            if last is None and incident["state"] not in OPEN:
                raise Conflict(f"the incident is {incident['state']} and no warning was issued: nothing to update")
            points = await unit.rows(
                "SELECT ST_Y(geom::geometry) AS lat, ST_X(geom::geometry) AS lon FROM devices "
                "WHERE device_id = ANY(%s)",
                (incident["assets"],),
            )
            status = s.cap_status or ("Actual" if s.environment is Environment.PRODUCTION else "Exercise")
            body = cap.incident_to_cap(
                cap.Incident(
                    incident_id=incident_id,
                    version=1 if last is None else int(last["cap_version"]) + 1,
                    type=incident["type"],
                    category=incident["category"],
                    severity=int(incident["severity"]),
                    state=incident["state"],
                    title=incident["title"],
                    explanation=incident["explanation"],
                    district=incident["district"],
                    lat=float(incident["lat"]),
                    lon=float(incident["lon"]),
                    points=[(float(p["lat"]), float(p["lon"])) for p in points],
                    radius_m=float(incident["radius_m"]),
                    opened_at=incident["opened_at"],
                    updated_at=incident["updated_at"],
                    previous_sent=None if last is None else last["sent"],
                ),
                sender=s.cap_sender,
                sent=unit.now,
                status=status,
                web=f"{s.public_url.rstrip('/')}/incidents/{incident_id}" if s.public_url else None,
            )
            version = 1 if last is None else int(last["cap_version"]) + 1
            await unit.conn.execute(
                "INSERT INTO cap_messages (incident_id, cap_version, incident_version, sent, issued_by, body) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                (incident_id, version, incident["version"], unit.now, who.username, body),
            )
            await unit.audit(
                who, "cap_issued", incident_id=incident_id, from_state=incident["state"], data={"cap_version": version}
            )
            return body

    async def latest_cap(self, unit: Unit, incident_id: int) -> bytes:
        await self.get(unit, incident_id)
        row = await unit.row(
            "SELECT body FROM cap_messages WHERE incident_id = %s ORDER BY cap_version DESC LIMIT 1", (incident_id,)
        )
        if row is None:
            raise NotFound(f"no public warning issued for incident {incident_id}; POST to issue one")
        return bytes(row["body"])

    # -- data-confirmed recovery -----------------------------------------------------------------

    async def recovered(self, unit: Unit, incident: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        """Whether every affected series is back within its normal envelope.

        A series is back when it has at least ``recovery_min_readings`` readings in the last
        ``recovery_s`` and all of them lie within its envelope, widened by the margin. The
        envelope is what the series read before the incident: over ``recovery_reference_s``
        (a day) the 1st to 99th percentile of its minute extremes (``readings_1m``), so that
        daily cycles and schedules count as normal and a stray spike does not; and at least
        its range in the hour before, read from the readings themselves (rollups may lag).
        """
        s = self.settings
        rows = await unit.rows(
            """
            WITH s AS (
                SELECT regexp_replace(x, '/[^/]*$', '') AS device_id, substring(x FROM '[^/]*$') AS metric
                FROM unnest(%(series)s::text[]) AS x
            ), hour AS (
                SELECT s.device_id, s.metric, min(r.value) AS lo, max(r.value) AS hi
                FROM s JOIN readings r ON r.device_id = s.device_id AND r.metric = s.metric
                 AND r.ts >= %(detected)s - INTERVAL '1 hour' AND r.ts < %(detected)s
                GROUP BY 1, 2
            ), day AS (
                SELECT s.device_id, s.metric,
                       percentile_cont(0.01) WITHIN GROUP (ORDER BY m.min) AS lo,
                       percentile_cont(0.99) WITHIN GROUP (ORDER BY m.max) AS hi
                FROM s JOIN readings_1m m ON m.device_id = s.device_id AND m.metric = s.metric
                 AND m.bucket >= %(reference)s AND m.bucket < %(detected)s - INTERVAL '1 minute'
                GROUP BY 1, 2
            ), post AS (
                SELECT s.device_id, s.metric, count(r.value) AS n, min(r.value) AS lo, max(r.value) AS hi
                FROM s LEFT JOIN readings r ON r.device_id = s.device_id AND r.metric = s.metric
                 AND r.ts > %(since)s AND r.ts <= %(now)s
                GROUP BY 1, 2
            )
            SELECT post.device_id, post.metric, post.n, post.lo, post.hi,
                   least(hour.lo, day.lo) AS ref_lo, greatest(hour.hi, day.hi) AS ref_hi
            FROM post LEFT JOIN hour USING (device_id, metric) LEFT JOIN day USING (device_id, metric)
            ORDER BY 1, 2
            """,
            {
                "series": incident["series"],
                "detected": incident["detected_at"],
                "reference": incident["detected_at"] - timedelta(seconds=s.recovery_reference_s),
                "since": unit.now - timedelta(seconds=s.recovery_s),
                "now": unit.now,
            },
        )
        waiting = []
        for r in rows:
            series = f"{r['device_id']}/{r['metric']}"
            if r["n"] < s.recovery_min_readings:
                waiting.append(f"{series}: {r['n']} of {s.recovery_min_readings} readings in {s.recovery_s:.0f} s")
                continue
            if r["ref_lo"] is None:
                continue  # no history to compare with: readings arriving again is all we can ask
            lo, hi = float(r["ref_lo"]), float(r["ref_hi"])
            margin = max(s.recovery_margin * (hi - lo), 0.02 * max(abs(lo), abs(hi)), 1e-6)
            if r["lo"] < lo - margin or r["hi"] > hi + margin:
                waiting.append(
                    f"{series}: read {r['lo']:.4g}..{r['hi']:.4g}, normal {lo - margin:.4g}..{hi + margin:.4g}"
                )
        ok = not waiting and bool(rows)
        detail = {"recovered": ok, "series": len(rows), "waiting": waiting, "window_s": s.recovery_s}
        return ok, detail

    # -- timers ----------------------------------------------------------------------------------

    async def tick(self) -> dict[str, int]:
        """Escalate breached deadlines and resolve incidents whose sensors recovered; returns counts."""
        s = self.settings
        done = {"ack_breaches": 0, "arrive_breaches": 0, "resolved": 0}
        async with self.events.unit() as unit:
            for kind, query in (
                ("ack", "state = 'new' AND NOT ack_breached AND ack_due <= %(now)s"),
                ("arrive", "state IN ('dispatched', 'en_route') AND NOT arrive_breached AND arrive_due <= %(now)s"),
            ):
                breached = await unit.rows(
                    f"UPDATE incidents SET {kind}_breached = true, updated_at = %(now)s, version = version + 1 "
                    f"WHERE {query} RETURNING incident_id, state, {kind}_due AS due",
                    {"now": unit.now},
                )
                await self._reprioritise(unit, [int(r["incident_id"]) for r in breached])
                for r in breached:
                    done[f"{kind}_breaches"] += 1
                    metrics.SLA_BREACHES.labels(kind).inc()
                    what = "acknowledged" if kind == "ack" else "on site"
                    note = f"not {what} by {r['due'].isoformat()}"
                    await unit.audit(
                        SYSTEM, f"escalated_{kind}", incident_id=int(r["incident_id"]), from_state=r["state"], note=note
                    )
                    incident = await self.get(unit, int(r["incident_id"]))
                    await self._publish(unit, incident)
                    await unit.emit(
                        SUPERVISOR, {"type": "escalation", "breach": kind, "note": note, "incident": incident}
                    )
                    _log.warning("SLA breached", incident_id=r["incident_id"], breach=kind, due=r["due"].isoformat())
            if self._next_recovery_check is not None and unit.now < self._next_recovery_check:
                return done
            self._next_recovery_check = unit.now + timedelta(seconds=s.recovery_check_s)
            candidates = await unit.rows(
                SELECT_INCIDENT + " WHERE i.resolve_pending OR (%(self_clear)s AND i.state = 'new' "
                "AND i.last_alert_at <= %(quiet)s) ORDER BY i.incident_id LIMIT 100 FOR UPDATE",
                {"self_clear": s.self_clear, "quiet": unit.now - timedelta(seconds=s.recovery_s)},
            )
            for incident in candidates:
                ok, _ = await self.recovered(unit, incident)
                if ok:
                    note = f"sensors back within bounds for {s.recovery_s:.0f} s"
                    await self._move(unit, SYSTEM, incident, State.RESOLVED, note=note)
                    done["resolved"] += 1
        return done


class ResolvePending(RequestError):
    """The resolve is recorded, but the data do not confirm it yet (HTTP 202, not an error)."""

    status = 202

    def __init__(self, detail: dict[str, Any], incident: dict[str, Any]) -> None:
        super().__init__(
            "resolve requested: waiting for the sensors to be back within bounds "
            f"({len(detail['waiting'])} of {detail['series']} series not yet); "
            "it resolves by itself when they are, or a dispatcher overrides with a reason",
            recovery=detail,
            incident=incident,
        )


def _permission(target: State, override: str | None, current: State | None) -> Permission:
    if target is State.ACKNOWLEDGED:
        # Back from a crew state is a recall: taking a crew off a job is a dispatcher's call.
        return Permission.DISPATCH if current in CREW_STATES else Permission.ACKNOWLEDGE
    if target is State.RESOLVED:
        return Permission.DISPATCH if override is not None else Permission.ACKNOWLEDGE
    return Permission.DISPATCH


_CREW_MOVES = frozenset({State.EN_ROUTE, State.ON_SITE, State.RESOLVED})


def _require(who: Principal, permission: Permission) -> None:
    # A crew moves its own job en route / on site / done: the caller checks the job is theirs.
    if who.role is Role.CREW:
        return
    if not who.can(permission):
        raise Forbidden(f"a {who.role.value} may not do this ({permission.value} needed)")


def alert_body(a: Alert, owner: dict[str, int], maintenance: dict[str, int]) -> dict[str, Any]:
    body = alert_json(a)
    body["incident_id"] = owner.get(a.alert_id)
    body["maintenance_id"] = maintenance.get(a.alert_id)
    return body
