"""Export an incident as an OASIS CAP 1.2 alert for public warning systems.

Mapping decisions (the why; the tables below are the what):

- One CAP message per incident *version*: the identifier ends in ``.v<version>`` so every change is a new,
  unique message, and receivers thread them through ``references``. Version 1 is an ``Alert``; later versions are
  ``Update``; a cancelled incident is a ``Cancel``. A resolved or closed incident stays an ``Update`` (not a
  ``Cancel``) with urgency ``Past`` and responseType ``AllClear``: the event was real, and the public should be
  told that earlier advice ("do not drink tap water") is lifted, which a Cancel ("that message was wrong") does not
  say.
- ``references`` must name the previous message exactly as published (``sender,identifier,sent``); receivers
  match on all three. The sent time of the previous version cannot be derived from the incident, so
  ``Incident.previous_sent`` is required for version > 1. We refuse to guess (e.g. from ``opened_at``): a guessed
  time matches no published message, and the update would silently show up as an unrelated alert.
- Category comes from the incident type, not from the operations category: the public cares about the hazard
  (drinking water is ``Health``, a burst main is ``Infra``). Flooding is ``Met`` because CAP defines Met as
  "Meteorological (inc. flood)"; Geo is for landslides and earthquakes.
- certainty is ``Observed``: every incident comes from sensor readings, not a forecast. urgency is
  ``Immediate`` for severe/extreme incidents and ``Expected`` below, so a street-light fault does not reach the
  public with the same urgency as contaminated water; ``Past`` once it is over.
- The area is a circle around the centroid (always; at least ``_MIN_RADIUS_M``, since receivers drop zero-radius
  circles) plus, when the affected assets span an area, their convex hull as a polygon. CAP reads several
  geometries in one area as their union.
- Datetimes are written to the second with a numeric offset; CAP forbids "Z" and writes UTC as "-00:00".
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple
from urllib.parse import urlsplit

__all__ = ["Incident", "incident_to_cap"]

_NS = "urn:oasis:names:tc:emergency:cap:1.2"


@dataclass(frozen=True, slots=True, kw_only=True)
class Incident:
    """What the CAP exporter needs to know about one version of an incident."""

    incident_id: int
    version: int
    type: str
    category: str
    severity: int
    state: str
    title: str
    explanation: str
    district: str | None
    lat: float
    lon: float
    points: Sequence[tuple[float, float]]
    radius_m: float
    opened_at: datetime
    updated_at: datetime
    expires_at: datetime | None = None
    # The ``sent`` of the CAP message published for ``version - 1``; required when version > 1.
    previous_sent: datetime | None = None


class _Hazard(NamedTuple):
    event: str
    category: str
    response: str
    instruction: str | None


_HAZARDS: dict[str, _Hazard] = {
    "water_contamination": _Hazard(
        "Drinking water contamination",
        "Health",
        "Avoid",
        "Do not drink tap water or use it for cooking, making ice, brushing teeth or preparing baby food. "
        "Boil tap water at a rolling boil for at least one minute and let it cool before use, or use bottled "
        "water. Wait for the all-clear before using tap water normally.",
    ),
    "flooding": _Hazard(
        "Flooding",
        "Met",
        "Avoid",
        "Avoid the flooded area. Do not walk, cycle or drive through flood water: it may be deeper or faster "
        "than it looks and can hide open manholes. Move people and valuables to higher floors and keep away "
        "from drains and underpasses.",
    ),
    "air_pollution": _Hazard("Air pollution", "Env", "Monitor", None),
    "noise": _Hazard(
        "Excessive noise",
        "Env",
        "Monitor",
        "Keep windows closed if the noise disturbs you. No other action is needed.",
    ),
    "pipe_burst": _Hazard(
        "Water main burst",
        "Infra",
        "Monitor",
        "Keep away from the burst and do not drive through standing water. Expect low water pressure or "
        "interrupted supply nearby; if tap water is discoloured, run the cold tap until it runs clear.",
    ),
    "water_main_pressure": _Hazard(
        "Water main leak or pressure drop",
        "Infra",
        "Monitor",
        "You may notice low water pressure or discoloured water. Run the cold tap until it runs clear.",
    ),
    "cabinet_power_loss": _Hazard(
        "Street lighting power outage",
        "Infra",
        "Monitor",
        "Street lights may be out. Take extra care after dark, especially at crossings and junctions.",
    ),
    "feeder_power_loss": _Hazard(
        "Street lighting power outage",
        "Infra",
        "Monitor",
        "Street lights may be out over several streets. Take extra care after dark, especially at crossings and "
        "junctions.",
    ),
    "lamp_fault": _Hazard(
        "Street light fault",
        "Infra",
        "Monitor",
        "A street light may be out. Take extra care after dark.",
    ),
    "drainage_fault": _Hazard(
        "Drainage fault",
        "Infra",
        "Monitor",
        "Surface water may collect during rain. Avoid standing water and do not lift drain covers.",
    ),
    "device_offline": _Hazard("Monitoring equipment outage", "Infra", "Monitor", None),
    "concentrator_offline": _Hazard("Monitoring equipment outage", "Infra", "Monitor", None),
}

_SEVERE_AIR = (
    "Stay indoors with windows and doors closed and avoid strenuous activity outdoors. People with heart or lung "
    "conditions should keep their medication at hand."
)
_MILD_AIR = "People with heart or lung conditions should reduce strenuous activity outdoors."

# Unknown types: the event text comes from the operations category, CAP category is Other.
_CATEGORY_EVENTS = {
    "electrical": "Electrical incident",
    "water_mains": "Water main incident",
    "water_quality": "Water quality incident",
    "environment": "Environmental incident",
    "drainage": "Drainage incident",
}

_SEVERITIES = {1: "Minor", 2: "Moderate", 3: "Severe", 4: "Extreme"}
_STATUSES = frozenset({"Actual", "Exercise", "System", "Test", "Draft"})
_OPEN = frozenset({"new", "acknowledged", "dispatched", "en_route", "on_site"})
_OVER = frozenset({"resolved", "closed"})
_STATE_TEXT = {
    "new": "Reported; the city operations centre is assessing it.",
    "acknowledged": "The city operations centre is handling it.",
    "dispatched": "A crew has been dispatched.",
    "en_route": "A crew is on the way.",
    "on_site": "A crew is on site.",
    "resolved": "Resolved.",
    "closed": "Resolved and closed.",
    "cancelled": "Cancelled: this is no longer considered an incident.",
}
_ALL_CLEAR = {
    "water_contamination": "Tap water is safe to drink again. Run the cold tap for two minutes before first use.",
}
_DEFAULT_ALL_CLEAR = "The incident is over. Earlier advice for this incident no longer applies."
_CANCELLED = "Earlier messages about this incident are withdrawn. No action is needed."

_HEADLINE_MAX = 159  # CAP: "SHOULD be less than 160 characters"
_MIN_RADIUS_M = 100.0
_COORD_DECIMALS = 6  # ~0.1 m
# CAP forbids spaces, commas and the restricted characters "<" and "&" in sender and identifier.
_SENDER_FORBIDDEN = re.compile(r"[\s,<&]")
# Characters XML 1.0 cannot carry at all (ElementTree would write them and produce ill-formed XML).
_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def incident_to_cap(
    incident: Incident, *, sender: str, sent: datetime, status: str = "Actual", web: str | None = None
) -> bytes:
    """Render one version of ``incident`` as a CAP 1.2 ``<alert>`` (UTF-8 XML with declaration).

    ``sent`` is this message's publication time; keep it: the next version needs it as ``previous_sent``.
    Raises ``ValueError`` for input that cannot make a valid CAP message.
    """
    _check(incident, sender=sender, sent=sent, status=status, web=web)
    over = incident.state in _OVER
    cancelled = incident.state == "cancelled"
    domain = _safe_domain(sender)

    alert = ET.Element(_q("alert"))
    _add(alert, "identifier", _identifier(domain, incident.incident_id, incident.version))
    _add(alert, "sender", sender)
    _add(alert, "sent", _cap_datetime(sent))
    _add(alert, "status", status)
    _add(alert, "msgType", "Alert" if incident.version == 1 else "Cancel" if cancelled else "Update")
    _add(alert, "scope", "Public")
    if incident.version > 1:
        assert incident.previous_sent is not None  # checked by _check
        previous = _identifier(domain, incident.incident_id, incident.version - 1)
        _add(alert, "references", f"{sender},{previous},{_cap_datetime(incident.previous_sent)}")
    _add(alert, "incidents", f"{domain}.incident.{incident.incident_id}")

    hazard = _hazard(incident)
    info = ET.SubElement(alert, _q("info"))
    _add(info, "language", "en-US")
    _add(info, "category", hazard.category)
    _add(info, "event", hazard.event)
    _add(info, "responseType", "AllClear" if over or cancelled else hazard.response)
    _add(info, "urgency", "Past" if over or cancelled else "Immediate" if incident.severity >= 3 else "Expected")
    _add(info, "severity", _SEVERITIES[incident.severity])
    _add(info, "certainty", "Observed")
    code = ET.SubElement(info, _q("eventCode"))
    _add(code, "valueName", "cityops:incident_type")
    _add(code, "value", incident.type)
    _add(info, "onset", _cap_datetime(incident.opened_at))
    if incident.expires_at is not None:
        _add(info, "expires", _cap_datetime(incident.expires_at))
    _add(info, "headline", _headline(incident))
    _add(info, "description", _description(incident))
    instruction = hazard.instruction
    if cancelled:
        instruction = _CANCELLED
    elif over:
        instruction = _ALL_CLEAR.get(incident.type, _DEFAULT_ALL_CLEAR)
    if instruction:
        _add(info, "instruction", instruction)
    if web is not None:
        _add(info, "web", web)

    area = ET.SubElement(info, _q("area"))
    _add(area, "areaDesc", incident.district or f"around {_fmt(incident.lat)},{_fmt(incident.lon)}")
    ring = _hull_ring(incident.points)
    if ring is not None:
        _add(area, "polygon", " ".join(f"{_fmt(lat)},{_fmt(lon)}" for lat, lon in ring))
    radius_km = max(incident.radius_m, _MIN_RADIUS_M) / 1000.0
    _add(area, "circle", f"{_fmt(incident.lat)},{_fmt(incident.lon)} {radius_km:.3f}")

    xml: bytes = ET.tostring(alert, encoding="UTF-8", xml_declaration=True, default_namespace=_NS)
    return xml


def _check(incident: Incident, *, sender: str, sent: datetime, status: str, web: str | None) -> None:
    if not sender or _SENDER_FORBIDDEN.search(sender):
        raise ValueError(f"sender must be non-empty without spaces, commas, '<' or '&': {sender!r}")
    if status not in _STATUSES:
        raise ValueError(f"status must be one of {sorted(_STATUSES)}, got {status!r}")
    if incident.incident_id < 1 or incident.version < 1:
        raise ValueError(f"incident_id and version must be >= 1, got {incident.incident_id}, {incident.version}")
    if incident.severity not in _SEVERITIES:
        raise ValueError(f"severity must be 1..4, got {incident.severity!r}")
    if incident.state not in _STATE_TEXT:
        raise ValueError(f"unknown incident state {incident.state!r}")
    times = {
        "sent": sent,
        "opened_at": incident.opened_at,
        "updated_at": incident.updated_at,
        "expires_at": incident.expires_at,
        "previous_sent": incident.previous_sent,
    }
    for name, value in times.items():
        if value is not None and (value.tzinfo is None or value.utcoffset() is None):
            raise ValueError(f"{name} must be timezone-aware, got naive {value.isoformat()}")
    if incident.version == 1 and incident.state not in _OPEN:
        raise ValueError(f"version 1 of an incident cannot be {incident.state!r}: there is no earlier message")
    if incident.version > 1:
        if incident.previous_sent is None:
            raise ValueError(
                "previous_sent (the sent time of the previous version's message) is required for an update"
            )
        if incident.previous_sent > sent:
            raise ValueError("previous_sent is later than sent")
    _check_point("centroid", incident.lat, incident.lon)
    if not incident.points:
        raise ValueError("points must not be empty: an incident affects at least one asset")
    for i, (lat, lon) in enumerate(incident.points):
        _check_point(f"points[{i}]", lat, lon)
    if not math.isfinite(incident.radius_m) or incident.radius_m < 0:
        raise ValueError(f"radius_m must be a finite non-negative number, got {incident.radius_m!r}")
    if web is not None:
        parts = urlsplit(web)
        if parts.scheme not in ("http", "https") or not parts.netloc or re.search(r"\s", web):
            raise ValueError(f"web must be an absolute http(s) URL without spaces, got {web!r}")


def _check_point(name: str, lat: float, lon: float) -> None:
    if not (math.isfinite(lat) and math.isfinite(lon) and -90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise ValueError(f"{name} is not a valid WGS 84 lat,lon: {lat!r},{lon!r}")


def _hazard(incident: Incident) -> _Hazard:
    known = _HAZARDS.get(incident.type)
    if known is None:
        event = _CATEGORY_EVENTS.get(incident.category, "City infrastructure incident")
        return _Hazard(event, "Other", "Monitor", None)
    if incident.type == "air_pollution":
        severe = incident.severity >= 3
        return known._replace(
            response="Shelter" if severe else "Monitor", instruction=_SEVERE_AIR if severe else _MILD_AIR
        )
    return known


def _headline(incident: Incident) -> str:
    prefix = {"resolved": "Resolved: ", "closed": "Resolved: ", "cancelled": "Cancelled: "}.get(incident.state, "")
    text = prefix + " ".join(_clean(incident.title).split())
    return text if len(text) <= _HEADLINE_MAX else text[: _HEADLINE_MAX - 1].rstrip() + "…"


def _description(incident: Incident) -> str:
    body = _clean(incident.explanation).strip() or _clean(incident.title).strip()
    return f"{body}\n\nStatus: {_STATE_TEXT[incident.state]}"


def _identifier(domain: str, incident_id: int, version: int) -> str:
    return f"{domain}.incident.{incident_id}.v{version}"


def _safe_domain(sender: str) -> str:
    domain = sender.rpartition("@")[2] or sender
    return re.sub(r"[^A-Za-z0-9.-]", "-", domain)


def _cap_datetime(value: datetime) -> str:
    offset = value.utcoffset()
    assert offset is not None  # checked by _check
    if offset % timedelta(minutes=1):
        # CAP offsets are hh:mm; a zone with a seconds offset (historic local mean time) is written as UTC.
        value, offset = value.astimezone(UTC), timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes <= 0 else "+"  # CAP 1.2: "The timezone for UTC MUST be represented as -00:00"
    hours, mins = divmod(abs(minutes), 60)
    return f"{value.strftime('%Y-%m-%dT%H:%M:%S')}{sign}{hours:02d}:{mins:02d}"


def _hull_ring(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]] | None:
    """Closed convex hull of the points as (lat, lon), or None when they span no area."""
    # Hull on the printed precision, so that points that print alike do not become duplicate vertices.
    distinct = sorted({(round(lon, _COORD_DECIMALS), round(lat, _COORD_DECIMALS)) for lat, lon in points})
    if len(distinct) < 3:
        return None

    def cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    def chain(pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
        out: list[tuple[float, float]] = []
        for p in pts:
            while len(out) >= 2 and cross(out[-2], out[-1], p) <= 0:
                out.pop()
            out.append(p)
        return out[:-1]

    hull = chain(distinct) + chain(distinct[::-1])  # Andrew's monotone chain, counter-clockwise in (lon, lat)
    if len(hull) < 3:
        return None  # all points on one line
    ring = [(lat, lon) for lon, lat in hull]
    return [*ring, ring[0]]


def _fmt(value: float) -> str:
    text = f"{value:.{_COORD_DECIMALS}f}"
    return "0.000000" if text == "-0.000000" else text


def _clean(text: str) -> str:
    return _XML_INVALID.sub("", text)


def _q(tag: str) -> str:
    return f"{{{_NS}}}{tag}"


def _add(parent: ET.Element, tag: str, text: str) -> ET.Element:
    child = ET.SubElement(parent, _q(tag))
    child.text = _clean(text)
    return child
