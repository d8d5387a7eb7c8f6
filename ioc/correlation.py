"""Which incident an alert belongs to: its category, its asset groups, and what the incident is.

Pure functions over plain data; ``ioc.incidents`` applies them to the database. An alert joins
an open incident of the same category when it shares an asset group (a lamp's cabinet or
feeder, a pipe node's district metered area, a station's district), is one of its assets
already, or lies within the correlation radius of it; and the incident saw an alert within the
window. Lamps of several cabinets on one feeder are one "feeder power loss". An alert the stream
judged a sensor fault opens, or joins, only that device's ``sensor_fault`` work: severity 1,
nothing else joins it, no public warning.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta


class Category(enum.StrEnum):
    """What kind of crew an incident needs: the crews' skills use the same names."""

    ELECTRICAL = "electrical"
    WATER_MAINS = "water_mains"
    WATER_QUALITY = "water_quality"
    ENVIRONMENT = "environment"
    DRAINAGE = "drainage"


# Water quality is sampled and flushed by the water-mains crews.
SKILL: dict[Category, str] = {
    Category.ELECTRICAL: "electrical",
    Category.WATER_MAINS: "water_mains",
    Category.WATER_QUALITY: "water_mains",
    Category.ENVIRONMENT: "environment",
    Category.DRAINAGE: "drainage",
}

_ENVIRONMENT_METRICS = frozenset(
    {"pm25_ugm3", "pm10_ugm3", "no2_ugm3", "o3_ugm3", "co_mgm3", "noise_dba", "temperature_c", "humidity_pct"}
)

# Base severity (1 minor .. 4 extreme) by incident type.
BASE_SEVERITY: dict[str, int] = {
    "water_contamination": 4,
    "pipe_burst": 3,
    "flooding": 3,
    "feeder_power_loss": 3,
    "cabinet_power_loss": 2,
    "water_main_pressure": 2,
    "air_pollution": 2,
    "lamp_fault": 1,
    "noise": 1,
    "drainage_fault": 1,
    "device_offline": 1,
    "concentrator_offline": 2,
    "sensor_fault": 1,
}
# This many affected assets add one severity step.
WIDESPREAD = 5


def category(device_kind: str, metric: str) -> Category:
    if device_kind == "env_station" or (metric in _ENVIRONMENT_METRICS and device_kind == "lamp_pole"):
        return Category.ENVIRONMENT
    if device_kind == "lamp_pole":
        return Category.ELECTRICAL
    if device_kind == "pipe_node":
        return Category.WATER_MAINS
    if device_kind == "water_quality":
        return Category.WATER_QUALITY
    if device_kind == "drainage":
        return Category.DRAINAGE
    return Category.ENVIRONMENT if metric in _ENVIRONMENT_METRICS else Category.ELECTRICAL


def group_keys(cat: Category, district: str | None, attrs: dict[str, str], *, silent: bool = False) -> tuple[str, ...]:
    """The asset groups whose alerts are one incident (none: location decides alone). A device
    that fell ``silent`` (a staleness alert) is also grouped by the concentrator that speaks
    for it: a concentrator going quiet silences all of its devices at once."""
    if cat is Category.ELECTRICAL:
        keys = tuple(f"{k}:{attrs[k]}" for k in ("cabinet", "feeder") if k in attrs)
    elif cat is Category.WATER_MAINS:
        keys = (f"dma:{attrs['dma']}",) if "dma" in attrs else ()
    else:
        keys = (f"district:{district}",) if district else ()
    if silent and "concentrator" in attrs:
        keys += (f"concentrator:{attrs['concentrator']}",)
    return keys


@dataclass
class Signal:
    """One alert as correlation sees it."""

    alert_id: str
    device_id: str
    metric: str
    detector: str
    value: float
    baseline: float
    at: datetime
    category: Category
    groups: tuple[str, ...]
    district: str | None
    lat: float | None
    lon: float | None
    explanation: str = ""
    # The stream's judgement (cityops.core.contracts.Alert.alert_class): a sensor fault is
    # maintenance work on that one device, never part of (or the start of) an emergency.
    alert_class: str = "incident"


