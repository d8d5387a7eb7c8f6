"""Numenta Anomaly Benchmark (NAB) harness: run detectors over a corpus in NAB's layout, choose
one threshold per detector and scoring profile for the whole corpus, and score it by NAB's rules.

    python -m benchmarks.nab --data ../shared/data/nab/data \\
        --labels ../shared/data/nab/labels/combined_windows.json --out /tmp/nab \\
        [--threshold-file FILE] [--detector windowed_gaussian cityops] [--config benchmarks/nab_detectors.toml]

The corpus is ``DATA/<category>/<file>.csv`` (``timestamp,value``) with windows in
``combined_windows.json``; the profiles come from ``profiles.json`` next to the labels directory
if there is one, else NAB's three (``benchmarks._nab_scoring.PROFILES``). Every detector sees one
file at a time, strictly online (a row's score depends only on the rows up to it):

- ``windowed_gaussian``: NAB's Windowed Gaussian baseline, reimplemented: the score of a reading
  is ``1 - Q(|x - mean| / std)`` (Q the normal tail), mean and std over the last 6400 readings
  before it, the window moving in steps of 100 once full. NAB sweeps its threshold on this score.
- ``cityops``: the stream tier's detector (``stream.detectors``) with the configuration in
  ``--config``, one series per file. Its alarms go through a refractory period, so the alarm
  rows depend on the threshold: the harness re-runs it for each candidate threshold and takes
  the alarm rows as the detections.

Writes, under ``--out``:

- ``<detector>/<category>/<detector>_<file>.csv``: ``timestamp,value,anomaly_score,label`` for every
  row (label: 1 inside a window). For ``cityops`` the anomaly score is the detector's score on
  alarm rows and ``min(score, nextafter(t, 0))`` elsewhere, ``t`` the standard profile's
  threshold, so that NAB's own rule (``score >= t``) finds exactly the alarms;
- ``thresholds.json`` (or ``--threshold-file``): the threshold per detector and profile. When
  ``--threshold-file`` names an existing file its thresholds are used instead of choosing new
  ones (to score a held-out corpus with the development split's thresholds);
- ``report.md``: normalised scores per detector and profile, and per category (raw scores for
  categories without windows, where only false positives count); ``scores.png``: the same as bars.

Prints ``nab_<profile>_<detector>: <score> points`` per profile and
``nab_standard_<detector>_<category>: <score> points`` per category.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from benchmarks._nab_scoring import (
    BOOL,
    F64,
    I64,
    NO_DETECTION,
    FileScore,
    Profile,
    Truth,
    best_threshold,
    load_profiles,
    normalised,
    score_file,
    sweep,
    total,
    truth,
)

console = Console(stderr=True)

DEFAULT_CONFIG = Path(__file__).with_name("nab_detectors.toml")

# NAB's Windowed Gaussian (nab/detectors/gaussian/windowedGaussian_detector.py).
WG_WINDOW = 6400
WG_STEP = 100
WG_MIN_STD = 1e-6

# Candidate thresholds for detectors that are re-run per threshold: a coarse grid over (0, 1],
# then a finer one around each profile's best.
COARSE_STEP = 0.02
FINE_STEP = 0.002


# -- corpus ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NabFile:
    key: str  # "<category>/<file>.csv", as in the labels
    timestamps: list[str]  # as written in the file
    raw_values: list[str]
    ts_us: I64  # microseconds UTC, made strictly increasing (see `strictly_increasing`)
    values: F64
    truth: Truth

    @property
    def category(self) -> str:
        return self.key.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]


def parse_us(stamps: Sequence[str]) -> I64:
    """``YYYY-MM-DD HH:MM:SS[.ffffff]`` (no zone: UTC) to integer microseconds."""
    return np.array([s.strip() for s in stamps], dtype="datetime64[us]").astype(np.int64)


def strictly_increasing(ts: I64) -> I64:
    """NAB files repeat a timestamp now and then (``ec2_disk_write_bytes_1ef3de``: a DST change)
    and some real files step backwards; NAB scores every row in file order, while the stream tier
    takes a repeated instant for a replay and lets time run backwards for no series. A row at or
    before the row before it becomes 1 µs after it: ``t'[i] = max(t[i], t'[i-1] + 1)`` (online)."""
    steps = np.arange(ts.shape[0], dtype=np.int64)
    out: I64 = np.maximum.accumulate(ts - steps) + steps
    return out


def _first_at_or_after(ts: I64, t: int) -> int:
    """The first row, in file order, stamped at or after ``t`` (``len(ts)``: none)."""
    hits = np.flatnonzero(ts >= t)
    return int(hits[0]) if hits.size else int(ts.shape[0])


def window_rows(ts: I64, windows: Iterable[Sequence[str]]) -> list[tuple[int, int]]:
    """Windows as inclusive row ranges, looked up in file order as NAB does (``list.index`` on
    the timestamps), so files whose timestamps step backwards are scored as NAB scores them: from
    the first row at or after the start to the first row at the end, or the row before the first
    row after it. On time-ordered files this is a binary search's answer."""
    out = []
    for start, end in windows:
        a = _first_at_or_after(ts, int(parse_us([start])[0]))
        b_us = int(parse_us([end])[0])
        exact = np.flatnonzero(ts == b_us)
        b = int(exact[0]) if exact.size else _first_at_or_after(ts, b_us) - 1
        if a > b:
            raise ValueError(f"window [{start}, {end}] holds no row")
        out.append((a, b))
    return out


