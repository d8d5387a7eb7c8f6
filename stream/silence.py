"""Silence: how far the pipeline has got (stream time), and who fell silent by then.

Stream time is per partition: its newest reading's time, advanced by the clock only over time
the partition was known read to its end. So silence is judged by the pipeline's own progress:
while the consumer lags (a backlog, a Kafka outage) or the service pauses (a long batch, rollup
work, a stalled event loop) time stands still, and no series is stale merely because its
readings wait unread.

What fell silent is told apart (``Silence.judge``):

* a device: every metric of it, so one alert for the device, on its most frequent metric;
* a metric whose device goes on reporting: a sensor fault;
* most of the feed at once: one platform alert, and its devices are not judged one by one
  until the feed is back (most of them report again); those still silent then are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from stream.detectors import I64, Detector
from stream.series import SeriesIndex

# Silence flags (``Detector.silent_flags``): silent on its own, and silent with the feed.
ALONE = 1.0
WITH_FEED = 2.0


class Progress:
    """Stream time from what each partition delivered, and when it was last read to its end."""

    def __init__(self) -> None:
        self._assigned: set[int] = set()
        self._newest: dict[int, tuple[int, int]] = {}  # partition -> (newest reading, clock at arrival)
        self._drained: dict[int, int] = {}  # partition -> clock when it was last read to its end

    def assign(self, partitions: list[int]) -> None:
        """These partitions are this consumer's now (their backlog is unknown until read)."""
        self._assigned.update(partitions)

    def saw(self, partition: int, newest_us: int, now_us: int) -> None:
        """Readings up to ``newest_us`` arrived from ``partition`` at ``now_us``."""
        if newest_us > self._newest.get(partition, (0, 0))[0]:
            self._newest[partition] = (newest_us, now_us)

    def drained(self, partition: int, at_us: int) -> None:
        """At ``at_us`` (the clock of ``saw``) the consumer had read all that ``partition`` held."""
        if at_us > self._drained.get(partition, 0):
            self._drained[partition] = at_us

    def forget(self, partition: int) -> None:
        self._assigned.discard(partition)
        self._newest.pop(partition, None)
        self._drained.pop(partition, None)

    def stream_time(self) -> int | None:
        """The time of the partition furthest behind. A partition that delivered nothing yet has
        the time it was last read to its end (it is empty up to then); None while any partition
        has neither: its backlog is unknown, so nothing can be judged (as after a rebalance,
        when restored series wait for their partition's first fetch)."""
        times = []
        for p in self._assigned | self._newest.keys():
            if p in self._newest:
                newest, at = self._newest[p]
                times.append(newest + max(0, self._drained.get(p, at) - at))
            elif p in self._drained:
                times.append(self._drained[p])
            else:
                return None
        return min(times) if times else None


@dataclass
class Feed:
    silent: int  # devices that fell silent together
    reporting: int  # devices that were reporting before
    shown_by: list[int]  # a series of each


@dataclass
class Silences:
    devices: list[tuple[int, int]] = field(default_factory=list)  # (its most frequent series, metrics)
    metrics: list[int] = field(default_factory=list)  # series silent while their device reports
    feed: Feed | None = None


class Silence:
    """Who fell silent, once per silence; the detector keeps each series' flag."""

    def __init__(self, *, mass_share: float, mass_min_devices: int) -> None:
        self._mass_share = mass_share
        self._mass_min = mass_min_devices
        self._with_feed: set[int] = set()  # series flagged silent by a feed-wide silence

    def judge(self, detector: Detector, series: SeriesIndex, now_us: int) -> Silences:
        count = len(series)
        self._release(detector, count)
        devices_reporting = int(np.unique(series.devices()[detector.reporting(count)]).size)
        newly = detector.stale(count, now_us)
        out = Silences()
        silent: dict[int, int] = {}  # device -> the series that showed it
        for sid in newly.tolist():
            siblings = series.siblings(sid)
            device_gap_s = (now_us - max(detector.last_ts(x) for x in siblings)) * 1e-6
            if device_gap_s >= detector.stale_limit_s(sid):
                silent.setdefault(series.device(sid), sid)
            else:
                out.metrics.append(sid)
        if silent and len(silent) >= max(self._mass_min, self._mass_share * devices_reporting):
            every = np.array([x for sid in silent.values() for x in series.siblings(sid)], np.int64)
            # Not the metrics already silent on their own before: they were alerted on then.
            quiet = every[(detector.silent_flags(every) == 0.0) | np.isin(every, newly)]
            detector.mark_silent(quiet, WITH_FEED)
            self._with_feed.update(quiet.tolist())
            out.feed = Feed(len(silent), devices_reporting, list(silent.values()))
            return out
        for sid in silent.values():
            of_device: I64 = np.array(series.siblings(sid), np.int64)
            # One alert for the device: its slower metrics must not alert on their own later.
            detector.mark_silent(of_device, ALONE)
            intervals = [detector.interval_s(x) or np.inf for x in of_device.tolist()]
            out.devices.append((int(of_device[int(np.argmin(intervals))]), len(of_device)))
        return out

    def _release(self, detector: Detector, count: int) -> None:
        """Once most of the series silenced with the feed report again, the feed is back: the
        rest are silent on their own, and are judged again now."""
        if not self._with_feed:
            return
        quiet: I64 = np.fromiter(self._with_feed, np.int64)
        quiet = quiet[quiet < count]
        still = quiet[detector.silent_flags(quiet) == WITH_FEED]
        if still.size <= (1.0 - self._mass_share) * quiet.size:
            detector.mark_silent(still, 0.0)
            self._with_feed.clear()

    def forget(self, series: I64) -> None:
        self._with_feed.difference_update(series.tolist())
