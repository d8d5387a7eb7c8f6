"""Throughput and memory of the stream tier's anomaly detectors, against the obvious alternatives.

What is measured, in one run, best of ``--repeats`` for every figure (the cores are shared and
noisy: the best repeat is the one least disturbed):

- the project's detectors, ``stream.detectors.Detector.update`` (one fused Numba kernel over a
  state row per series), on one thread: ``detect_kernel`` is compiled without ``parallel``, so
  NUMBA_NUM_THREADS does not matter and readings/s is readings/s per core (the run also reports
  CPU seconds per wall second to show it). Workload: ``--series`` interleaved series (100,000),
  batches of ``--batch`` readings (10,000) in random series order, each series a daily sine plus
  noise with occasional spikes and level shifts, some quantised and some stuck, its timestamps
  advancing by its own interval. The detectors are warmed past their warm-up (and the JIT
  compiled) before anything is timed. Profiles: the default one (every per-reading detector:
  ewma, robust, cusum, roc, flatline), each of those alone, the default plus the time-of-day
  baseline, the default plus limits; and the default profile with smaller and larger batches.
  The time spent inside ``detect_kernel`` itself is also measured (by wrapping the module's
  kernel for the duration), so the wrapper's share shows.
- ``PurePythonDetector``: the same detector written straightforwardly in Python, one reading at
  a time, a dict of per-series state objects; it follows ``detect_kernel``'s whole recurrence
  (every detector, the Bonferroni score, the episodes) with the exact Gaussian tail, and
  doubles as the kernel's reference in tests/benchmarks/test_detector_speed.py. Timed with the
  default profile on a smaller workload (2,000 series, 200,000 readings after the warm-up).
- pandas: the obvious offline way to get a rolling z-score per series: one DataFrame of the
  interleaved readings, ``groupby(series).rolling(window).mean()/.std()`` (and the same with
  ``ewm``), each reading judged against its series' window before it. This computes one z-score
  per reading, far less than the detectors do, and it is batch/offline: it needs each series'
  whole history in one frame, and scoring a new batch means recomputing (or keeping windows by
  hand). pandas' cost is per group, so it runs on the first 10,000 series' first 60 readings.
- river: ``river.anomaly.HalfSpaceTrees`` (10 trees of height 8, window 250, the defaults), one
  model per series (its own ``limits`` from the series' range), ``score_one`` then
  ``learn_one`` per reading of 100 interleaved series (river's own per-reading cost; a model per
  series for 100,000 series would not fit the time or memory). A different detector (a
  streaming isolation forest): what is compared is the cost per reading of an incremental
  Python-level detector library.
- memory: ``Detector.nbytes`` per series, with and without the time-of-day bins, and the
  resident memory actually taken by one million series (``--memory-series``): the RSS before
  and after a batch touching every series, in a fresh process with freed heap returned to the
  system first (read from /proc/self/statm; getrusage's peak, or the arrays' nbytes, where
  that does not exist).

The speed-ups divide the default profile's readings/s (100,000 series) by the alternative's.
Targets (reported, not asserted): 10 M readings/s per core for the default profile; one million
series in under 1 GiB.

    python -m benchmarks.detector_speed [--series 100000] [--batch 10000] [--repeats 5] [--quick]

Prints a table, then every figure on a line of its own as ``name: value unit``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import dataclasses
import gc
import math
import multiprocessing
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import numba
import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from benchmarks._figures import Figure
from stream import detectors as det
from stream.detectors import BOOL, F64, I64, Detector, DetectorConfig, Kind
from stream.profiles import DECADES, Profile

console = Console(stderr=True)

TIMEZONE = "Europe/Amsterdam"  # the project's (stream/profiles.toml)
T0_US = 1_795_000_000_000_000  # 2026-11-19
CORE = ("ewma", "robust", "cusum", "roc", "flatline")  # the per-reading windowed detectors
LIMITS = {
    "physical_low": -1_000.0,
    "physical_high": 10_000.0,
    "limit_low": -50.0,
    "limit_high": 550.0,
    "limit_window_s": 600.0,
}
TARGET_READINGS_PER_S = 10e6
TARGET_MILLION_SERIES_GIB = 1.0
GIB = float(1 << 30)


# -- workload ----------------------------------------------------------------------------------


class Batch(NamedTuple):
    series: I64
    ts_us: I64
    values: F64

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def slices(self, size: int) -> Iterator[Batch]:
        for i in range(0, len(self), size):
            yield Batch(self.series[i : i + size], self.ts_us[i : i + size], self.values[i : i + size])

    def where(self, keep: BOOL) -> Batch:
        return Batch(self.series[keep], self.ts_us[keep], self.values[keep])


@dataclass(frozen=True)
class Workload:
    """Synthetic city sensors. Series ``s`` reads ``level + amp sin(2 pi t / period + phase) +
    noise N(0, 1)``, plus a level shift from round ``shift_round`` on, plus a spike (6 to 20
    spreads) on one reading in a thousand; 20 % are quantised to a resolution and 2 % are stuck
    at one value. The stream comes in rounds: each round has one reading of every series, in
    random order, at the series' own interval (10 s to 5 min, jittered) after its previous one."""

    seed: int
    level: F64
    amp: F64
    noise: F64
    period_s: F64
    phase: F64
    step: F64  # quantisation (0: none)
    interval_us: I64
    offset_us: I64
    shift_round: I64
    shift: F64
    spike_rate: float = 1e-3
    t0_us: int = T0_US

    @classmethod
    def make(cls, series: int, seed: int = 0, horizon: int = 200, t0_us: int = T0_US) -> Workload:
        """``series`` series from ``t0_us`` on; a quarter of them shift level within ``horizon`` rounds."""
        rng = np.random.default_rng(seed)
        level = rng.uniform(0.0, 500.0, series)
        amp = rng.uniform(0.01, 0.2, series) * level + 0.1
        noise = rng.uniform(0.01, 0.1, series) * amp + 0.01
        stuck = rng.random(series) < 0.02
        amp[stuck] = 0.0
        noise[stuck] = 0.0
        period_s = np.where(rng.random(series) < 0.8, 86_400.0, rng.uniform(600.0, 7_200.0, series))
        step = np.where(rng.random(series) < 0.2, rng.choice([0.1, 0.5, 1.0], series), 0.0)
        interval_us = rng.choice(np.array([10, 30, 60, 300], np.int64), series) * 1_000_000
        scale = np.maximum(noise, 0.01 * level + 0.01)
        return cls(
            seed=seed,
            level=level,
            amp=amp,
            noise=noise,
            period_s=period_s,
            phase=rng.uniform(0.0, 2 * math.pi, series),
            step=step,
            interval_us=interval_us,
            offset_us=rng.integers(0, interval_us),
            shift_round=rng.integers(horizon // 2, 4 * horizon + 1, series),
            shift=rng.choice([-1.0, 1.0], series) * rng.uniform(5.0, 15.0, series) * scale,
            t0_us=t0_us,
        )

    @property
    def series(self) -> int:
        return int(self.level.shape[0])

    def subset(self, series: int) -> Workload:
        """The first ``series`` series (each round in its own random order)."""
        arrays = {
            f: getattr(self, f)[:series] for f in self.__dataclass_fields__ if f not in ("seed", "spike_rate", "t0_us")
        }
        return dataclasses.replace(self, **arrays)

    def limits(self, sid: int) -> tuple[float, float]:
        """A range the series' readings stay in (spikes and shifts aside)."""
        half = self.amp[sid] + 6.0 * self.noise[sid] + 1.0
        return float(self.level[sid] - half), float(self.level[sid] + half)

    def round(self, r: int) -> Batch:
        rng = np.random.default_rng((self.seed, r))
        s = rng.permutation(self.series).astype(np.int64)
        interval = self.interval_us[s]
        jitter = (rng.random(s.shape[0]) * 0.05 * interval).astype(np.int64)
        ts = self.t0_us + self.offset_us[s] + r * interval + jitter
        t = ts * 1e-6
        x = self.level[s] + self.amp[s] * np.sin(2 * math.pi * t / self.period_s[s] + self.phase[s])
        x += self.noise[s] * rng.standard_normal(s.shape[0])
        x += np.where(r >= self.shift_round[s], self.shift[s], 0.0)
        spikes = np.flatnonzero(rng.random(s.shape[0]) < self.spike_rate)
        scale = np.maximum(self.noise[s[spikes]], 0.01 * self.level[s[spikes]] + 0.01)
        x[spikes] += rng.choice([-1.0, 1.0], spikes.shape[0]) * rng.uniform(6.0, 20.0, spikes.shape[0]) * scale
        q = self.step[s] > 0
        x[q] = np.round(x[q] / self.step[s][q]) * self.step[s][q]
        return Batch(s, ts, x)

    def stream(self, rounds: range) -> Batch:
        parts = [self.round(r) for r in rounds]
        return Batch(*(np.concatenate([p[k] for p in parts]) for k in range(3)))


def config(**defaults: Any) -> DetectorConfig:
    return DetectorConfig.parse({"timezone": TIMEZONE, "defaults": defaults})


# -- the detector in pure Python: the reference ----------------------------------------------------

EWMA, ROBUST, CUSUM, ROC, FLATLINE, TOD, LIMIT, PHYSICAL, SPATIAL = (int(k) for k in list(Kind)[:9])
_LN10 = math.log(10.0)
_SQRT2 = math.sqrt(2.0)
_SQRTPI = math.sqrt(math.pi)
_MAD_TO_SD = 1.4826  # MAD of a normal distribution is 0.6745 sd
_ABS_TO_SD = math.sqrt(math.pi / 2)  # its mean absolute deviation is 0.7979 sd
_LOG10_HALF = math.log10(0.5)
_FLOOR = -DECADES
HUGE = 1e100  # beyond any physical quantity (the kernel's _HUGE)


def log10_tail(z: float) -> float:
    """log10 P(|Z| >= z) for a standard normal Z (exact: no table)."""
    z = abs(z)
    if z < 30.0:
        return math.log10(math.erfc(z / _SQRT2))
    u = z / _SQRT2
    return (-u * u - math.log(u * _SQRTPI)) / _LN10


def alpha(dt: float, window: float, window_s: float) -> float:
    """EWMA weight of a reading: by count, or by the time it covers."""
    if window_s > 0.0:
        return 1.0 - math.exp(-2.0 * dt / window_s)
    return 2.0 / (window + 1.0)


def clamp(x: float, low: float, high: float) -> float:
    return min(max(x, low), high)


@dataclass(slots=True)
class SeriesState:
    """One series' state: what a row of ``Detector.state`` holds, by name (the column of
    ``name`` is ``stream.detectors.NAME``)."""

    n: float = 0.0  # readings folded in
    last_ts: float = 0.0
    last_x: float = 0.0
    dt: float = 0.0  # usual interval (s)
    mean: float = 0.0  # fast EWMA mean, and its mean absolute residual
    dev: float = 0.0
    med: float = 0.0  # streaming median and MAD
    mad: float = 0.0
    smean: float = 0.0  # long baseline, readings since it restarted; CUSUM sums
    svar: float = 0.0
    sn: float = 0.0
    cpos: float = 0.0
    cneg: float = 0.0
    dvar: float = 0.0  # variance of changes
    eq: float = 0.0  # rate of repeated values, current run of them
    run: float = 0.0
    lmean: float = 0.0  # limit mean
    quiet: float = 0.0  # readings into the episode's quiet tail (-1: no episode)
    alarm_ts: float = 0.0
    stale: float = 0.0
    lo: float = 0.0  # the range of the series' history
    hi: float = 0.0
    ne: float = 0.0  # anomaly likelihood of the EWMA channel: count, short mean; long mean, var
    es_e: float = 0.0
    me_e: float = 0.0
    ve_e: float = 0.0
    nt: float = 0.0  # ... of the time-of-day channel
    es_t: float = 0.0
    me_t: float = 0.0
    ve_t: float = 0.0
    tod: list[float] = field(default_factory=list)  # (mean, var, n) per time-of-day bin


# SeriesState's fields -> columns of Detector.state (a field the kernel lacks maps to -1).
STATE_COLUMNS = {f: int(getattr(det, f.upper(), -1)) for f in SeriesState.__dataclass_fields__ if f != "tod"}


class Scoring(NamedTuple):
    score: float
    alarm: bool
    fired: int
    top: int
    baseline: float
    spread: float


UNSCORED = Scoring(0.0, False, 0, -1, math.nan, math.nan)


class PurePythonDetector:
    """``detect_kernel``'s recurrence, one reading at a time, over a dict of ``SeriesState``.

    The kernel interpolates the Gaussian tail from a table (error below 1e-4 decades, 1e-5 in
    a score); this takes the exact one unless given another ``tail``."""

    def __init__(self, cfg: DetectorConfig | None = None, tail: Callable[[float], float] = log10_tail) -> None:
        self.config = cfg or DetectorConfig()
        self.tail = tail  # log10 of the Gaussian tail: exact by default
        self.zone = ZoneInfo(self.config.timezone)
        self.states: dict[int, SeriesState] = {}
        self.bound: dict[int, Profile] = {}

    def bind(self, sid: int, kind: str, metric: str) -> None:
        self.bound[sid] = self.config.profile(kind, metric)

    def utc_offset_s(self, ts_us: int) -> float:
        offset = datetime.fromtimestamp(ts_us / 1e6, UTC).astimezone(self.zone).utcoffset()
        return offset.total_seconds() if offset is not None else 0.0

    def update(
        self, series: Sequence[int], ts_us: Sequence[int], values: Sequence[float], feed: Sequence[bool] | None = None
    ) -> list[Scoring]:
        """Score a batch like ``Detector.update``."""
        feed = feed if feed is not None else [True] * len(values)
        local = self.config.default.tod or any(p.tod for p in self.config.overrides.values())
        return [
            self.score_one(int(s), int(t), float(x), self.utc_offset_s(int(t)) if local else 0.0) if f else UNSCORED
            for s, t, x, f in zip(series, ts_us, values, feed, strict=True)
        ]

    def state_matrix(self, rows: int) -> F64:
        """The states as ``Detector.state`` lays them out (series never seen: zeros)."""
        out = np.zeros((rows, det.NSTATE))
        for sid, st in self.states.items():
            for name, col in STATE_COLUMNS.items():
                out[sid, col] = getattr(st, name)
        return out

    def upper_tail(self, z: float) -> float:
        """log10 P(Z >= z): one-sided."""
        return _LOG10_HALF if z <= 0.0 else self.tail(z) + _LOG10_HALF

    def score_one(self, sid: int, ts_us: int, x: float, utc_offset_s: float = 0.0) -> Scoring:
        """Score one reading against its series' state before it, then fold it in (the local
        time of day, for the time-of-day baseline, is UTC + ``utc_offset_s``)."""
        if not math.isfinite(x):
            return UNSCORED
        p = self.bound.get(sid, self.config.default)
        st = self.states.get(sid)
        if st is None:
            st = self.states[sid] = SeriesState(tod=[0.0] * (3 * p.tod_bins) if p.tod else [])
        t = float(ts_us)
        if abs(x) > HUGE:  # no sensor reads this: flagged, kept out of the statistics
            alarm = st.quiet < 0.0 or st.n == 0.0
            if alarm:
                st.quiet, st.alarm_ts = 0.0, t
            return Scoring(1.0, alarm, 1 << PHYSICAL, PHYSICAL, math.nan, math.nan)
        n = st.n
        if n == 0.0:  # the first reading (or the first since a reset): every statistic starts at it
            st = self.states[sid] = SeriesState(
                last_ts=t,
                last_x=x,
                mean=x,
                med=x,
                smean=x,
                eq=0.5,
                lmean=x,
                quiet=-1.0,
                alarm_ts=-1e18,
                lo=x,
                hi=x,
                tod=st.tod,
            )
        warm = n >= p.warmup
        dt = max(0.0, (t - st.last_ts) * 1e-6)
        # Early on every average is a plain cumulative mean.
        a = max(alpha(dt, p.window, p.window_s), 1.0 / (n + 1.0))
        a_slow = max(alpha(dt, p.slow_window, p.slow_window_s), 1.0 / (st.sn + 1.0))
        floor = max(p.resolution, p.min_spread * abs(st.smean), 1e-9)
        clip = p.clip
        sd = max(_ABS_TO_SD * st.dev, floor)
        rsd = max(_MAD_TO_SD * st.mad, floor)
        ssd = max(math.sqrt(st.svar), floor)
        dsd = max(math.sqrt(st.dvar), floor) if p.roc else floor

        # Certainties score 1: an impossible value, a limit, a new extreme, an impossible rate.
        certain = -1
        if x < p.physical_low or x > p.physical_high:
            certain = PHYSICAL
        lim_x = x
        if n > 0.0 and p.limit_window_s > 0.0:
            lim_x = st.lmean + alpha(dt, 0.0, p.limit_window_s) * (x - st.lmean)
        if certain < 0 and (lim_x < p.limit_low or lim_x > p.limit_high):
            certain = LIMIT
        # The statistical detectors' evidence: |z| (Gaussian tail) or log10 p, by Kind.
        z = [0.0] * 8
        lp = [0.0] * 8
        looked = 0
        dx = x - st.last_x
        if warm:
            if certain < 0 and p.spatial:
                margin = p.spatial_tolerance * (st.hi - st.lo)
                if (st.hi > st.lo and (x > st.hi + margin or x < st.lo - margin)) or (st.hi == st.lo and x != st.hi):
                    certain = SPATIAL
            if p.ewma:
                z[EWMA] = abs(x - st.mean) / sd
                looked += 1
            if p.robust:
                z[ROBUST] = abs(x - st.med) / rsd
                looked += 1
            if p.cusum and st.sn >= p.warmup:
                zc = clamp((x - st.smean) / ssd, -clip, clip)
                k = p.cusum_drift
                st.cpos = max(0.0, st.cpos + zc - k)
                st.cneg = max(0.0, st.cneg - zc - k)
                lp[CUSUM] = max(_FLOOR, -2.0 * k * max(st.cpos, st.cneg) / _LN10)  # Siegmund
                looked += 1
            if p.roc:
                z[ROC] = abs(dx) / dsd
                if certain < 0 and dt > 0.0 and abs(dx) > p.max_rate * dt:
                    certain = ROC
                looked += 1
            if p.flatline:
                if abs(dx) <= p.flatline_eps and st.run + 1.0 >= p.flatline_min_run:
                    # Runs of identical readings are geometric with the series' usual rate.
                    lp[FLATLINE] = max(_FLOOR, (st.run + 1.0) * math.log10(clamp(st.eq, 1e-3, 0.999)))
                looked += 1
        bins = p.tod_bins
        use_tod = p.tod and bool(st.tod)
        i = 0  # the reading's time-of-day bin: (mean, var, n) at st.tod[i : i + 3]
        tsd = floor
        tod_warm = False
        if use_tod:
            i = 3 * (int(((t * 1e-6 + utc_offset_s) % 86400.0) * bins / 86400.0) % bins)
            tod_warm = st.tod[i + 2] >= p.tod_warmup
            tsd = max(math.sqrt(st.tod[i + 1]), p.tod_floor * ssd, floor)
            if warm and tod_warm:
                z[TOD] = abs(x - st.tod[i]) / tsd
                if not p.likelihood:
                    looked += 1
        if p.likelihood and warm:
            # Anomaly likelihood: the capped z averaged over a few readings, against the long-run
            # distribution of that average (one-sided), per channel.
            if p.ewma:
                st.ne, st.es_e, st.me_e, st.ve_e, lp[EWMA] = self.likelihood(
                    z[EWMA], p.ewma_cap, p.ewma_short, p.likelihood_window, st.ne, st.es_e, st.me_e, st.ve_e
                )
            if use_tod:
                st.nt, st.es_t, st.me_t, st.ve_t, lp[TOD] = self.likelihood(
                    z[TOD], p.tod_cap, p.tod_short, p.likelihood_window, st.nt, st.es_t, st.me_t, st.ve_t
                )
                looked += 1

        # The strongest evidence: the largest |z| of the Gaussian detectors (EWMA and TOD only
        # without the likelihood), then any smaller log10 p, in the kernel's order.
        gaussian = (ROBUST, ROC) if p.likelihood else (EWMA, ROBUST, ROC, TOD)
        best, best_k, zmax = 0.0, -1, 0.0
        for k in gaussian:
            if z[k] > zmax:
                zmax, best_k = z[k], k
        if best_k >= 0:
            best = self.tail(zmax)
        for k in (EWMA, TOD, CUSUM, FLATLINE):
            if lp[k] < best:
                best, best_k = lp[k], k
        # Bonferroni over the statistical detectors that looked.
        correction = math.log10(looked) if looked > 1 else 0.0
        cut = -p.threshold * DECADES - correction
        fired = 0
        if certain >= 0:
            score, best_k, fired = 1.0, certain, 1 << certain
        else:
            score = clamp(-(best + correction) / DECADES, 0.0, 1.0)
        if best <= cut:
            for k in (EWMA, ROBUST, CUSUM, ROC, FLATLINE, TOD):
                if lp[k] <= cut or (k in gaussian and z[k] > 0.0 and self.tail(z[k]) <= cut):
                    fired |= 1 << k
        baseline, spread = {
            ROBUST: (st.med, rsd),
            CUSUM: (st.smean, ssd),
            ROC: (st.last_x, dsd),
            FLATLINE: (st.last_x, 0.0),
            TOD: (st.tod[i] if use_tod else 0.0, tsd),
            LIMIT: (p.limit_low if lim_x < p.limit_low else p.limit_high, 0.0),
            PHYSICAL: (p.physical_low if x < p.physical_low else p.physical_high, 0.0),
            SPATIAL: (st.lo if x < st.lo else st.hi, st.hi - st.lo),
        }.get(best_k, (st.mean, sd))

        # One alarm per episode.
        if st.quiet >= 0.0:
            st.quiet = st.quiet + 1.0 if score < 0.5 * p.threshold else 0.0
            if st.quiet >= p.refractory and (t - st.alarm_ts) * 1e-6 >= p.refractory_s:
                st.quiet = -1.0
        alarm = False
        if score >= p.threshold:
            if st.quiet < 0.0:
                alarm = True
                st.alarm_ts = t
                st.quiet = 0.0
            if fired & (1 << CUSUM):  # a level shift: judge what follows against the new level
                st.cpos = st.cneg = st.sn = 0.0
                st.med = x

        # Fold the reading in; once warm, outliers enter clipped.
        if n > 0.0:
            r = clamp(x - st.mean, -clip * sd, clip * sd) if warm else x - st.mean
            st.dev += max(alpha(dt, p.spread_window, p.spread_window_s), 1.0 / n) * (abs(r) - st.dev)
            st.mean += a * r
            xs = clamp(x, st.smean - clip * ssd, st.smean + clip * ssd) if warm and st.sn >= p.warmup else x
            if st.sn == 0.0:
                st.smean = xs  # restart the reference at the new level
            else:
                d = xs - st.smean
                st.smean += a_slow * d
                st.svar = (1.0 - a_slow) * (st.svar + a_slow * d * d)
            st.lo, st.hi = min(st.lo, x), max(st.hi, x)
            if p.roc:
                dxf = clamp(dx, -clip * dsd, clip * dsd) if warm else dx
                st.dvar += a * (dxf * dxf - st.dvar)
            if p.flatline:
                same = abs(dx) <= p.flatline_eps
                st.eq += a_slow * (float(same) - st.eq)
                st.run = st.run + 1.0 if same else 0.0
            st.dt = dt if n == 1.0 else st.dt + a * (dt - st.dt)
        st.sn += 1.0
        if p.robust and warm:  # stochastic approximation of the median and the MAD
            d = x - st.med
            st.med += a * rsd if d > 0.0 else (-a * rsd if d < 0.0 else 0.0)
            dm = abs(d) - st.mad
            st.mad += a * max(st.mad, floor) if dm > 0.0 else (-a * st.mad if dm < 0.0 else 0.0)
        elif p.robust:  # warming up: the mean, and the mean absolute deviation
            st.med = st.mean
            st.mad += a * (0.845 * abs(x - st.mean) - st.mad)
        if use_tod:
            mean, var, count = st.tod[i : i + 3]
            at = max(1.0 - math.exp(-dt / (p.tod_days * 86400.0 / bins)), 1.0 / (count + 1.0))
            d = clamp(x - mean, -clip * tsd, clip * tsd) if tod_warm else x - mean
            st.tod[i : i + 3] = [mean + at * d, (1.0 - at) * (var + at * d * d), count + 1.0]
        st.n = n + 1.0
        st.last_ts = max(st.last_ts, t)
        st.last_x = x
        st.lmean = lim_x
        st.stale = 0.0
        return Scoring(score, alarm, fired, best_k, baseline, spread)

    def likelihood(
        self, z: float, cap: float, short: float, window: int, n: float, es: float, me: float, ve: float
    ) -> tuple[float, float, float, float, float]:
        """One channel of the anomaly likelihood: (n, short mean, long mean, long var, log10 p)."""
        e = min(z, cap) / cap
        es = e if n == 0.0 else es + (e - es) / short
        lp = self.upper_tail((es - me) / max(math.sqrt(ve), 1e-3)) if n >= 1.0 else 0.0
        a = max(alpha(0.0, window, 0.0), 1.0 / (n + 1.0))
        d = es - me
        me += a * d
        ve = (1.0 - a) * (ve + a * d * d)
        return n + 1.0, es, me, ve, lp


# -- pandas ------------------------------------------------------------------------------------


def pandas_rolling_z(frame: pd.DataFrame, window: int, min_periods: int) -> pd.Series:
    """|z| of every reading against the mean and std of its series' previous ``window`` readings
    (NaN until ``min_periods``), in the frame's order. Offline: needs every series' history."""
    # pandas is batch/offline, not incremental: every call recomputes every window from the
    # whole history in the frame; a stream would have to keep each series' last `window`
    # readings and re-run this per batch.
    roll = frame.groupby("series", sort=False)["value"].rolling(window, min_periods=min_periods)
    stats = pd.DataFrame({"mean": roll.mean(), "std": roll.std()}).droplevel(0).sort_index()
    before = stats.groupby(frame["series"], sort=False).shift(1)  # the window before the reading
    return ((frame["value"] - before["mean"]) / before["std"]).abs()


def pandas_ewm_z(frame: pd.DataFrame, window: int, min_periods: int) -> pd.Series:
    """The same with exponentially weighted mean and std (span ``window``)."""
    ewm = frame.groupby("series", sort=False)["value"].ewm(span=window, min_periods=min_periods)
    stats = pd.DataFrame({"mean": ewm.mean(), "std": ewm.std()}).droplevel(0).sort_index()
    before = stats.groupby(frame["series"], sort=False).shift(1)
    return ((frame["value"] - before["mean"]) / before["std"]).abs()


# -- measurement -------------------------------------------------------------------------------


@dataclass
class Timing:
    readings: int
    wall_s: float  # best repeat
    cpu_per_wall: float  # of the best repeat
    kernel_s: float = math.nan  # time inside detect_kernel in the best repeat (when measured)

    @property
    def rate(self) -> float:
        return self.readings / self.wall_s


@dataclass(frozen=True)
class Plan:
    """Sizes of everything, from the command line."""

    series: int
    batch: int
    batches: tuple[int, ...]  # batch sizes for the sensitivity figures (besides ``batch``)
    repeats: int
    warm_rounds: int
    timed_readings: int
    python_series: int
    python_readings: int
    pandas_series: int
    pandas_rounds: int
    river_series: int
    river_readings: int  # per series
    memory_series: int
    slow_repeats: int  # for pure Python, pandas and river

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Plan:
        quick = bool(args.quick)
        series = args.series or (2_000 if quick else 100_000)
        batch = args.batch or (1_000 if quick else 10_000)
        repeats = args.repeats or (1 if quick else 5)
        return cls(
            series=series,
            batch=batch,
            batches=(100, 10_000) if quick else (1_000, 100_000),
            repeats=repeats,
            warm_rounds=Profile().warmup + 10,
            timed_readings=20_000 if quick else 500_000,
            python_series=min(series, 200 if quick else 2_000),
            python_readings=4_000 if quick else 200_000,
            pandas_series=min(series, 500 if quick else 10_000),
            pandas_rounds=60,
            river_series=10 if quick else 100,
            river_readings=30 if quick else 300,
            memory_series=args.memory_series or (20_000 if quick else 1_000_000),
            slow_repeats=min(repeats, 1 if quick else 3),
        )


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def best_of(repeats: int, prepare: Callable[[], None], run: Callable[[], object]) -> tuple[float, float]:
    """(best wall seconds, CPU seconds per wall second of that repeat) of ``run``."""
    best, ratio = math.inf, math.nan
    for _ in range(repeats):
        prepare()
        with no_gc():
            w0, c0 = time.perf_counter(), time.process_time()
            run()
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        if wall < best:
            best, ratio = wall, cpu / wall
    return best, ratio


class KernelClock:
    """Wraps ``stream.detectors.detect_kernel`` (which ``Detector.update`` looks up at each call)
    to add up the time spent inside it."""

    def __init__(self) -> None:
        self.seconds = 0.0

    @contextlib.contextmanager
    def installed(self) -> Iterator[KernelClock]:
        kernel = det.detect_kernel

        def timed(*args: Any) -> Any:
            t0 = time.perf_counter()
            result = kernel(*args)
            self.seconds += time.perf_counter() - t0
            return result

        det.detect_kernel = timed  # type: ignore[assignment]
        try:
            yield self
        finally:
            det.detect_kernel = kernel


def feed(detector: Detector, data: Batch, batch: int) -> None:
    for b in data.slices(batch):
        detector.update(b.series, b.ts_us, b.values)


def time_detector(
    cfg: DetectorConfig, warm: Batch, timed: Batch, batches: Sequence[int], repeats: int, series: int
) -> dict[int, Timing]:
    """Throughput of ``Detector.update`` per batch size, every repeat from the same warmed state."""
    detector = Detector(cfg, capacity=series)
    feed(detector, warm, max(batches))  # past the warm-up; compiles the kernel on first use
    state, tod = detector.state.copy(), detector.tod.copy()

    def restore() -> None:
        np.copyto(detector.state, state)
        np.copyto(detector.tod, tod)

    out: dict[int, Timing] = {}
    for size in batches:
        clock = KernelClock()
        best_kernel = math.inf

        def run(size: int = size, clock: KernelClock = clock) -> None:
            clock.seconds = 0.0
            with clock.installed():
                feed(detector, timed, size)

        best, ratio = math.inf, math.nan
        for _ in range(repeats):
            wall, r = best_of(1, restore, run)
            best_kernel = min(best_kernel, clock.seconds)
            if wall < best:
                best, ratio = wall, r
        out[size] = Timing(len(timed), best, ratio, best_kernel)
    return out


def time_pure_python(work: Workload, plan: Plan) -> Timing:
    warm = work.stream(range(plan.warm_rounds))
    rounds = math.ceil(plan.python_readings / work.series)
    timed = work.stream(range(plan.warm_rounds, plan.warm_rounds + rounds))
    ids, ts, xs = timed.series.tolist(), timed.ts_us.tolist(), timed.values.tolist()
    ref = PurePythonDetector(config())
    ref.update(warm.series.tolist(), warm.ts_us.tolist(), warm.values.tolist())
    warmed = copy.deepcopy(ref.states)

    def restore() -> None:
        ref.states = copy.deepcopy(warmed)

    def run() -> None:
        score = ref.score_one
        offset = ref.utc_offset_s(ts[-1])
        for s, t, x in zip(ids, ts, xs, strict=True):
            score(s, t, x, offset)

    wall, ratio = best_of(plan.slow_repeats, restore, run)
    return Timing(len(ids), wall, ratio)


def time_pandas(work: Workload, plan: Plan, how: Callable[[pd.DataFrame, int, int], pd.Series]) -> Timing:
    data = work.subset(plan.pandas_series).stream(range(plan.pandas_rounds))
    frame = pd.DataFrame({"series": data.series, "ts_us": data.ts_us, "value": data.values})
    p = Profile()
    wall, ratio = best_of(plan.slow_repeats, lambda: None, lambda: how(frame, p.window, p.warmup))
    return Timing(len(frame), wall, ratio)


def time_river(work: Workload, plan: Plan) -> Timing:
    from river.anomaly import HalfSpaceTrees

    data = work.subset(plan.river_series).stream(range(plan.river_readings + 1))
    ids, xs = data.series.tolist(), data.values.tolist()
    first = len(ids) - plan.river_series * plan.river_readings  # one reading each builds the trees
    models: list[HalfSpaceTrees] = []

    def prepare() -> None:
        models[:] = [HalfSpaceTrees(limits={"x": work.limits(s)}, seed=s) for s in range(plan.river_series)]
        for s, x in zip(ids[:first], xs[:first], strict=True):
            models[s].learn_one({"x": x})

    def run() -> None:
        for s, x in zip(ids[first:], xs[first:], strict=True):
            model, features = models[s], {"x": x}
            model.score_one(features)
            model.learn_one(features)

    wall, ratio = best_of(plan.slow_repeats, prepare, run)
    return Timing(len(ids) - first, wall, ratio)


def rss_bytes() -> int | None:
    """Resident memory of this process now (Linux), else None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def release_free_memory() -> None:
    """Give freed heap back to the system (glibc), so that reusing it shows in the RSS."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@dataclass
class Memory:
    nbytes_per_series: float
    measured_per_series: float
    how: str


def measure_memory(cfg: DetectorConfig, series: int) -> Memory:
    """State of ``series`` series, allocated by one batch that touches every one of them."""
    data = Workload.make(series, seed=7).round(0)
    warm = Detector(cfg)  # the kernel loaded and the allocator warm before measuring
    warm.update(data.series[:100] % 100, data.ts_us[:100], data.values[:100])
    del warm
    release_free_memory()
    before, peak_before = rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    detector = Detector(cfg)
    detector.update(data.series, data.ts_us, data.values)
    release_free_memory()  # the batch's outputs and temporaries
    after, peak_after = rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert detector.state.shape[0] >= series
    nbytes = detector.nbytes / series
    if before is not None and after is not None:
        measured, how = (after - before) / series, "RSS delta (/proc/self/statm)"
    elif peak_after > peak_before:
        measured, how = (peak_after - peak_before) * 1024 / series, "peak RSS delta (getrusage)"
    else:
        measured, how = nbytes, "arrays' nbytes"
    del detector
    gc.collect()
    return Memory(nbytes, measured, how)


def _memory_child(defaults: dict[str, Any], series: int) -> Memory:
    return measure_memory(config(**defaults), series)


def measure_memory_fresh(defaults: dict[str, Any], series: int) -> Memory:
    """``measure_memory`` in a new process: here, freed heap would hide new allocations."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_memory_child, defaults, series).result()


# -- the run -----------------------------------------------------------------------------------


def mrate(t: Timing) -> float:
    return t.rate / 1e6


def run(plan: Plan, out: Console | None = None) -> list[Figure]:
    if out is None:
        out = Console()
        if not out.is_terminal:
            out = Console(width=140)
    figures: list[Figure] = []

    def add(name: str, value: float, unit: str, note: str = "") -> None:
        figures.append(Figure(name, value, unit, note))

    work = Workload.make(plan.series, seed=1)
    sizes = (plan.batch, *(b for b in plan.batches if b != plan.batch))
    profiles: list[tuple[str, DetectorConfig, str]] = [
        ("detector_full_profile", config(), "default profile: ewma, robust, cusum, roc, flatline"),
        *((f"detector_{d}_only", config(**{c: c == d for c in CORE}), f"{d} alone") for d in CORE),
        ("detector_with_tod", config(tod=True), "default + time-of-day baseline"),
        ("detector_with_limits", config(**LIMITS), "default + physical and 10-min mean limits"),
    ]
    steps = ["workload", "memory", *(p[0] for p in profiles), "pure python", "pandas", "river"]
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[step]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    with progress:
        task = progress.add_task("detector speed", total=len(steps), step="")

        def step(name: str) -> None:
            progress.update(task, step=name)

        def done() -> None:
            progress.advance(task)

        step("workload")
        rounds = math.ceil(plan.timed_readings / plan.series)
        warm = work.stream(range(plan.warm_rounds))
        timed = work.stream(range(plan.warm_rounds, plan.warm_rounds + rounds))
        done()

        step("memory")
        plain = measure_memory_fresh({}, plan.memory_series)
        with_tod = measure_memory_fresh({"tod": True}, plan.memory_series)
        done()

        rates: dict[str, Timing] = {}
        for name, cfg, note in profiles:
            step(name)
            times = time_detector(
                cfg, warm, timed, sizes if name == "detector_full_profile" else (plan.batch,), plan.repeats, plan.series
            )
            rates[name] = times[plan.batch]
            add(name, mrate(times[plan.batch]), "M readings/s", note)
            if name == "detector_full_profile":
                full = times[plan.batch]
                for size in sizes[1:]:
                    add(f"detector_batch_{size}", mrate(times[size]), "M readings/s", "default profile")
            done()

        step("pure python")
        py = time_pure_python(Workload.make(plan.python_series, seed=2), plan)
        done()
        step("pandas")
        roll = time_pandas(work, plan, pandas_rolling_z)
        ewm = time_pandas(work, plan, pandas_ewm_z)
        done()
        step("river")
        hst = time_river(work, plan)
        done()

    n = plan.series
    add("kernel_readings_per_s_per_core", mrate(full), "M readings/s", f"Detector.update, {n:,} series, one thread")
    add("kernel_target_per_core", TARGET_READINGS_PER_S / 1e6, "M readings/s", "target")
    add("kernel_vs_target", full.rate / TARGET_READINGS_PER_S, "x", "")
    add("kernel_only_full_profile", full.readings / full.kernel_s / 1e6, "M readings/s", "time inside detect_kernel")
    add(
        "wrapper_overhead",
        100 * (1 - full.kernel_s / full.wall_s),
        "%",
        f"Detector.update around the kernel, batch {plan.batch:,}",
    )
    add("kernel_cpu_per_wall", full.cpu_per_wall, "x", "process CPU s per wall s while timing: one thread")
    add("pure_python", mrate(py), "M readings/s", f"{plan.python_series:,} series, same recurrence")
    add("speedup_vs_pure_python", full.rate / py.rate, "x")
    add("pandas_rolling", mrate(roll), "M readings/s", f"groupby.rolling mean/std z, {roll.readings:,} rows, offline")
    add("speedup_vs_pandas_rolling", full.rate / roll.rate, "x")
    add("pandas_ewm", mrate(ewm), "M readings/s", "groupby.ewm mean/std z, offline")
    add("speedup_vs_pandas_ewm", full.rate / ewm.rate, "x")
    add("river_hst", mrate(hst), "M readings/s", f"HalfSpaceTrees per series, {plan.river_series} series")
    add("speedup_vs_river_hst", full.rate / hst.rate, "x")
    million = 1_000_000
    add("state_bytes_per_series", plain.nbytes_per_series, "B", "Detector.nbytes / series")
    add("state_bytes_per_series_tod", with_tod.nbytes_per_series, "B", f"with {Profile().tod_bins} time-of-day bins")
    add("measured_bytes_per_series", plain.measured_per_series, "B", f"{plain.how}, {plan.memory_series:,} series")
    add("measured_bytes_per_series_tod", with_tod.measured_per_series, "B", with_tod.how)
    add("one_million_series", million * plain.measured_per_series / GIB, "GiB", "measured, default profile")
    add(
        "one_million_series_tod", million * with_tod.measured_per_series / GIB, "GiB", "measured, every series with tod"
    )
    add("one_million_series_target", TARGET_MILLION_SERIES_GIB, "GiB", "target")

    table = Table(title=f"Detector speed: {n:,} series, batches of {plan.batch:,}, best of {plan.repeats}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("note")
    for f in figures:
        table.add_row(f.name, f.text(), f.note)
    parallel = bool(det.detect_kernel.targetoptions.get("parallel", False))
    table.caption = (
        f"numba {numba.__version__}, NUMBA_NUM_THREADS={numba.get_num_threads()}, "
        f"detect_kernel parallel={parallel}: {'several threads' if parallel else 'one thread'}; "
        f"{os.cpu_count()} CPUs; Python {sys.version.split()[0]}"
    )
    out.print(table)
    for f in figures:
        print(f"{f.name}: {f.text()}")
    return figures


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--series", type=int, default=0, help="interleaved series (100,000)")
    parser.add_argument("--batch", type=int, default=0, help="readings per Detector.update (10,000)")
    parser.add_argument("--repeats", type=int, default=0, help="repeats per figure, best taken (5)")
    parser.add_argument("--memory-series", type=int, default=0, help="series to allocate (1,000,000)")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run: figures not meaningful)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[Figure]:
    return run(Plan.from_args(parse_args(argv)))


if __name__ == "__main__":
    main()