SENSOR_FAULT = "sensor_fault"


@dataclass
class Draft:
    """An incident as correlation builds it (new, or loaded from the database)."""

    category: Category
    groups: set[str]
    district: str | None
    detected_at: datetime
    last_alert_at: datetime
    incident_id: int | None = None
    assets: dict[str, tuple[float, float] | None] = field(default_factory=dict)
    series: set[str] = field(default_factory=set)
    detectors: set[str] = field(default_factory=set)
    metrics: set[str] = field(default_factory=set)
    drops: int = 0  # alerts well below their baseline (pressure falling, lamps dark)
    silences: int = 0  # staleness alerts
    alert_class: str = "incident"  # "sensor_fault": a device's maintenance work
    severity: int = 1
    explanation: str = ""
    alert_count: int = 0
    changed: bool = False
    taken: list[str] = field(default_factory=list)  # alert ids added in this batch
    _cached: tuple[int, tuple[float, float] | None, float] | None = field(default=None, repr=False, compare=False)

    @property
    def group(self) -> str | None:
        """The group that names the incident: its cabinet, or the feeder when it spans cabinets,
        or the concentrator that went quiet."""
        if self._concentrator_silent:
            return next(g for g in sorted(self.groups) if g.startswith("concentrator:"))
        cabinets = sorted(g for g in self.groups if g.startswith("cabinet:"))
        feeders = sorted(g for g in self.groups if g.startswith("feeder:"))
        if len(cabinets) > 1 and len(feeders) == 1:
            return feeders[0]
        named = cabinets or feeders or sorted(self.groups)
        return named[0] if named else None

    @property
    def centroid(self) -> tuple[float, float] | None:
        return self._shape()[0]

    @property
    def radius_m(self) -> float:
        return self._shape()[1]

    def _shape(self) -> tuple[tuple[float, float] | None, float]:
        # Cached until an asset joins: matching asks it for every alert of a batch.
        if self._cached is None or self._cached[0] != len(self.assets):
            points = [p for p in self.assets.values() if p is not None]
            if not points:
                self._cached = (len(self.assets), None, 0.0)
            else:
                c = (sum(p[0] for p in points) / len(points), sum(p[1] for p in points) / len(points))
                self._cached = (len(self.assets), c, max(distance_m(c, p) for p in points))
        return self._cached[1], self._cached[2]

    def matches(self, s: Signal, radius_m: float, window: timedelta) -> bool:
        if s.category is not self.category or s.at - self.last_alert_at > window:
            return False
        if (s.alert_class == SENSOR_FAULT) != (self.alert_class == SENSOR_FAULT):
            return False
        if self.alert_class == SENSOR_FAULT:
            return s.device_id in self.assets
        if s.device_id in self.assets or not self.groups.isdisjoint(s.groups):
            return True
        c = self.centroid
        if c is None or s.lat is None or s.lon is None:
            return False
        here = (s.lat, s.lon)
        # Near one of its assets, not merely near its area: an incident that grew must not
        # swallow everything within its own radius. The centre test rules most alerts out cheaply.
        if distance_m(c, here) > radius_m + self.radius_m:
            return False
        return any(p is not None and distance_m(p, here) <= radius_m for p in self.assets.values())

    def add(self, s: Signal) -> None:
        self.assets.setdefault(s.device_id, None if s.lat is None or s.lon is None else (s.lat, s.lon))
        self.series.add(f"{s.device_id}/{s.metric}")
        self.groups.update(s.groups)
        self.detectors.add(s.detector)
        self.metrics.add(s.metric)
        if math.isfinite(s.baseline) and s.detector != "staleness" and s.value < s.baseline * 0.8:
            self.drops += 1
        if s.detector == "staleness":
            self.silences += 1
        self.detected_at = min(self.detected_at, s.at)
        self.last_alert_at = max(self.last_alert_at, s.at)
        self.alert_count += 1
        self.taken.append(s.alert_id)
        if not self.explanation:
            self.explanation = f"{s.device_id}: {s.explanation}" if s.explanation else s.device_id
        # Severity only grows as alerts join; escalation raises it too.
        self.severity = max(self.severity, severity(self.type, len(self.assets)))
        self.changed = True

    @property
    def type(self) -> str:
        if self.alert_class == SENSOR_FAULT:
            return "sensor_fault"
        if self._concentrator_silent:
            return "concentrator_offline"
        cabinets = sum(g.startswith("cabinet:") for g in self.groups)
        kind = incident_type(self.category, len(self.assets), self.metrics, self.detectors, self.drops)
        return "feeder_power_loss" if kind == "cabinet_power_loss" and cabinets > 1 else kind

    @property
    def _concentrator_silent(self) -> bool:
        """Mostly silences, of devices of one concentrator beyond what one power supply explains
        (more than one feeder, or devices that have none): the concentrator, not the devices. A
        few other alerts of its devices in the window (a city's usual noise) do not change that."""
        if self.silences < 2 or 2 * self.silences < self.alert_count:
            return False
        if sum(g.startswith("concentrator:") for g in self.groups) != 1:
            return False
        return sum(g.startswith("feeder:") for g in self.groups) != 1

    @property
    def title(self) -> str:
        if self.alert_class == SENSOR_FAULT:
            where = min(self.assets, default="?")  # one device's work
        else:
            where = self.group.split(":", 1)[1] if self.group else (self.district or min(self.assets, default="?"))
        n = len(self.assets)
        return f"{self.type.replace('_', ' ').capitalize()} — {where} ({n} asset{'s' if n != 1 else ''})"


