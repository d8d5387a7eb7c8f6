"""NAB's scoring rules, written from their description in ../shared/README.md and checked against
numenta/NAB (``nab/sweeper.py``, ``nab/optimizer.py``, ``nab/runner.py``). No NAB code is used.

Per file of n rows:

- the first ``min(floor(0.15 n), 750)`` rows are a probation period: ignored entirely (a window
  lying wholly inside it counts neither as found nor as missed);
- inside a window of W rows ending at row ``end``, a detection at row i is worth
  ``tp * sigma(p) / sigma(-1)`` with ``p = -(end - i + 1) / W`` and ``sigma(x) = 2 / (1 + e^(5x)) - 1``;
  a window is worth its best (earliest) detection, or ``-fn`` when nothing in it fired;
- every detected row outside the windows costs ``fp * sigma(d)`` (sigma is negative there), where
  ``d = (i - end) / (W - 1)`` for the previous window (``end``, ``W``); before the first window,
  and from ``d >= 3`` on, the full ``-fp``;
- a corpus's raw score S is the sum over its files; the threshold is shared by every file and
  chosen per profile by an exhaustive sweep over the scores (NAB keeps the highest threshold among
  equal totals; a detection is ``score >= threshold``); the normalised score is
  ``100 * (S - S_null) / (S_perfect - S_null)`` with ``S_null`` the score of a detector that never
  fires and ``S_perfect = tp * (number of windows)``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
BOOL = npt.NDArray[np.bool_]

PROBATION_FRACTION = 0.15
PROBATION_MAX = 750  # NAB: probationPercent * 5000
NO_DETECTION = 1.1  # NAB's sweep starts above every score: nothing is detected
FAR = 3.0  # sigma(x) is taken as exactly -1 from here on (NAB's sweeper)


@dataclass(frozen=True)
class Profile:
    name: str  # NAB's name for it
    slug: str  # in figure names
    tp: float
    fp: float
    fn: float


# NAB v1.1 config/profiles.json (numenta/NAB), identical to ../shared/data/nab/profiles.json.
PROFILES: tuple[Profile, ...] = (
    Profile("standard", "standard", tp=1.0, fp=0.11, fn=1.0),
    Profile("reward_low_FP_rate", "reward_low_fp", tp=1.0, fp=0.22, fn=1.0),
    Profile("reward_low_FN_rate", "reward_low_fn", tp=1.0, fp=0.11, fn=2.0),
)


def load_profiles(path: Path | None) -> tuple[Profile, ...]:
    """Profiles from a NAB ``profiles.json`` if there is one, else NAB's own three."""
    if path is None or not path.is_file():
        return PROFILES
    raw = json.loads(path.read_text())
    slugs = {p.name: p.slug for p in PROFILES}
    out = []
    for name, body in raw.items():
        cost = body["CostMatrix"]
        slug = slugs.get(name, name.lower().removesuffix("_rate"))
        out.append(Profile(name, slug, float(cost["tpWeight"]), float(cost["fpWeight"]), float(cost["fnWeight"])))
    return tuple(out)


def probation(n: int) -> int:
    return min(math.floor(PROBATION_FRACTION * n), PROBATION_MAX)


def scaled_sigmoid(x: F64) -> F64:
    """``2 / (1 + exp(5x)) - 1``: 0.987 at -1 (a window's left edge), 0 at 0, -0.987 at 1."""
    x = np.asarray(x, np.float64)
    out: F64 = 2.0 / (1.0 + np.exp(5.0 * np.minimum(x, FAR))) - 1.0
    out[x >= FAR] = -1.0
    return out


MAX_TP = float(scaled_sigmoid(np.array([-1.0]))[0])


@dataclass(frozen=True)
class Truth:
    """One file's windows as row ranges, and what a detection on each row is worth."""

    n: int
    windows: tuple[tuple[int, int], ...]  # inclusive (first row, last row), in time order
    window_of: I64  # window index per row, -1 outside every window
    unit: F64  # per row: in a window the tp multiplier (<= 1), outside the fp multiplier (<= 0)
    scorable: BOOL  # past the probation period

    @property
    def counted(self) -> tuple[int, ...]:
        """Windows with at least one row past the probation period (NAB scores only those)."""
        first = self.n - int(self.scorable.sum())
        return tuple(k for k, (_, hi) in enumerate(self.windows) if hi >= first)