def load_file(path: Path, key: str, windows: Iterable[Sequence[str]]) -> NabFile:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "timestamp" not in rows[0] or "value" not in rows[0]:
        raise ValueError(f"{path}: expected columns timestamp,value")
    stamps = [r["timestamp"] for r in rows]
    raw = [r["value"] for r in rows]
    ts = parse_us(stamps)
    values = np.array([float(v) for v in raw], np.float64)
    return NabFile(key, stamps, raw, strictly_increasing(ts), values, truth(len(rows), window_rows(ts, windows)))


def load_corpus(data: Path, labels: Path) -> list[NabFile]:
    """Every labelled file, in the labels' order (sorted); unlabelled files are left out."""
    windows: dict[str, list[list[str]]] = json.loads(labels.read_text())
    missing = [k for k in windows if not (data / k).is_file()]
    if missing:
        raise FileNotFoundError(f"labelled but not in {data}: {', '.join(missing)}")
    extra = sorted(str(p.relative_to(data)) for p in data.glob("*/*.csv") if str(p.relative_to(data)) not in windows)
    if extra:
        console.log(f"[yellow]not labelled, left out: {', '.join(extra)}")
    return [load_file(data / k, k, windows[k]) for k in sorted(windows)]


# -- detectors ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One file through a detector: a score in [0, 1] per row and the rows that alarmed."""

    score: F64
    alarms: BOOL


class NabDetector(Protocol):
    name: str
    # True: alarms are exactly ``score >= threshold``, so one run serves every threshold and the
    # threshold is swept over the scores. False: re-run per candidate threshold.
    sweeps_raw: bool

    def run(self, ts_us: I64, values: F64, threshold: float) -> Run: ...


def _normal_cdf(z: F64) -> F64:
    return np.array([1.0 - 0.5 * math.erfc(v / math.sqrt(2.0)) for v in z.tolist()], np.float64)


def windowed_gaussian_scores(values: F64, window: int = WG_WINDOW, step: int = WG_STEP) -> F64:
    """NAB's Windowed Gaussian: row i is judged against the population mean and std of the rows
    before it (all of them while fewer than ``window``; afterwards the last ``window`` rows as of
    the latest step), score ``1 - Q(|z|)`` in [0.5, 1); row 0 scores 0."""
    n = values.shape[0]
    mean = np.zeros(n)
    std = np.ones(n)
    grow = min(n, window)  # rows 1..window-1 see every row before them
    if grow > 1:
        y = values[: grow - 1] - values[0]  # shifted: no cancellation in the second moment
        k = np.arange(1, grow, dtype=np.float64)
        m1 = np.cumsum(y) / k
        var = np.maximum(np.cumsum(y * y) / k - m1 * m1, 0.0)
        mean[1:grow] = values[0] + m1
        std[1:grow] = np.sqrt(var)
    for start in range(window, n, step):
        # rows start..start+step-1 see the `window` rows before `start` (the window as of its latest step)
        w = values[start - window : start]
        mean[start : start + step] = w.mean()
        std[start : start + step] = w.std()
    std[std == 0.0] = WG_MIN_STD
    score = _normal_cdf(np.abs(values - mean) / std)
    if n:
        score[0] = 0.0
    return score


class WindowedGaussian:
    name = "windowed_gaussian"
    sweeps_raw = True

    def run(self, ts_us: I64, values: F64, threshold: float) -> Run:
        s = windowed_gaussian_scores(values)
        return Run(s, s >= threshold)


