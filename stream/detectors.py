"""Windowed anomaly detectors: one Numba kernel over NumPy state, behind a typed wrapper.

State for every series (device x metric) is a row of a float64 matrix indexed by a series id,
so a whole Kafka batch is scored in one kernel call with O(1) work per reading, and a row is
a few cache lines however many detectors run. The kernel is a pure function of (state,
profiles, batch) -> (new state, scores); ``Detector`` owns the arrays.

Every detector turns its statistic into a tail probability p under the series' recent
behaviour (Gaussian tails for z-scores, Siegmund's approximation for CUSUM, a geometric law
for runs of identical readings); the reading's score is the smallest p, multiplied by the
number of detectors that looked (Bonferroni), as ``-log10(p) / DECADES`` in [0, 1]. Limits
score 1. A reading alarms when its score reaches the profile's threshold and the series has
not alarmed within the refractory period: one alarm per episode.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.typing.templates import Signature
from numba.extending import intrinsic

from stream.profiles import DECADES, MAX_TOD_BINS, PARAMS, DetectorConfig, Profile

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
BOOL = npt.NDArray[np.bool_]

__all__ = ["BOOL", "F64", "I64", "Detector", "DetectorConfig", "Kind", "Scored"]


class Kind(enum.IntEnum):
    """The detectors, as bits of ``Scored.fired``."""

    EWMA = 0  # fast exponentially weighted mean, spread from the mean absolute residual
    ROBUST = 1  # streaming median and MAD
    CUSUM = 2  # two-sided CUSUM against the long baseline: level shifts
    ROC = 3  # rate of change
    FLATLINE = 4  # stuck at one value
    TOD = 5  # time-of-day baseline
    LIMIT = 6  # regulatory or operational limit
    PHYSICAL = 7  # physically impossible for a working sensor
    SPATIAL = 8  # beyond anything the series has read before
    STALENESS = 9  # silent for several usual intervals (timer, not per reading)

    @property
    def label(self) -> str:
        return self.name.lower()


# Kind values as plain ints for the kernel.
K_EWMA, K_ROBUST, K_CUSUM, K_ROC, K_FLATLINE, K_TOD, K_LIMIT, K_PHYSICAL, K_SPATIAL = range(9)

# Columns of a series' state row.
N, LAST_TS, LAST_X, DT = 0, 1, 2, 3  # readings folded in; the last one; the usual interval (s)
MEAN, DEV, MED, MAD = 4, 5, 6, 7  # fast EWMA and its mean absolute residual; streaming median, MAD
SMEAN, SVAR, SN, CPOS, CNEG = 8, 9, 10, 11, 12  # long baseline (readings since it restarted); CUSUM
DVAR, EQ, RUN = 13, 14, 15  # variance of changes; rate of repeated values; current run of them
LMEAN, QUIET, ALARM_TS, STALE = 16, 17, 18, 19  # limit mean; episode (-1: none); last alarm; silent
LO, HI = 20, 21  # the range of the series' history
NE, ES_E, ME_E, VE_E = 22, 23, 24, 25  # likelihood of the EWMA channel: count; short mean; long mean, var
NT, ES_T, ME_T, VE_T = 26, 27, 28, 29  # ... of the time-of-day channel
NFIELDS = 30
NSTATE = 32  # two spare columns: a row is 256 B, four whole cache lines (the array is aligned)

# Columns of the profile table (stream.profiles.PARAMS order; checked at import).
(
    P_THRESHOLD,
    P_REFRACTORY,
    P_REFRACTORY_S,
    P_WARMUP,
    P_WINDOW,
    P_WINDOW_S,
    P_SPREAD_WINDOW,
    P_SPREAD_WINDOW_S,
    P_SLOW_WINDOW,
    P_SLOW_WINDOW_S,
    P_CLIP,
    P_RESOLUTION,
    P_MIN_SPREAD,
    P_LIKELIHOOD,
    P_LIKELIHOOD_WINDOW,
    P_EWMA_CAP,
    P_EWMA_SHORT,
    P_TOD_CAP,
    P_TOD_SHORT,
    P_EWMA,
    P_ROBUST,
    P_CUSUM,
    P_CUSUM_DRIFT,
    P_ROC,
    P_MAX_RATE,
    P_FLATLINE,
    P_FLATLINE_EPS,
    P_FLATLINE_MIN_RUN,
    P_TOD,
    P_TOD_BINS,
    P_TOD_DAYS,
    P_TOD_WARMUP,
    P_TOD_FLOOR,
    P_SPATIAL,
    P_SPATIAL_TOLERANCE,
    P_STALENESS,
    P_STALE_INTERVALS,
    P_STALE_MIN_S,
    P_PHYSICAL_LOW,
    P_PHYSICAL_HIGH,
    P_LIMIT_LOW,
    P_LIMIT_HIGH,
    P_LIMIT_WINDOW_S,
) = range(43)
assert PARAMS == (
    "threshold",
    "refractory",
    "refractory_s",
    "warmup",
    "window",
    "window_s",
    "spread_window",
    "spread_window_s",
    "slow_window",
    "slow_window_s",
    "clip",
    "resolution",
    "min_spread",
    "likelihood",
    "likelihood_window",
    "ewma_cap",
    "ewma_short",
    "tod_cap",
    "tod_short",
    "ewma",
    "robust",
    "cusum",
    "cusum_drift",
    "roc",
    "max_rate",
    "flatline",
    "flatline_eps",
    "flatline_min_run",
    "tod",
    "tod_bins",
    "tod_days",
    "tod_warmup",
    "tod_floor",
    "spatial",
    "spatial_tolerance",
    "staleness",
    "stale_intervals",
    "stale_min_s",
    "physical_low",
    "physical_high",
    "limit_low",
    "limit_high",
    "limit_window_s",
)
# Time-of-day state: per bin (mean, var, n), as many bins as the profiles use at most.
NTOD = 3 * MAX_TOD_BINS

_LN10 = math.log(10.0)
_SQRT2 = math.sqrt(2.0)
_SQRTPI = math.sqrt(math.pi)
_MAD_TO_SD = 1.4826  # MAD of a normal distribution is 0.6745 sd
_ABS_TO_SD = math.sqrt(math.pi / 2)  # mean absolute deviation of a normal distribution is 0.7979 sd
_LOG10_HALF = math.log10(0.5)
_FLOOR = -DECADES  # log10 p of a certain anomaly (a limit): score 1
_AHEAD = 8  # readings ahead whose state row is prefetched
_HUGE = 1e100  # beyond any physical quantity; squares would overflow the state
# Fast math without the flags that assume no NaN or infinity: both are data here.
_FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}


def _tail_exact(z: float) -> float:
    """log10 P(|Z| >= z) for a standard normal Z, accurate far into the tail."""
    z = abs(z)
    if z < 30.0:
        return math.log10(math.erfc(z / _SQRT2))
    u = z / _SQRT2
    return (-u * u - math.log(u * _SQRTPI)) / _LN10


# The tail on a grid, interpolated in the kernel: erfc and log10 would cost more than the rest
# of a reading's work. The error is below 1e-4 decades.
_TAIL_STEP = 1.0 / 64.0
_TAIL_MAX = 38.0
_TAIL = np.array([_tail_exact(i * _TAIL_STEP) for i in range(int(_TAIL_MAX / _TAIL_STEP) + 2)])
_LOG10_N = np.array([0.0, 0.0, *(math.log10(i) for i in range(2, 17))])


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _log10_tail(z: float) -> float:
    z = abs(z)
    if z < _TAIL_MAX:
        f = z / _TAIL_STEP
        j = int(f)
        w = f - j
        return float(_TAIL[j] * (1.0 - w) + _TAIL[j + 1] * w)
    u = z / _SQRT2
    return (-u * u - math.log(u * _SQRTPI)) / _LN10


def _prefetch_codegen(write: int) -> Any:
    """Code for LLVM's prefetch of ``array[indices]`` (keep in all caches; ``write`` 1 for a
    store to come): a hint, no effect on results. Numba does not expose the instruction."""

    def codegen(context: Any, builder: Any, signature: Signature, args: Any) -> Any:
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(  # type: ignore[no-untyped-call]
            context, builder, aryty, ary, list(args[1:]), wraparound=False
        )
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")  # type: ignore[no-untyped-call]
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(write), i32(3), i32(1)])
        return context.get_dummy_value()

    return codegen


def _prefetch_typing(
    typingctx: object, array: types.Array, row: types.Integer, col: types.Integer
) -> tuple[Signature, object]:
    return types.void(array, row, col), _prefetch_codegen(write=1)


def _prefetch_1d_typing(typingctx: object, array: types.Array, index: types.Integer) -> tuple[Signature, object]:
    return types.void(array, index), _prefetch_codegen(write=0)


_prefetch: Any = intrinsic(_prefetch_typing)  # state[row, col], to be written
_prefetch_1d: Any = intrinsic(_prefetch_1d_typing)  # array[index], to be read


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _log10_upper(z: float) -> float:
    """log10 P(Z >= z), one-sided; at most log10(1/2) (below the mean nothing is anomalous)."""
    if z <= 0.0:
        return _LOG10_HALF
    return _log10_tail(z) + _LOG10_HALF


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _decay(x: float) -> float:
    """1 - exp(-x); for the small x of one reading's share of a window without calling exp
    (error below x**3 / 6)."""
    if x < 1e-3:
        return x * (1.0 - 0.5 * x)
    return 1.0 - math.exp(-x)


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _alpha(dt: float, window: float, window_s: float) -> float:
    """EWMA weight of a reading: by count (2 / (window + 1)) or by the time it covers."""
    if window_s > 0.0:
        return _decay(2.0 * dt / window_s)
    return 2.0 / (window + 1.0)


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _likelihood(
    z: float, cap: float, short: float, window: float, es: float, me: float, ve: float, n: float
) -> tuple[float, float, float, float]:
    """One reading of a likelihood channel: (log10 p, short mean, long mean, long variance).
    ``n`` is how many readings the channel has seen."""
    e = min(z, cap) / cap
    es = e if n == 0.0 else es + (e - es) / short
    lp = _log10_upper((es - me) / max(math.sqrt(ve), 1e-3)) if n >= 1.0 else 0.0
    a = max(2.0 / (window + 1.0), 1.0 / (n + 1.0))
    d = es - me
    me += a * d
    ve = (1.0 - a) * (ve + a * d * d)
    return lp, es, me, ve


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FAST)
def detect_kernel(
    series: I64,
    ts: I64,
    values: F64,
    feed: BOOL,
    state: F64,
    profile_of: I64,
    table: F64,
    tod_slot: I64,
    tod: F64,
    local: F64,
    score: F64,
    alarm: BOOL,
    fired: I64,
    top: I64,
    baseline: F64,
    spread: F64,
) -> None:
    """Score each reading against its series' state *before* it, then fold it in.

    Readings are taken in input order (each series' readings in time order). A reading whose
    ``feed`` is False (already stored: a redelivery) or whose value is not finite is scored
    0 and leaves the state alone. Time never runs backwards for a series: an older timestamp
    counts as no time elapsed.

    The series' row is read into locals, updated, and written back once: the compiler cannot
    prove the arrays do not overlap, so reading and writing them in place would reload the
    row after every store.
    """
    count = values.shape[0]
    for i in range(count):
        s = series[i]
        x = values[i]
        t = float(ts[i])
        # With many series the rows are out of cache, and one reading's work is too long for
        # the processor to overlap its misses with the next reading's: ask for a later
        # reading's row now, so it arrives while this one is scored.
        if i + _AHEAD < count:
            ahead = series[i + _AHEAD]
            for c in range(0, NSTATE, 8):
                _prefetch(state, ahead, c)
            _prefetch_1d(profile_of, ahead)
            _prefetch_1d(tod_slot, ahead)
        if i + _AHEAD // 2 < count:
            # Its time-of-day bin, once its slot has arrived.
            ahead = series[i + _AHEAD // 2]
            slot = tod_slot[ahead]
            if slot >= 0:
                bins = int(table[profile_of[ahead], P_TOD_BINS])
                t_ahead = float(ts[i + _AHEAD // 2]) * 1e-6 + local[0]
                _prefetch(tod, slot, 3 * (int((t_ahead % 86400.0) * bins / 86400.0) % bins))
        score[i] = 0.0
        alarm[i] = False
        fired[i] = 0
        top[i] = -1
        baseline[i] = np.nan
        spread[i] = np.nan
        if not feed[i] or not math.isfinite(x):
            continue
        p = profile_of[s]
        if abs(x) > _HUGE:
            # No sensor reads this: flag it, but keep it out of the statistics.
            score[i] = 1.0
            fired[i] = 1 << K_PHYSICAL
            top[i] = K_PHYSICAL
            if state[s, QUIET] < 0.0 or state[s, N] == 0.0:
                alarm[i] = True
                state[s, QUIET] = 0.0
                state[s, ALARM_TS] = t
            continue

        # Profile.
        threshold = table[p, P_THRESHOLD]
        warmup = table[p, P_WARMUP]
        clip = table[p, P_CLIP]
        use_ewma = table[p, P_EWMA] > 0.0
        use_robust = table[p, P_ROBUST] > 0.0
        use_cusum = table[p, P_CUSUM] > 0.0
        use_roc = table[p, P_ROC] > 0.0
        use_flat = table[p, P_FLATLINE] > 0.0
        use_lik = table[p, P_LIKELIHOOD] > 0.0
        flat_eps = table[p, P_FLATLINE_EPS]
        lim_lo = table[p, P_LIMIT_LOW]
        lim_hi = table[p, P_LIMIT_HIGH]
        phys_lo = table[p, P_PHYSICAL_LOW]
        phys_hi = table[p, P_PHYSICAL_HIGH]

        # State.
        n = state[s, N]
        if n == 0.0:
            last_ts, last_x, dt_avg = t, x, 0.0
            mean, dev, med, mad = x, 0.0, x, 0.0
            smean, svar, sn, cpos, cneg = x, 0.0, 0.0, 0.0, 0.0
            dvar, eq, run, lmean, quiet, alarm_ts = 0.0, 0.5, 0.0, x, -1.0, -1e18
            lo, hi = x, x
            ne, es_e, me_e, ve_e, nt, es_t, me_t, ve_t = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
        else:
            last_ts, last_x, dt_avg = state[s, LAST_TS], state[s, LAST_X], state[s, DT]
            mean, dev, med, mad = state[s, MEAN], state[s, DEV], state[s, MED], state[s, MAD]
            smean, svar, sn = state[s, SMEAN], state[s, SVAR], state[s, SN]
            cpos, cneg = state[s, CPOS], state[s, CNEG]
            dvar, eq, run = state[s, DVAR], state[s, EQ], state[s, RUN]
            lmean, quiet, alarm_ts = state[s, LMEAN], state[s, QUIET], state[s, ALARM_TS]
            lo, hi = state[s, LO], state[s, HI]
            ne, es_e, me_e, ve_e = state[s, NE], state[s, ES_E], state[s, ME_E], state[s, VE_E]
            nt, es_t, me_t, ve_t = state[s, NT], state[s, ES_T], state[s, ME_T], state[s, VE_T]

        warm = n >= warmup
        dt = max(0.0, (t - last_ts) * 1e-6)
        # Early on every average is a plain cumulative mean (the EWMA's bias correction).
        a = max(_alpha(dt, table[p, P_WINDOW], table[p, P_WINDOW_S]), 1.0 / (n + 1.0))
        a_slow = max(_alpha(dt, table[p, P_SLOW_WINDOW], table[p, P_SLOW_WINDOW_S]), 1.0 / (sn + 1.0))
        floor = max(table[p, P_RESOLUTION], table[p, P_MIN_SPREAD] * abs(smean), 1e-9)
        sd = max(_ABS_TO_SD * dev, floor)
        rsd = max(_MAD_TO_SD * mad, floor)
        ssd = max(math.sqrt(svar), floor)
        dsd = max(math.sqrt(dvar), floor) if use_roc else floor

        # Certainties (limits, impossible values, new extremes) score 1. The statistical
        # detectors give |z| (Gaussian tail) or log10 p.
        certain = -1
        if x < phys_lo or x > phys_hi:
            certain = K_PHYSICAL
        lim_x = x
        if n > 0.0 and table[p, P_LIMIT_WINDOW_S] > 0.0:
            lim_x = lmean + _alpha(dt, 0.0, table[p, P_LIMIT_WINDOW_S]) * (x - lmean)
        if certain < 0 and (lim_x < lim_lo or lim_x > lim_hi):
            certain = K_LIMIT
        looked = 0
        z_ewma = 0.0
        z_rob = 0.0
        z_roc = 0.0
        z_tod = 0.0
        lp_ewma = 0.0
        lp_tod = 0.0
        lp_cusum = 0.0
        lp_flat = 0.0
        dx = x - last_x
        if warm:
            if certain < 0 and table[p, P_SPATIAL] > 0.0:
                margin = table[p, P_SPATIAL_TOLERANCE] * (hi - lo)
                if (hi > lo and (x > hi + margin or x < lo - margin)) or (hi == lo and x != hi):
                    certain = K_SPATIAL
            if use_ewma:
                z_ewma = abs(x - mean) / sd
                looked += 1
            if use_robust:
                z_rob = abs(x - med) / rsd
                looked += 1
            if use_cusum and sn >= warmup:
                z = min(max((x - smean) / ssd, -clip), clip)
                k = table[p, P_CUSUM_DRIFT]
                cpos = max(0.0, cpos + z - k)
                cneg = max(0.0, cneg - z - k)
                # Siegmund: the stationary CUSUM exceeds g with probability exp(-2 k g).
                lp_cusum = max(_FLOOR, -2.0 * k * max(cpos, cneg) / _LN10)
                looked += 1
            if use_roc:
                z_roc = abs(dx) / dsd
                if certain < 0 and dt > 0.0 and abs(dx) > table[p, P_MAX_RATE] * dt:
                    certain = K_ROC
                looked += 1
            if use_flat:
                if abs(dx) <= flat_eps and run + 1.0 >= table[p, P_FLATLINE_MIN_RUN]:
                    # Runs of identical readings are geometric with the series' usual rate.
                    lp_flat = max(_FLOOR, (run + 1.0) * math.log10(min(max(eq, 1e-3), 0.999)))
                looked += 1
        slot = tod_slot[s]
        use_tod = slot >= 0 and table[p, P_TOD] > 0.0
        bins = int(table[p, P_TOD_BINS])
        col = 0
        tsd = floor
        tod_warm = False
        if use_tod:
            # Local time: the UTC offset before a switch time, and after it (a DST change).
            offset = local[0] if t < local[1] else local[2]
            col = 3 * (int(((t * 1e-6 + offset) % 86400.0) * bins / 86400.0) % bins)
            tod_warm = tod[slot, col + 2] >= table[p, P_TOD_WARMUP]
            tsd = max(math.sqrt(tod[slot, col + 1]), table[p, P_TOD_FLOOR] * ssd, floor)
            if warm and tod_warm:
                z_tod = abs(x - tod[slot, col]) / tsd
                if not use_lik:
                    looked += 1
        if use_lik and warm:
            # Anomaly likelihood: the capped error, averaged over a few readings, against the
            # long-run distribution of that average (one-sided: only more error is anomalous).
            window = table[p, P_LIKELIHOOD_WINDOW]
            if use_ewma:
                lp_ewma, es_e, me_e, ve_e = _likelihood(
                    z_ewma, table[p, P_EWMA_CAP], table[p, P_EWMA_SHORT], window, es_e, me_e, ve_e, ne
                )
                ne += 1.0
            if use_tod:
                # Until its bin has learnt, the channel sees no error: it still learns its own
                # distribution, so it is calibrated when the bins are.
                lp_tod, es_t, me_t, ve_t = _likelihood(
                    z_tod, table[p, P_TOD_CAP], table[p, P_TOD_SHORT], window, es_t, me_t, ve_t, nt
                )
                nt += 1.0
                looked += 1

        # The strongest evidence. Tails are costly: only the largest |z| becomes one.
        best_k = -1
        zmax = 0.0
        if not use_lik and z_ewma > zmax:
            zmax, best_k = z_ewma, K_EWMA
        if z_rob > zmax:
            zmax, best_k = z_rob, K_ROBUST
        if z_roc > zmax:
            zmax, best_k = z_roc, K_ROC
        if not use_lik and z_tod > zmax:
            zmax, best_k = z_tod, K_TOD
        best = _log10_tail(zmax) if best_k >= 0 else 0.0
        if lp_ewma < best:
            best, best_k = lp_ewma, K_EWMA
        if lp_tod < best:
            best, best_k = lp_tod, K_TOD
        if lp_cusum < best:
            best, best_k = lp_cusum, K_CUSUM
        if lp_flat < best:
            best, best_k = lp_flat, K_FLATLINE
        # Bonferroni over the statistical detectors that looked.
        correction = _LOG10_N[looked]
        cut = -threshold * DECADES - correction
        mask = 0
        if certain >= 0:
            sc = 1.0
            best_k = certain
            mask = 1 << certain
        else:
            sc = min(1.0, max(0.0, -(best + correction) / DECADES))
        if best <= cut:  # rare: which detectors reached the threshold on their own
            if lp_ewma <= cut or (not use_lik and z_ewma > 0.0 and _log10_tail(z_ewma) <= cut):
                mask |= 1 << K_EWMA
            if z_rob > 0.0 and _log10_tail(z_rob) <= cut:
                mask |= 1 << K_ROBUST
            if lp_cusum <= cut:
                mask |= 1 << K_CUSUM
            if z_roc > 0.0 and _log10_tail(z_roc) <= cut:
                mask |= 1 << K_ROC
            if lp_flat <= cut:
                mask |= 1 << K_FLATLINE
            if lp_tod <= cut or (not use_lik and z_tod > 0.0 and _log10_tail(z_tod) <= cut):
                mask |= 1 << K_TOD
        score[i] = sc
        fired[i] = mask
        top[i] = best_k
        base, spr = mean, sd
        if best_k == K_ROBUST:
            base, spr = med, rsd
        elif best_k == K_CUSUM:
            base, spr = smean, ssd
        elif best_k == K_ROC:
            base, spr = last_x, dsd
        elif best_k == K_FLATLINE:
            base, spr = last_x, 0.0
        elif best_k == K_TOD:
            base, spr = tod[slot, col], tsd
        elif best_k == K_LIMIT:
            base, spr = (lim_lo if lim_x < lim_lo else lim_hi), 0.0
        elif best_k == K_PHYSICAL:
            base, spr = (phys_lo if x < phys_lo else phys_hi), 0.0
        elif best_k == K_SPATIAL:
            base, spr = (lo if x < lo else hi), hi - lo
        baseline[i] = base
        spread[i] = spr

        # One alarm per episode: after an alarm the series stays in its episode (quiet >= 0)
        # until `refractory` readings in a row, and `refractory_s` seconds, score below half
        # the threshold.
        if quiet >= 0.0:
            quiet = quiet + 1.0 if sc < 0.5 * threshold else 0.0
            if quiet >= table[p, P_REFRACTORY] and (t - alarm_ts) * 1e-6 >= table[p, P_REFRACTORY_S]:
                quiet = -1.0
        if sc >= threshold:
            if quiet < 0.0:
                alarm[i] = True
                alarm_ts = t
                quiet = 0.0
            if mask & (1 << K_CUSUM):
                # A level shift: judge what follows against the new level, not the old one.
                cpos = 0.0
                cneg = 0.0
                sn = 0.0
                med = x

        # Fold the reading in. Once warm, outliers enter clipped, so that a spike does not
        # inflate the spread that judges the readings after it.
        if n > 0.0:
            r = x - mean
            if warm:
                r = min(max(r, -clip * sd), clip * sd)
            dev += max(_alpha(dt, table[p, P_SPREAD_WINDOW], table[p, P_SPREAD_WINDOW_S]), 1.0 / n) * (abs(r) - dev)
            mean += a * r
            xs = min(max(x, smean - clip * ssd), smean + clip * ssd) if warm and sn >= warmup else x
            if sn == 0.0:
                smean = xs  # restart the reference at the new level; keep the spread it had
            else:
                d = xs - smean
                smean += a_slow * d
                svar = (1.0 - a_slow) * (svar + a_slow * d * d)
            lo = min(lo, x)
            hi = max(hi, x)
            if use_roc:
                dxf = min(max(dx, -clip * dsd), clip * dsd) if warm else dx
                dvar += a * (dxf * dxf - dvar)
            if use_flat:
                same = 1.0 if abs(dx) <= flat_eps else 0.0
                eq += a_slow * (same - eq)
                run = run + 1.0 if same > 0.0 else 0.0
            dt_avg = dt if n == 1.0 else dt_avg + a * (dt - dt_avg)
        sn += 1.0
        if not use_robust:
            pass
        elif warm:
            # Stochastic approximation of the median and of the MAD: steps of a fixed fraction
            # of the spread towards the sample, whose fixed points are the medians.
            step = a * rsd
            d = x - med
            med += step if d > 0.0 else (-step if d < 0.0 else 0.0)
            dm = abs(d) - mad
            mad += a * max(mad, floor) if dm > 0.0 else (-a * mad if dm < 0.0 else 0.0)
        else:
            # Warming up: the mean, and the mean absolute deviation (0.8 sd; MAD is 0.67 sd).
            med = mean
            mad += a * (0.845 * abs(x - mean) - mad)
        if use_tod:
            m, v, c = tod[slot, col], tod[slot, col + 1], tod[slot, col + 2]
            at = max(_decay(dt * bins / (table[p, P_TOD_DAYS] * 86400.0)), 1.0 / (c + 1.0))
            d = min(max(x - m, -clip * tsd), clip * tsd) if tod_warm else x - m
            tod[slot, col] = m + at * d
            tod[slot, col + 1] = (1.0 - at) * (v + at * d * d)
            tod[slot, col + 2] = c + 1.0

        state[s, N] = n + 1.0
        state[s, LAST_TS] = max(last_ts, t)
        state[s, LAST_X] = x
        state[s, DT] = dt_avg
        state[s, MEAN] = mean
        state[s, DEV] = dev
        state[s, MED] = med
        state[s, MAD] = mad
        state[s, SMEAN] = smean
        state[s, SVAR] = svar
        state[s, SN] = sn
        state[s, CPOS] = cpos
        state[s, CNEG] = cneg
        state[s, DVAR] = dvar
        state[s, EQ] = eq
        state[s, RUN] = run
        state[s, LMEAN] = lim_x
        state[s, QUIET] = quiet
        state[s, ALARM_TS] = alarm_ts
        state[s, STALE] = 0.0
        state[s, LO] = lo
        state[s, HI] = hi
        state[s, NE] = ne
        state[s, ES_E] = es_e
        state[s, ME_E] = me_e
        state[s, VE_E] = ve_e
        state[s, NT] = nt
        state[s, ES_T] = es_t
        state[s, ME_T] = me_t
        state[s, VE_T] = ve_t


@njit(cache=True, nogil=True, error_model="numpy")
def stale_kernel(state: F64, profile_of: I64, table: F64, count: int, now_us: float, out: BOOL) -> None:
    """Mark series silent for ``stale_intervals`` of their usual interval (at least
    ``stale_min_s``), once per silence: the flag clears with the next reading."""
    for s in range(count):
        row = state[s]
        out[s] = False
        pr = table[profile_of[s]]
        if row[N] < 2.0 or row[STALE] > 0.0 or pr[P_STALENESS] <= 0.0:
            continue
        gap = (now_us - row[LAST_TS]) * 1e-6
        if gap >= max(pr[P_STALE_INTERVALS] * row[DT], pr[P_STALE_MIN_S]):
            row[STALE] = 1.0
            out[s] = True


def _aligned_rows(rows: int) -> F64:
    """Zeroed state rows whose start is 64-byte aligned, so each row is whole cache lines."""
    buffer = np.zeros(rows * NSTATE + 8, np.float64)
    skip = (-buffer.ctypes.data % 64) // 8
    return buffer[skip : skip + rows * NSTATE].reshape(rows, NSTATE)


@dataclass
class Scored:
    """Per-reading results of one batch, aligned with the input arrays."""

    score: F64  # combined score in [0, 1]
    alarms: BOOL  # score >= threshold, outside the refractory period
    fired: I64  # bit k set: detector Kind(k) alone reached the threshold
    top: I64  # the detector with the smallest p (-1: none looked)
    baselines: F64  # what the top detector expected ...
    spreads: F64  # ... and its spread

    def fired_names(self, i: int) -> list[str]:
        bits = int(self.fired[i])
        return [k.label for k in Kind if bits & (1 << k)]


class Detector:
    """Every detector over many series; grows its state as new series appear.

    ``bind`` gives a series its device class and metric (unbound series use the defaults);
    ``reload`` swaps the profiles without touching any state.
    """

    def __init__(self, config: DetectorConfig | None = None, capacity: int = 1024) -> None:
        self.state = _aligned_rows(capacity)
        self.profile_of = np.zeros(capacity, np.int64)
        self.tod_slot = np.full(capacity, -1, np.int64)
        self.tod = np.zeros((0, 3), np.float64)
        self._bound: dict[int, tuple[str, str]] = {}
        self._tod_used = 0
        self.reload(config or DetectorConfig())

    # -- configuration ------------------------------------------------------------------------

    def reload(self, config: DetectorConfig) -> None:
        self.config = config
        self._ids, self.profiles, self.table = config.compile()
        uses = self.table[:, P_TOD] > 0
        self._any_tod = bool(uses.any())
        width = 3 * int(self.table[uses, P_TOD_BINS].max()) if self._any_tod else 3
        if width != self.tod.shape[1]:
            # Bins of another width mean other hours: the time-of-day baselines learn again.
            self.tod = np.zeros((self.tod.shape[0], width))
        self._zone = ZoneInfo(config.timezone)
        for sid, (kind, metric) in self._bound.items():
            self.profile_of[sid] = config.profile_id(self._ids, kind, metric)

    def bind(self, sid: int, kind: str, metric: str) -> None:
        self._grow(sid + 1)
        self._bound[sid] = (kind, metric)
        self.profile_of[sid] = self.config.profile_id(self._ids, kind, metric)

    def profile(self, sid: int) -> Profile:
        return self.profiles[int(self.profile_of[sid])] if sid < self.profile_of.shape[0] else self.profiles[0]

    def window(self, sid: int, kind: Kind) -> str:
        """The window a detector judged this series over, for an alert's explanation."""
        p = self.profile(sid)
        if kind in (Kind.CUSUM, Kind.FLATLINE):
            return f"{p.slow_window_s:g} s" if p.slow_window_s else f"{p.slow_window} readings"
        if kind is Kind.TOD:
            return f"{p.tod_days:g} days in {p.tod_bins} bins"
        if kind is Kind.LIMIT:
            return f"{p.limit_window_s:g} s mean" if p.limit_window_s else "each reading"
        if kind in (Kind.PHYSICAL, Kind.STALENESS):
            return "each reading"
        return f"{p.window_s:g} s" if p.window_s else f"{p.window} readings"

    # -- state --------------------------------------------------------------------------------

    def _grow(self, needed: int) -> None:
        size = self.state.shape[0]
        if needed <= size:
            return
        new = max(needed, size * 2)
        state = _aligned_rows(new)
        state[:size] = self.state
        self.state = state
        self.profile_of = np.concatenate([self.profile_of, np.zeros(new - size, np.int64)])
        self.tod_slot = np.concatenate([self.tod_slot, np.full(new - size, -1, np.int64)])

    def _give_tod_slots(self, series: I64) -> None:
        """Time-of-day bins for the series whose profile wants them (most do not: they cost
        ``NTOD`` floats each)."""
        if not self._any_tod:
            return
        wants = self.table[self.profile_of[series], P_TOD] > 0
        need = np.unique(series[wants & (self.tod_slot[series] < 0)])
        if not need.size:
            return
        end = self._tod_used + need.size
        if end > self.tod.shape[0]:
            grown = np.zeros((max(end, 2 * self.tod.shape[0], 64), self.tod.shape[1]))
            grown[: self.tod.shape[0]] = self.tod
            self.tod = grown
        self.tod_slot[need] = np.arange(self._tod_used, end)
        self._tod_used = end

    def is_cold(self, sid: int) -> bool:
        """No reading of this series has been seen (since the process started or it was reset)."""
        return bool(sid >= self.state.shape[0] or self.state[sid, N] == 0)

    def last_ts(self, sid: int) -> int:
        return int(self.state[sid, LAST_TS])

    def last_value(self, sid: int) -> float:
        return float(self.state[sid, LAST_X])

    def interval_s(self, sid: int) -> float:
        """The series' usual interval between readings (0 before its second reading)."""
        return float(self.state[sid, DT])

    def stale_limit_s(self, sid: int) -> float:
        """How long the series may be silent before it is stale."""
        p = self.profile(sid)
        return max(p.stale_intervals * self.interval_s(sid), p.stale_min_s)

    def silent_flags(self, series: I64) -> F64:
        """Each series' silence flag: 0 reporting, else the flag ``stale`` or ``mark_silent`` set
        (a reading clears it)."""
        flags: F64 = self.state[series, STALE].copy()
        return flags

    def mark_silent(self, series: I64, flag: float) -> None:
        """Set the series' silence flag (0 lets ``stale`` find them again)."""
        self.state[series, STALE] = flag

    def reporting(self, count: int) -> BOOL:
        """Per series id below ``count``: it has an interval and is not silent."""
        live: BOOL = (self.state[:count, STALE] == 0.0) & (self.state[:count, N] >= 2.0)
        return live

    def reset(self, series: I64) -> None:
        """Forget these series (their partition moved to another consumer)."""
        series = series[series < self.state.shape[0]]
        self.state[series] = 0.0
        slots = self.tod_slot[series]
        self.tod[slots[slots >= 0]] = 0.0

    def snapshot(self, series: I64) -> list[bytes]:
        """Each series' whole state (its row, then its time-of-day bins if it has them) as
        little-endian float64 bytes that ``restore`` takes back."""
        out = []
        for sid in series.tolist():
            slot = self.tod_slot[sid] if sid < self.tod_slot.shape[0] else -1
            row = self.state[sid].astype("<f8").tobytes()
            out.append(row + self.tod[slot].astype("<f8").tobytes() if slot >= 0 else row)
        return out

    def restore(self, series: I64, blobs: list[bytes]) -> None:
        """Put saved states back; raises ValueError for bytes that are not one."""
        if not len(blobs):
            return
        self._grow(int(series.max()) + 1)
        for sid, blob in zip(series.tolist(), blobs, strict=True):
            extra = len(blob) // 8 - NSTATE
            if len(blob) % 8 or extra < 0 or extra % 3 or extra > NTOD:
                raise ValueError(f"detector snapshot of {len(blob)} bytes: not a state row ({NSTATE} + bins floats)")
            row = np.frombuffer(blob, "<f8")
            self.state[sid] = row[:NSTATE]
            self._give_tod_slots(np.array([sid], np.int64))
            slot = self.tod_slot[sid]
            if slot >= 0:
                # Saved with bins of another width (the profiles changed): learn them again.
                self.tod[slot] = row[NSTATE:] if extra == self.tod.shape[1] else 0.0

    @property
    def nbytes(self) -> int:
        """Memory of the detector state (what a million series cost)."""
        return int(self.state.nbytes + self.profile_of.nbytes + self.tod_slot.nbytes + self.tod.nbytes)

    # -- scoring ------------------------------------------------------------------------------

    def utc_offset_s(self, ts_us: int) -> float:
        offset = datetime.fromtimestamp(ts_us / 1e6, UTC).astimezone(self._zone).utcoffset()
        return offset.total_seconds() if offset is not None else 0.0

    def local_time(self, ts_us: I64) -> F64:
        """(offset before, switch time, offset after) for a batch: the zone's UTC offset, and
        where it changes within the batch's span (found by bisection; at most one change)."""
        lo, hi = int(ts_us.min()), int(ts_us.max())
        first, last = self.utc_offset_s(lo), self.utc_offset_s(hi)
        if first == last:
            return np.array([first, np.inf, last])
        while hi - lo > 1:  # offset(lo) == first, offset(hi) == last
            mid = (lo + hi) // 2
            if self.utc_offset_s(mid) == first:
                lo = mid
            else:
                hi = mid
        return np.array([first, float(hi), last])

    def update(self, series: I64, ts_us: I64, values: F64, feed: BOOL | None = None) -> Scored:
        """Score a batch (each series' readings in time order) and advance the state with the
        readings ``feed`` selects (all by default)."""
        n = values.shape[0]
        if feed is None:
            feed = np.ones(n, np.bool_)
        out = Scored(
            np.empty(n), np.empty(n, np.bool_), np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n), np.empty(n)
        )
        if not n:
            return out
        self._grow(int(series.max()) + 1)
        self._give_tod_slots(series)
        detect_kernel(
            series,
            ts_us,
            values,
            feed,
            self.state,
            self.profile_of,
            self.table,
            self.tod_slot,
            self.tod,
            self.local_time(ts_us),
            out.score,
            out.alarms,
            out.fired,
            out.top,
            out.baselines,
            out.spreads,
        )
        return out

    def stale(self, count: int, now_us: int) -> I64:
        """Series ids (below ``count``) that just went silent."""
        count = min(count, self.state.shape[0])
        out = np.zeros(count, np.bool_)
        stale_kernel(self.state, self.profile_of, self.table, count, float(now_us), out)
        return np.flatnonzero(out).astype(np.int64)


def compile_kernels() -> None:
    """Compile (or load from Numba's cache) every kernel by running it once on a throwaway
    series. A consumer that compiles on its first batch blocks its event loop for seconds,
    misses heartbeats and is rebalanced out of its group; a service calls this before joining."""
    scratch = Detector()
    one = np.zeros(1, np.int64)
    scratch.update(one, np.full(1, 1_000_000, np.int64), np.zeros(1))
    scratch.stale(1, 2_000_000)