def truth(n: int, windows: Sequence[tuple[int, int]]) -> Truth:
    wins = tuple((int(a), int(b)) for a, b in windows)
    for k, (a, b) in enumerate(wins):
        if not 0 <= a <= b < n:
            raise ValueError(f"window {k} {(a, b)} is outside rows 0..{n - 1}")
        if k and a <= wins[k - 1][1]:
            raise ValueError(f"window {k} {(a, b)} overlaps or precedes the one before it")
    window_of = np.full(n, -1, np.int64)
    unit = np.full(n, -1.0)  # before the first window: the full -fp
    rows = np.arange(n, dtype=np.float64)
    for k, (a, b) in enumerate(wins):
        width = b - a + 1
        window_of[a : b + 1] = k
        unit[a : b + 1] = scaled_sigmoid(-(b - rows[a : b + 1] + 1) / width) / MAX_TP
        stop = wins[k + 1][0] if k + 1 < len(wins) else n
        if stop > b + 1:
            # NAB's sweeper divides by (W - 1); its per-file scorer uses 2.0 for a one-row window.
            d = (rows[b + 1 : stop] - b) / (width - 1) if width > 1 else np.full(stop - b - 1, 2.0)
            unit[b + 1 : stop] = scaled_sigmoid(d)
    scorable = np.arange(n) >= probation(n)
    return Truth(n, wins, window_of, unit, scorable)


@dataclass(frozen=True)
class FileScore:
    score: float  # raw, in the profile's weights
    null: float  # what a detector that never fires scores here
    perfect: float  # tp x windows
    found: int  # windows with a detection
    missed: int  # counted windows without one
    fp_rows: int  # detected rows outside windows (past probation)


def score_file(t: Truth, detected: BOOL, profile: Profile) -> FileScore:
    if detected.shape != (t.n,):
        raise ValueError(f"{detected.shape[0]} detections for {t.n} rows")
    d = detected & t.scorable
    outside = d & (t.window_of < 0)
    s = profile.fp * float(t.unit[outside].sum())
    found = missed = 0
    for k in t.counted:
        a, b = t.windows[k]
        hits = d[a : b + 1]
        if hits.any():
            s += profile.tp * float(t.unit[a : b + 1][hits].max())
            found += 1
        else:
            s -= profile.fn
            missed += 1
    null = -profile.fn * len(t.counted)
    return FileScore(s, null, profile.tp * len(t.windows), found, missed, int(outside.sum()))


def total(scores: Sequence[FileScore]) -> FileScore:
    return FileScore(
        sum(s.score for s in scores),
        sum(s.null for s in scores),
        sum(s.perfect for s in scores),
        sum(s.found for s in scores),
        sum(s.missed for s in scores),
        sum(s.fp_rows for s in scores),
    )


def normalised(s: FileScore) -> float:
    """NAB's 0 (never fires) to 100 (every window at its first row, no false positive); NaN
    where the files have no windows (then only the raw score, <= 0, says anything)."""
    if s.perfect == s.null:
        return math.nan
    return 100.0 * (s.score - s.null) / (s.perfect - s.null)


def sweep(truths: Sequence[Truth], scores: Sequence[F64], profile: Profile) -> tuple[F64, F64]:
    """Corpus score at every distinct threshold, like NAB's ``calcScoreByThreshold``.

    Returns (thresholds, totals), thresholds descending, starting with ``NO_DETECTION`` (score
    S_null); ``totals[j]`` is the raw corpus score when rows with ``score >= thresholds[j]`` fire.
    """
    vals, units, wins = [], [], []
    null = 0.0
    offset = 0
    for t, s in zip(truths, scores, strict=True):
        if s.shape != (t.n,):
            raise ValueError(f"{s.shape[0]} scores for {t.n} rows")
        keep = t.scorable
        w = t.window_of[keep]
        vals.append(s[keep])
        units.append(t.unit[keep])
        wins.append(np.where(w >= 0, w + offset, -1))
        null -= profile.fn * len(t.counted)
        offset += len(t.windows)
    if not vals:
        return np.array([NO_DETECTION]), np.array([null])
    v = np.concatenate(vals)
    if np.isnan(v).any():
        raise ValueError("NaN anomaly score")
    u, w = np.concatenate(units), np.concatenate(wins)
    order = np.argsort(-v, kind="stable")
    v, u, w = v[order], u[order], w[order]
    delta = np.where(w < 0, profile.fp * u, 0.0)
    inside = np.flatnonzero(w >= 0)
    by_window = inside[np.argsort(w[inside], kind="stable")]  # stable: still in sweep order
    bounds = np.flatnonzero(np.diff(w[by_window])) + 1
    for rows in np.split(by_window, bounds):
        if rows.size:
            best = np.maximum.accumulate(np.concatenate(([-profile.fn], profile.tp * u[rows])))
            delta[rows] = np.diff(best)
    totals = null + np.cumsum(delta)
    ends = np.append(np.flatnonzero(np.diff(v)), v.size - 1)
    return np.concatenate(([NO_DETECTION], v[ends])), np.concatenate(([null], totals[ends]))


def best_threshold(thresholds: F64, totals: F64) -> tuple[float, float]:
    """The best total and its threshold; among equal totals the highest threshold (NAB's ``max``)."""
    j = int(np.argmax(totals))
    return float(thresholds[j]), float(totals[j])