class Cityops:
    """``stream.detectors.Detector``, one series per file, a fresh detector per file and run."""

    name = "cityops"
    sweeps_raw = False

    def __init__(self, config: Path | None = None) -> None:
        try:
            from stream.detectors import Detector, DetectorConfig
        except ImportError as exc:  # the detector module is being rewritten
            raise SystemExit(f"the cityops detector is not available: {exc}") from exc
        self._detector = Detector
        if config is not None and config.is_file():
            self.config = DetectorConfig.load(config)
        else:
            console.log(f"[yellow]{config} not found: cityops runs with the default profile")
            self.config = DetectorConfig()

    def run(self, ts_us: I64, values: F64, threshold: float) -> Run:
        config = self.config.with_threshold(min(threshold, 1.0))
        det = self._detector(config, capacity=1)
        scored = det.update(np.zeros(values.shape[0], np.int64), ts_us, values)
        alarms = np.asarray(scored.alarms, np.bool_) & (threshold <= 1.0)
        return Run(np.asarray(scored.score, np.float64), alarms)


DETECTORS: dict[str, Callable[[argparse.Namespace], NabDetector]] = {
    "windowed_gaussian": lambda args: WindowedGaussian(),
    "cityops": lambda args: Cityops(args.config),
}


# -- thresholds and scores ---------------------------------------------------------------------


@dataclass
class Outcome:
    """A detector on a corpus: per profile its threshold, per-file runs and scores."""

    detector: str
    thresholds: dict[str, float]  # profile name -> threshold
    files: list[NabFile]
    runs: dict[str, list[Run]]  # profile name -> one run per file
    scores: dict[str, list[FileScore]]  # profile name -> one score per file
    chosen: bool = True  # False: the thresholds came from a file
    extra: dict[str, Any] = field(default_factory=dict)

    def total(self, profile: str, category: str | None = None) -> FileScore:
        return total(
            [s for f, s in zip(self.files, self.scores[profile], strict=True) if category in (None, f.category)]
        )

    def categories(self) -> list[str]:
        return sorted({f.category for f in self.files})


def _run_all(det: NabDetector, files: Sequence[NabFile], threshold: float) -> list[Run]:
    return [det.run(f.ts_us, f.values, threshold) for f in files]


def _score_runs(files: Sequence[NabFile], runs: Sequence[Run], profile: Profile) -> list[FileScore]:
    return [score_file(f.truth, r.alarms, profile) for f, r in zip(files, runs, strict=True)]


def _grid_search(
    det: NabDetector, files: Sequence[NabFile], profiles: Sequence[Profile], progress: Progress
) -> dict[str, float]:
    """Best threshold per profile for a detector re-run per threshold: a coarse grid, then a
    fine one around each profile's best; among equal scores the highest threshold (as NAB)."""
    cache: dict[float, dict[str, float]] = {}

    def evaluate(ts: Iterable[float], label: str) -> None:
        todo = sorted({round(float(t), 6) for t in ts if 0.0 < t <= 1.0} - cache.keys())
        task = progress.add_task(f"{det.name}: {label} thresholds", total=len(todo))
        for t in todo:
            runs = _run_all(det, files, t)
            cache[t] = {p.name: total(_score_runs(files, runs, p)).score for p in profiles}
            progress.advance(task)

    def best(p: Profile) -> float:
        return max(sorted(cache, reverse=True), key=lambda t: cache[t][p.name])

    evaluate(np.arange(1, round(1 / COARSE_STEP) + 1) * COARSE_STEP, "coarse")
    fine = np.arange(-COARSE_STEP, COARSE_STEP + FINE_STEP / 2, FINE_STEP)
    evaluate([best(p) + d for p in profiles for d in fine], "fine")
    return {p.name: float(best(p)) for p in profiles}


