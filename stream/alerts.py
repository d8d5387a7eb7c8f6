"""The alerts the stream tier raises, and their text: what was seen, what was expected, over
which window, and what the alert most likely is (``Alert.alert_class``).

A value or a rate no working sensor reads, and a sensor stuck at one value, are sensor faults;
the rest of the readings' alarms may be the city (``incident``). Of silences (``stream.silence``):
a silent device is an incident (a power loss looks like this), one metric that stops while its
device reports is a sensor fault, the feed as a whole is the platform.
"""

from __future__ import annotations

from collections import Counter

from cityops.core.contracts import METRICS, Alert, DeviceKind, TruthCategory
from stream.detectors import Detector, Kind, Scored
from stream.silence import Feed
from stream.store import Rows

STALENESS = Kind.STALENESS.label


def judge(top: Kind, score: float) -> tuple[TruthCategory, str]:
    """The class of a reading's alarm from the detector that raised it, and why (empty for an
    incident: the explanation says what the city shows)."""
    if top is Kind.PHYSICAL:
        return TruthCategory.SENSOR_FAULT, "judged a sensor fault: no working sensor reads this"
    if top is Kind.FLATLINE:
        return TruthCategory.SENSOR_FAULT, "judged a sensor fault: a stuck sensor"
    if top is Kind.ROC and score >= 1.0:
        return TruthCategory.SENSOR_FAULT, "judged a sensor fault: faster than the quantity can change"
    return TruthCategory.INCIDENT, ""


def from_reading(detector: Detector, rows: Rows, scored: Scored, i: int, emitted_us: int) -> Alert:
    """The alert for row ``i`` of a scored batch."""
    device_id, metric, sid = rows.device_ids[i], rows.metrics[i], rows.series[i]
    top = Kind(int(scored.top[i]))
    cls, why = judge(top, float(scored.score[i]))
    text = _explain(detector, sid, rows.kind_of[device_id], metric, rows.values[i], scored, i, top)
    return Alert(
        alert_id=Alert.make_id(device_id, metric, rows.ts_us[i], top.label),
        device_id=device_id,
        kind=rows.kind_of[device_id],
        metric=metric,
        ts_us=rows.ts_us[i],
        value=rows.values[i],
        score=float(scored.score[i]),
        detector=top.label,
        baseline=float(scored.baselines[i]),
        spread=float(scored.spreads[i]),
        window=_window_readings(detector, sid, top),
        seq=rows.seq[i],
        gateway_us=rows.gateway_us[i],
        emitted_us=emitted_us,
        detectors=scored.fired_names(i) or [top.label],
        explanation=f"{text}; {why}" if why else text,
        alert_class=cls,
    )


def silence(
    detector: Detector,
    sid: int,
    key: tuple[str, str],
    kind: str,
    now_us: int,
    emitted_us: int,
    *,
    device_metrics: int = 0,
) -> Alert:
    """A silent series: its whole device (``device_metrics`` > 0, how many it has) or only it."""
    device_id, metric = key
    interval = detector.interval_s(sid)
    gap = (now_us - detector.last_ts(sid)) / 1e6
    if device_metrics:
        what = f"none of its {device_metrics} metrics" if device_metrics > 1 else metric
        text = f"no reading for {gap:.0f} s ({what}); it usually reports every {interval:.3g} s"
        cls = TruthCategory.INCIDENT
    else:
        text = f"{device_id} reports, but no {metric} for {gap:.0f} s; it usually comes every {interval:.3g} s"
        cls = TruthCategory.SENSOR_FAULT
    return Alert(
        alert_id=Alert.make_id(device_id, metric, now_us, STALENESS),
        device_id=device_id,
        kind=kind,
        metric=metric,
        ts_us=now_us,
        value=detector.last_value(sid),
        score=1.0,
        detector=STALENESS,
        baseline=interval,
        spread=0.0,
        window=int(detector.profile(sid).stale_intervals),
        seq=-1,
        gateway_us=now_us,
        emitted_us=emitted_us,
        detectors=[STALENESS],
        explanation=text,
        alert_class=cls,
    )


def feed_silence(topic: str, feed: Feed, kinds: list[str], now_us: int, emitted_us: int) -> Alert:
    """Most of the feed silent at once: one alert for the pipeline upstream (``kinds``: the device
    class of each silent device)."""
    which = ", ".join(f"{n} {kind}" for kind, n in Counter(kinds).most_common())
    device_id = f"feed/{topic}"
    return Alert(
        alert_id=Alert.make_id(device_id, "*", now_us, STALENESS),
        device_id=device_id,
        kind="feed",
        metric="*",
        ts_us=now_us,
        value=float(feed.silent),
        score=1.0,
        detector=STALENESS,
        baseline=float(feed.reporting),
        spread=0.0,
        window=0,
        seq=-1,
        gateway_us=now_us,
        emitted_us=emitted_us,
        detectors=[STALENESS],
        explanation=(
            f"{feed.silent} of {feed.reporting} reporting devices fell silent at once ({which}): the feed stopped "
            "upstream of the stream tier (gateways, MQTT broker or network), not the devices"
        ),
        alert_class=TruthCategory.PLATFORM,
    )


def _window_readings(detector: Detector, sid: int, kind: Kind) -> int:
    p = detector.profile(sid)
    interval = max(detector.interval_s(sid), 1e-6)
    if kind in (Kind.CUSUM, Kind.FLATLINE):
        return round(p.slow_window_s / interval) if p.slow_window_s else p.slow_window
    if kind in (Kind.EWMA, Kind.ROBUST, Kind.ROC):
        return round(p.window_s / interval) if p.window_s else p.window
    if kind is Kind.LIMIT and p.limit_window_s:
        return round(p.limit_window_s / interval)
    return 1


def _explain(
    detector: Detector, sid: int, kind: str, metric: str, value: float, scored: Scored, i: int, top: Kind
) -> str:
    spec = METRICS.get(DeviceKind(kind), {}).get(metric) if kind in DeviceKind.__members__.values() else None
    unit = f" {spec.unit}" if spec is not None else ""
    base, spread = float(scored.baselines[i]), float(scored.spreads[i])
    window = detector.window(sid, top)
    if top is Kind.LIMIT:
        p = detector.profile(sid)
        side = "below" if base == p.limit_low else "above"
        source = f" ({p.limit_source})" if p.limit_source else ""
        return f"{metric} {side} its limit of {base:g}{unit} over {window}: {value:.4g}{unit} now{source}"
    if top is Kind.PHYSICAL:
        return f"{metric} = {value:.4g}{unit} is outside what a working sensor reads (limit {base:g}{unit})"
    if top is Kind.FLATLINE:
        return f"{metric} stuck at {value:.4g}{unit}, unusual for this series (base rate over {window})"
    p_text = f"p < 1e-{scored.score[i] * 10:.1f}"
    return (
        f"{metric} = {value:.4g}{unit}, expected {base:.4g} +- {spread:.2g}{unit} by {top.label} over {window}; "
        f"{p_text}; detectors: {', '.join(scored.fired_names(i)) or top.label}"
    )
