"""Windowed anomaly detectors: Numba kernels over NumPy state arrays, behind typed wrappers.

State for every series (device x metric) lives in arrays indexed by a series id, so a whole
Kafka batch is scored in one kernel call with O(1) work per reading. Kernels are pure
functions of (state, batch) -> (new state, scores); the wrappers own the arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from numba import njit

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
BOOL = npt.NDArray[np.bool_]


@njit(cache=True, nogil=True)
def ewma_zscore_kernel(
    series: I64,
    values: F64,
    feed: BOOL,
    mean: F64,
    var: F64,
    count: I64,
    since_alarm: I64,
    alpha: float,
    warmup: int,
    threshold: float,
    clip: float,
    refractory: int,
    min_spread: float,
    scores: F64,
    baselines: F64,
    spreads: F64,
    alarms: BOOL,
) -> None:
    """Exponentially weighted mean/variance z-score, one pass in input order.

    ``alpha`` sets the window (about 2/alpha - 1 readings). Each reading is scored against the
    state *before* it, then folded in; once warmed up, the value folded in is clipped to
    ``mean +- clip * spread`` so that a spike does not inflate the spread that judges the next
    readings. An alarm needs ``|z| >= threshold`` and ``refractory`` readings since the series'
    previous alarm (one alarm per episode, not one per reading).

    A reading with ``feed[i]`` False (one already stored: a redelivery or a replay) is scored 0
    and leaves the state alone, so each reading moves the detector once.
    """
    for i in range(values.shape[0]):
        s = series[i]
        x = values[i]
        n = count[s]
        if not feed[i]:
            scores[i] = 0.0
            baselines[i] = mean[s]
            spreads[i] = np.sqrt(var[s])
            alarms[i] = False
            continue
        if n == 0:
            mean[s] = x
            var[s] = 0.0
            count[s] = 1
            since_alarm[s] = refractory
            scores[i] = 0.0
            baselines[i] = x
            spreads[i] = 0.0
            alarms[i] = False
            continue
        m = mean[s]
        sd = np.sqrt(var[s])
        floor = min_spread * (abs(m) + 1.0)
        eff = max(floor, sd)
        z = (x - m) / eff
        warmed = n >= warmup
        score = abs(z) if warmed else 0.0
        scores[i] = score
        baselines[i] = m
        spreads[i] = sd
        since_alarm[s] += 1
        if score >= threshold and since_alarm[s] > refractory:
            alarms[i] = True
            since_alarm[s] = 0
        else:
            alarms[i] = False
        folded = x
        if warmed:
            hi = m + clip * eff
            lo = m - clip * eff
            if folded > hi:
                folded = hi
            elif folded < lo:
                folded = lo
        d = folded - m
        inc = alpha * d
        mean[s] = m + inc
        var[s] = (1.0 - alpha) * (var[s] + d * inc)
        count[s] = n + 1


@dataclass(frozen=True)
class EwmaParams:
    alpha: float = 0.05
    warmup: int = 30
    threshold: float = 6.0
    clip: float = 4.0
    refractory: int = 20
    min_spread: float = 1e-3


@dataclass
class Scored:
    """Per-reading results of one batch, aligned with the input arrays."""

    scores: F64
    baselines: F64
    spreads: F64
    alarms: BOOL


class EwmaZScore:
    """EWMA z-score detector over many series; grows its state as new series appear."""

    name = "ewma_z"

    def __init__(self, params: EwmaParams = EwmaParams(), capacity: int = 1024) -> None:
        self.params = params
        self.mean = np.zeros(capacity, np.float64)
        self.var = np.zeros(capacity, np.float64)
        self.count = np.zeros(capacity, np.int64)
        self.since_alarm = np.zeros(capacity, np.int64)

    @property
    def window(self) -> int:
        return round(2.0 / self.params.alpha - 1.0)

    def _grow(self, needed: int) -> None:
        size = self.mean.shape[0]
        if needed <= size:
            return
        new = max(needed, size * 2)
        for name in ("mean", "var", "count", "since_alarm"):
            old = getattr(self, name)
            arr = np.zeros(new, old.dtype)
            arr[:size] = old
            setattr(self, name, arr)

    def is_cold(self, series: int) -> bool:
        """No reading of this series has been seen (since the process started)."""
        return series >= self.count.shape[0] or self.count[series] == 0

    def reset(self, series: I64) -> None:
        """Forget these series (their partition moved to another consumer); they warm up again."""
        series = series[series < self.count.shape[0]]
        self.count[series] = 0

    def update(self, series: I64, values: F64, feed: BOOL | None = None) -> Scored:
        """Score a batch (readings of each series in time order) and advance the state with the
        readings ``feed`` selects (all by default)."""
        n = values.shape[0]
        if feed is None:
            feed = np.ones(n, np.bool_)
        if n:
            self._grow(int(series.max()) + 1)
        out = Scored(np.empty(n), np.empty(n), np.empty(n), np.empty(n, np.bool_))
        p = self.params
        ewma_zscore_kernel(
            series,
            values,
            feed,
            self.mean,
            self.var,
            self.count,
            self.since_alarm,
            p.alpha,
            p.warmup,
            p.threshold,
            p.clip,
            p.refractory,
            p.min_spread,
            out.scores,
            out.baselines,
            out.spreads,
            out.alarms,
        )
        return out