def evaluate(
    det: NabDetector,
    files: Sequence[NabFile],
    profiles: Sequence[Profile],
    thresholds: dict[str, float] | None = None,
    progress: Progress | None = None,
) -> Outcome:
    """Run ``det`` over ``files``; choose each profile's threshold unless ``thresholds`` gives it."""
    own = progress is None
    progress = progress or Progress(console=console, disable=True)
    chosen = thresholds is None
    try:
        if det.sweeps_raw:
            task = progress.add_task(f"{det.name}: detecting", total=len(files))
            raw = []
            for f in files:
                raw.append(det.run(f.ts_us, f.values, NO_DETECTION).score)
                progress.advance(task)
            if thresholds is None:
                truths = [f.truth for f in files]
                thresholds = {p.name: best_threshold(*sweep(truths, raw, p))[0] for p in profiles}
            runs = {p.name: [Run(s, s >= thresholds[p.name]) for s in raw] for p in profiles}
        else:
            if thresholds is None:
                thresholds = _grid_search(det, files, profiles, progress)
            by_t: dict[float, list[Run]] = {}
            for t in set(thresholds.values()):
                by_t[t] = _run_all(det, files, t)
            runs = {p.name: by_t[thresholds[p.name]] for p in profiles}
    finally:
        if own:
            progress.stop()
    scores = {p.name: _score_runs(files, runs[p.name], p) for p in profiles}
    return Outcome(det.name, dict(thresholds), list(files), runs, scores, chosen)


# -- output ------------------------------------------------------------------------------------


def csv_scores(run: Run, threshold: float, sweeps_raw: bool) -> F64:
    """The anomaly_score column: with NAB's rule (``score >= threshold``) it detects the alarms."""
    if sweeps_raw:
        return run.score
    below = min(math.nextafter(threshold, 0.0), 1.0)
    out: F64 = np.where(run.alarms, np.maximum(run.score, threshold), np.minimum(run.score, below))
    return out


def write_results(out: Path, outcome: Outcome, profile: Profile, sweeps_raw: bool) -> None:
    t = outcome.thresholds[profile.name]
    for f, run in zip(outcome.files, outcome.runs[profile.name], strict=True):
        path = out / outcome.detector / f.category / f"{outcome.detector}_{f.name}"
        path.parent.mkdir(parents=True, exist_ok=True)
        scores = csv_scores(run, t, sweeps_raw)
        label = (f.truth.window_of >= 0).astype(np.int64)
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["timestamp", "value", "anomaly_score", "label"])
            w.writerows(zip(f.timestamps, f.raw_values, map(repr, scores.tolist()), label.tolist(), strict=True))


def load_thresholds(path: Path, detectors: Sequence[str], profiles: Sequence[Profile]) -> dict[str, dict[str, float]]:
    raw: dict[str, dict[str, dict[str, float]]] = json.loads(path.read_text())
    out = {}
    for d in detectors:
        if d not in raw:
            raise SystemExit(f"{path} has no thresholds for {d}")
        missing = [p.name for p in profiles if p.name not in raw[d]]
        if missing:
            raise SystemExit(f"{path} has no {d} thresholds for {', '.join(missing)}")
        out[d] = {p.name: float(raw[d][p.name]["threshold"]) for p in profiles}
    return out


def save_thresholds(path: Path, outcomes: Sequence[Outcome], profiles: Sequence[Profile]) -> None:
    raw: dict[str, dict[str, dict[str, float]]] = json.loads(path.read_text()) if path.is_file() else {}
    for o in outcomes:
        raw[o.detector] = {
            p.name: {
                "threshold": o.thresholds[p.name],
                "score": o.total(p.name).score,
                "normalised": normalised(o.total(p.name)),
            }
            for p in profiles
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(raw, indent=2) + "\n")


def figures(outcomes: Sequence[Outcome], profiles: Sequence[Profile]) -> list[str]:
    lines = []
    for o in outcomes:
        for p in profiles:
            lines.append(f"nab_{p.slug}_{o.detector}: {normalised(o.total(p.name)):.1f} points")
    std = profiles[0]
    for o in outcomes:
        for c in o.categories():
            s = o.total(std.name, c)
            if s.perfect == s.null:
                lines.append(f"nab_{std.slug}_{o.detector}_{c}_raw: {s.score:.3f} raw")
            else:
                lines.append(f"nab_{std.slug}_{o.detector}_{c}: {normalised(s):.1f} points")
    for o in outcomes:
        for p in profiles:
            lines.append(f"nab_threshold_{p.slug}_{o.detector}: {float(o.thresholds[p.name])!r} score")
    return lines