def incident_type(cat: Category, n_assets: int, metrics: set[str], detectors: set[str], drops: int) -> str:
    offline = detectors == {"staleness"}
    if cat is Category.ELECTRICAL:
        if n_assets >= 2:
            return "cabinet_power_loss"
        return "device_offline" if offline else "lamp_fault"
    if offline:
        return "device_offline"
    if cat is Category.WATER_MAINS:
        return "pipe_burst" if drops > 0 and n_assets >= 2 else "water_main_pressure"
    if cat is Category.WATER_QUALITY:
        return "water_contamination"
    if cat is Category.DRAINAGE:
        return "flooding" if "level_cm" in metrics and n_assets >= 2 else "drainage_fault"
    return "noise" if metrics == {"noise_dba"} else "air_pollution"


def severity(kind: str, n_assets: int) -> int:
    if kind == "sensor_fault":
        return 1  # maintenance work: never escalates to an emergency
    return min(4, BASE_SEVERITY.get(kind, 1) + (1 if n_assets >= WIDESPREAD else 0))


def distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance between (lat, lon) points (the database uses PostGIS; this is for
    matching alerts in memory within one batch)."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6_371_008.8 * math.asin(math.sqrt(min(1.0, h)))


def correlate(signals: list[Signal], open_drafts: list[Draft], *, radius_m: float, window: timedelta) -> list[Draft]:
    """Assign each signal to the first matching draft (open ones first), else start a new one.

    Returns every draft touched (``changed``), new ones with ``incident_id`` None. Signals are
    taken in time order, so the result does not depend on how alerts were batched.
    """
    drafts = list(open_drafts)
    for s in sorted(signals, key=lambda s: (s.at, s.alert_id)):
        target = next((d for d in drafts if d.matches(s, radius_m, window)), None)
        if target is None:
            target = Draft(s.category, set(), s.district, s.at, s.at, alert_class=s.alert_class)
            drafts.append(target)
        target.add(s)
    return [d for d in drafts if d.changed]
