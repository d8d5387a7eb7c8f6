"""Score the alerts a run produced against the run's ground truth.

An event (an incident or a sensor fault that changes values) is detected when an alert
names one of its devices and one of its metrics, at a reading inside the event's window
(or within ``grace_readings`` readings after it: detectors may need a reading or two past
the end of a one-reading spike). Detection delay is from the event's start to the first such
alert, in seconds and in the device's readings. An alert that matches no event is a false
alarm; their rate is per 1,000 device-hours of the scored span.

Events without metrics (a dropout, a clock skew) cannot be seen by detectors that look at
values; they are counted apart. Platform faults (bad messages) are the gateway's business
and are not scored here.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cityops.core.contracts import GroundTruth, TruthCategory


@dataclass(frozen=True)
class AlertPoint:
    device_id: str
    metric: str
    ts_us: int


@dataclass
class KindScore:
    events: int = 0
    detected: int = 0
    delays_s: list[float] = field(default_factory=list)

    @property
    def recall(self) -> float:
        return self.detected / self.events if self.events else float("nan")


@dataclass
class Score:
    events: int
    detected: int
    alerts: int
    true_alerts: int
    false_alarms: int
    device_hours: float
    delays_s: list[float]
    delays_readings: list[float]
    by_kind: dict[str, KindScore]
    not_scorable: int

    @property
    def recall(self) -> float:
        return self.detected / self.events if self.events else float("nan")

    @property
    def false_alarms_per_1000_device_hours(self) -> float:
        return 1000.0 * self.false_alarms / self.device_hours if self.device_hours else float("nan")

    @property
    def median_delay_s(self) -> float:
        return statistics.median(self.delays_s) if self.delays_s else float("nan")

    @property
    def median_delay_readings(self) -> float:
        return statistics.median(self.delays_readings) if self.delays_readings else float("nan")

    def lines(self) -> list[str]:
        """Figures as ``name: value unit`` lines."""
        out = [
            f"events: {self.events} events",
            f"detected: {self.detected} events",
            f"recall: {self.recall:.3f} ratio",
            f"alerts: {self.alerts} alerts",
            f"false_alarms: {self.false_alarms} alerts",
            f"false_alarms_per_1000_device_hours: {self.false_alarms_per_1000_device_hours:.2f} alerts",
            f"median_detection_delay: {self.median_delay_s:.1f} s",
            f"median_detection_delay_readings: {self.median_delay_readings:.1f} readings",
            f"not_scorable_events: {self.not_scorable} events",
        ]
        out += [
            f"recall_{kind}: {k.recall:.3f} ratio ({k.detected} of {k.events})"
            for kind, k in sorted(self.by_kind.items())
        ]
        return out


def score(
    truths: Iterable[GroundTruth],
    alerts: Iterable[AlertPoint],
    *,
    intervals_s: Mapping[str, float],
    span_us: tuple[int, int],
    grace_readings: int = 2,
) -> Score:
    """``intervals_s``: every device of the run and its reporting interval; ``span_us``: the scored time range."""
    lo, hi = span_us
    scored = [t for t in truths if t.category is not TruthCategory.PLATFORM and t.start_us < hi and t.end_us > lo]
    events = [t for t in scored if t.metrics]
    alerts = [a for a in alerts if lo <= a.ts_us < hi and a.device_id in intervals_s]
    # Index the events by (device, metric) for matching.
    index: dict[tuple[str, str], list[int]] = {}
    for i, t in enumerate(events):
        for device in t.device_ids:
            for metric in t.metrics:
                index.setdefault((device, metric), []).append(i)
    first: dict[int, AlertPoint] = {}
    true_alerts = 0
    for a in sorted(alerts, key=lambda a: a.ts_us):
        grace = int(grace_readings * intervals_s[a.device_id] * 1e6)
        hits = [
            i
            for i in index.get((a.device_id, a.metric), [])
            if events[i].start_us <= a.ts_us < events[i].end_us + grace
        ]
        if hits:
            true_alerts += 1
            for i in hits:
                first.setdefault(i, a)
    by_kind: dict[str, KindScore] = {}
    delays_s, delays_readings = [], []
    for i, t in enumerate(events):
        k = by_kind.setdefault(t.kind, KindScore())
        k.events += 1
        hit = first.get(i)
        if hit is not None:
            k.detected += 1
            delay = (hit.ts_us - t.start_us) / 1e6
            k.delays_s.append(delay)
            delays_s.append(delay)
            delays_readings.append(delay / intervals_s[hit.device_id])
    device_hours = len(intervals_s) * (hi - lo) / 3.6e9
    return Score(
        events=len(events),
        detected=len(first),
        alerts=len(alerts),
        true_alerts=true_alerts,
        false_alarms=len(alerts) - true_alerts,
        device_hours=device_hours,
        delays_s=delays_s,
        delays_readings=delays_readings,
        by_kind=by_kind,
        not_scorable=len(scored) - len(events),
    )


async def alerts_from_database(dsn: str, span_us: tuple[int, int]) -> list[AlertPoint]:
    """The alerts the operations centre stored (table ``alerts``) in the span."""
    import psycopg

    from cityops.core.contracts import to_datetime, to_us

    lo, hi = span_us
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT device_id, metric, ts FROM alerts WHERE ts >= %s AND ts < %s", (to_datetime(lo), to_datetime(hi))
        )
        return [AlertPoint(device, metric, to_us(ts)) for device, metric, ts in await cur.fetchall()]