def report(outcomes: Sequence[Outcome], profiles: Sequence[Profile], corpus: str, thresholds_from: str) -> str:
    files = outcomes[0].files if outcomes else []
    n_windows = sum(len(f.truth.windows) for f in files)
    out = [
        "# NAB scores",
        "",
        f"Corpus `{corpus}`: {len(files)} files, {n_windows} windows, {sum(f.truth.n for f in files):,} rows. "
        f"Thresholds {thresholds_from}.",
        "",
        "| detector | " + " | ".join(p.name for p in profiles) + " |",
        "| --- | " + " | ".join("---:" for _ in profiles) + " |",
    ]
    for o in outcomes:
        cells = [f"{normalised(o.total(p.name)):.1f} (t={o.thresholds[p.name]:.4g})" for p in profiles]
        out.append(f"| {o.detector} | " + " | ".join(cells) + " |")
    std = profiles[0]
    out += [
        "",
        f"Per category, {std.name} profile at the corpus threshold: normalised score (raw score), "
        "windows found / counted, false-positive rows. Categories without windows have only a raw score.",
        "",
        "| category | " + " | ".join(o.detector for o in outcomes) + " |",
        "| --- | " + " | ".join("---" for _ in outcomes) + " |",
    ]
    for c in outcomes[0].categories() if outcomes else []:
        cells = []
        for o in outcomes:
            s = o.total(std.name, c)
            head = "—" if s.perfect == s.null else f"{normalised(s):.1f}"
            cells.append(f"{head} ({s.score:.2f}), {s.found}/{s.found + s.missed}, {s.fp_rows} FP")
        out.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def plot(path: Path, outcomes: Sequence[Outcome], profiles: Sequence[Profile]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        console.log("[yellow]matplotlib is not installed: no plot")
        return False
    std = profiles[0]
    cats = outcomes[0].categories()
    scored = [c for c in cats if outcomes[0].total(std.name, c).perfect != outcomes[0].total(std.name, c).null]
    unscored = [c for c in cats if c not in scored]
    groups = [*scored, "all"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), width_ratios=[max(len(groups), 1), max(len(unscored), 1) + 1])
    width = 0.8 / max(len(outcomes), 1)
    for j, o in enumerate(outcomes):
        ys = [normalised(o.total(std.name, None if g == "all" else g)) for g in groups]
        xs = np.arange(len(groups)) + (j - (len(outcomes) - 1) / 2) * width
        bars = axes[0].bar(xs, ys, width, label=o.detector)
        axes[0].bar_label(bars, fmt="%.1f", fontsize=7)
        raws = [o.total(std.name, c).score for c in unscored]
        xs = np.arange(len(unscored)) + (j - (len(outcomes) - 1) / 2) * width
        axes[1].bar(xs, raws, width, label=o.detector)
    axes[0].set_xticks(np.arange(len(groups)), groups, rotation=20, ha="right", fontsize=8)
    axes[0].set_ylabel(f"normalised NAB score ({std.name})")
    axes[0].axhline(0, color="black", linewidth=0.5)
    axes[0].legend(fontsize=8)
    axes[1].set_xticks(np.arange(len(unscored)), unscored, rotation=20, ha="right", fontsize=8)
    axes[1].set_ylabel("raw score (false positives only)")
    axes[1].set_title("categories without windows", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# -- command line ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="DIR/<category>/<file>.csv")
    parser.add_argument("--labels", type=Path, required=True, help="combined_windows.json")
    parser.add_argument("--out", type=Path, required=True, help="results directory")
    parser.add_argument("--threshold-file", type=Path, help="thresholds to use if it exists, else where to save them")
    parser.add_argument("--detector", nargs="+", choices=sorted(DETECTORS), default=["windowed_gaussian", "cityops"])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="cityops detector configuration (TOML)")
    args = parser.parse_args(argv)

    profiles = load_profiles(args.labels.resolve().parent.parent / "profiles.json")
    files = load_corpus(args.data, args.labels)
    tfile: Path = args.threshold_file or args.out / "thresholds.json"
    reuse = args.threshold_file is not None and tfile.is_file()
    saved = load_thresholds(tfile, args.detector, profiles) if reuse else {}
    dets = [DETECTORS[name](args) for name in dict.fromkeys(args.detector)]
    outcomes = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        for det in dets:
            outcomes.append(evaluate(det, files, profiles, saved.get(det.name), progress))
    args.out.mkdir(parents=True, exist_ok=True)
    for det, o in zip(dets, outcomes, strict=True):
        write_results(args.out, o, profiles[0], det.sweeps_raw)
    if not reuse:
        save_thresholds(tfile, outcomes, profiles)
    source = f"from {tfile}" if reuse else f"chosen on this corpus, saved to {tfile}"
    (args.out / "report.md").write_text(report(outcomes, profiles, str(args.data), source))
    plot(args.out / "scores.png", outcomes, profiles)
    console.log(f"results in {args.out}; thresholds {source}")
    print("\n".join(figures(outcomes, profiles)))


if __name__ == "__main__":
    main()
