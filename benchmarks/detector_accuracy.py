"""Accuracy of the stream tier's detectors (``stream.detectors.Detector`` with the profiles of
``stream/profiles.toml``) on labelled real data and on the simulator's ground truth.

    python -m benchmarks.detector_accuracy [--skab DIR] [--gecco FILE] [--gecco-rows N]
        [--sim-scenario FILE] [--sim-hours H] [--sim-start RFC3339] [--profiles FILE]
        [--skab-channels pipe|all] [--grace ROWS] [--chunk ROWS] [--only skab|gecco|sim ...]

Every series runs strictly online: rows go through ``Detector.update`` in time order, ``--chunk``
rows per call (all of a row's series in one call), so a row's score depends only on the rows up
to it; one set of profiles for every file, no tuning per file. Progress and tables go to stderr;
the figures, one per line as ``name: value unit``, to stdout at the end.

Two views of a labelled file
----------------------------
The detectors raise one alarm per episode (``refractory``), so a row-level metric that wants
every anomalous row flagged punishes them for what they are built to do. Both views are reported:

*Rows* (the benchmarks' own metrics). A row is *flagged* when any of the file's series alarms at
it (``Scored.alarms``). Against the labels as given (1 = anomalous): precision, recall and F1 over
rows; SKAB's false alarm rate ``FAR = FP / (FP + TN)`` (share of normal rows flagged) and missing
alarm rate ``MAR = FN / (FN + TP)`` (share of anomalous rows not flagged), in %. GECCO's challenge
metric is F1 over rows of a per-row decision, for which the raw score fits better: a row counts
when any series' score is at or above that series' profile threshold (``gecco_row_f1``).

*Held* rows: each alarm is held for the rest of its episode. For a series with threshold ``t``, an
alarm at row ``i`` flags rows ``i .. k-1``, where ``k`` is the first row after ``i`` whose score
is below ``t / 2`` (the score level that the kernel's refractory period counts as quiet; a row
with no finite value scores 0 and so ends the hold). Vectorised: a row is held when its score is
at least ``t / 2`` and the series alarmed at or after its last row below ``t / 2``. A row is
flagged when any series holds it; the row metrics above are computed again on these flags
(``*_held``).

*Episode* rows (``*_episode``): each alarm flags its whole episode as the kernel keeps it (the
span during which the series cannot alarm again): from the alarm up to, not including, the
first row at which ``refractory`` readings in a row (rows without a finite value are no
readings) have scored below ``t / 2`` and ``refractory_s`` seconds have passed since the alarm;
to the end of the file if that never happens. What an operator sees as an open alert.

*Events* (NAB-style, per labelled segment; a segment is a maximal run of anomalous rows
``[a, b)``). A segment is detected when a flagged row falls in its detection window
``[a, max(b, a + grace))`` (``--grace`` rows: a segment shorter than the grace still gives the
detector ``grace`` rows from its start). Recall = detected / segments; delay = first flagged row
in the window minus ``a``, in rows (median and mean over detected segments); false alarms =
flagged rows outside every detection window, per 1,000 such rows. Figures pool every file
(segments, rows and alarms summed; delays pooled).

SKAB (``--skab DIR``: ``valve1/``, ``valve2/``, ``anomaly-free/``, ``;``-separated)
------------------------------------------------------------------------------------
Each file is a pipe-network station with a fresh detector: ``Pressure`` (bar, x100 to kPa) with the
``pipe_node``/``pressure_kpa`` profile and ``Volume Flow RateRMS`` (L/min, x0.06 to m3/h) with the
``pipe_node``/``flow_m3h`` profile (the units the profiles' resolutions are in); with
``--skab-channels all`` (the default) also the accelerometers, motor current and voltage and the two
temperatures, as device class ``skab`` (no profile: the file's ``[defaults]``). Labels: ``anomaly``
(missing in ``anomaly-free/``: all normal). Times (no zone) are taken as UTC.

GECCO 2018 (``--gecco FILE``, the challenge's ``train.csv``)
------------------------------------------------------------
One water-quality station: ``Cl`` -> ``chlorine_mgl``, ``pH`` -> ``ph``, ``Redox`` -> ``redox_mv``
(no metric profile: the ``water_quality`` class profile), ``Leit`` -> ``conductivity_uscm``,
``Trueb`` -> ``turbidity_ntu``, ``Tp`` -> ``temperature_c``, all of device class
``water_quality``. Labels: ``EVENT``. Missing values go through as NaN (the kernel scores them 0
and skips them). Times (no zone) are taken as UTC.

Simulator (``--sim-scenario FILE --sim-hours H``)
-------------------------------------------------
The deterministic simulator without I/O (``firmware_sim.engine.Simulation``) from a fixed start
(``--sim-start``; default the scenario's start if it is an absolute time, else
2026-01-15T00:00:00Z), advanced 5 simulated minutes at a time. Every reading's finite values
(rounded to 4 decimals, as the devices publish them; in sampling order, stamped with the device's
clock, skew included) go into one detector, each series ``(device, metric)`` bound to its device
class and metric (``Detector.bind``, as the stream service does for a new series) under the
``--profiles`` file. Alarms become ``firmware_sim.scoring.AlertPoint`` and are scored with
``firmware_sim.scoring.score`` over ``[start, start + H)``: recall (overall, incidents, sensor
faults, per kind), false alarms per 1,000 device-hours, median delay in seconds and readings.
Staleness alerts (the service's timer) are not emitted: dropouts carry no metrics and are not
scored. A table of the false alarms (alarms that match no event) by device class, metric and top
detector (``Kind(scored.top[i]).label``) shows where to tune the profiles; its 15 largest rows are
also printed as ``sim_fa_<class>_<metric>_<detector>`` figures.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cityops.core.contracts import GroundTruth, TruthCategory, to_us
from firmware_sim import Simulation, build_city, load
from firmware_sim.scenario import INCIDENTS
from firmware_sim.scoring import AlertPoint, Score, score
from stream.detectors import Detector, Kind
from stream.profiles import DEFAULT_FILE, DetectorConfig

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
BOOL = npt.NDArray[np.bool_]

console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
DEFAULT_SKAB = SHARED / "skab"
DEFAULT_GECCO = SHARED / "gecco2018" / "train.csv"
DEFAULT_SCENARIO = ROOT / "firmware_sim" / "scenarios" / "demo.toml"
DEFAULT_SIM_START = "2026-01-15T00:00:00+00:00"
SIM_STEP_US = 300_000_000  # simulated time per advance (and per detector call)
HOUR_US = 3_600_000_000
TOP_FALSE_ALARMS = 15
BENCHMARKS = ("skab", "gecco", "sim")


@dataclass(frozen=True)
class Channel:
    """A column of a labelled file and the series it becomes: device class, metric, unit factor."""

    column: str
    kind: str
    metric: str
    scale: float = 1.0


SKAB_PIPE = (
    Channel("Pressure", "pipe_node", "pressure_kpa", 100.0),  # bar -> kPa
    Channel("Volume Flow RateRMS", "pipe_node", "flow_m3h", 0.06),  # L/min -> m3/h
)
SKAB_OTHER = tuple(
    Channel(c, "skab", c.lower())
    for c in ("Accelerometer1RMS", "Accelerometer2RMS", "Current", "Voltage", "Temperature", "Thermocouple")
)
GECCO_CHANNELS = (
    Channel("Cl", "water_quality", "chlorine_mgl"),
    Channel("pH", "water_quality", "ph"),
    Channel("Redox", "water_quality", "redox_mv"),
    Channel("Leit", "water_quality", "conductivity_uscm"),
    Channel("Trueb", "water_quality", "turbidity_ntu"),
    Channel("Tp", "water_quality", "temperature_c"),
)


# -- scoring -----------------------------------------------------------------------------------


def segments(labels: BOOL) -> list[tuple[int, int]]:
    """Maximal runs of True as half-open row ranges ``[a, b)``."""
    edges = np.diff(np.concatenate([[0], labels.astype(np.int8), [0]]))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return [(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]


@dataclass
class RowScore:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: RowScore) -> RowScore:
        return RowScore(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r > 0 else 0.0

    @property
    def far_pct(self) -> float:
        """False alarm rate: share of normal rows flagged, %."""
        return 100.0 * self.fp / (self.fp + self.tn) if self.fp + self.tn else float("nan")

    @property
    def mar_pct(self) -> float:
        """Missing alarm rate: share of anomalous rows not flagged, %."""
        return 100.0 * self.fn / (self.fn + self.tp) if self.fn + self.tp else float("nan")


def row_score(labels: BOOL, flagged: BOOL) -> RowScore:
    return RowScore(
        int(np.sum(labels & flagged)),
        int(np.sum(~labels & flagged)),
        int(np.sum(labels & ~flagged)),
        int(np.sum(~labels & ~flagged)),
    )


@dataclass
class EventScore:
    segments: int = 0
    detected: int = 0
    delays: list[int] = field(default_factory=list)  # rows, per detected segment
    false_alarms: int = 0  # flagged rows outside every detection window
    outside_rows: int = 0  # rows outside every detection window

    def __add__(self, other: EventScore) -> EventScore:
        return EventScore(
            self.segments + other.segments,
            self.detected + other.detected,
            self.delays + other.delays,
            self.false_alarms + other.false_alarms,
            self.outside_rows + other.outside_rows,
        )

    @property
    def recall(self) -> float:
        return self.detected / self.segments if self.segments else float("nan")

    @property
    def median_delay(self) -> float:
        return float(statistics.median(self.delays)) if self.delays else float("nan")

    @property
    def mean_delay(self) -> float:
        return float(statistics.fmean(self.delays)) if self.delays else float("nan")

    @property
    def false_alarms_per_1000(self) -> float:
        return 1000.0 * self.false_alarms / self.outside_rows if self.outside_rows else float("nan")


def windows(labels: BOOL, grace: int) -> list[tuple[int, int]]:
    """Each segment's detection window ``[a, max(b, a + grace))``, cut at the end of the file."""
    n = labels.shape[0]
    return [(a, min(n, max(b, a + grace))) for a, b in segments(labels)]


def inside_windows(labels: BOOL, grace: int) -> BOOL:
    inside = np.zeros(labels.shape[0], np.bool_)
    for a, end in windows(labels, grace):
        inside[a:end] = True
    return inside


def event_score(labels: BOOL, flagged: BOOL, grace: int) -> EventScore:
    """Per-segment detection: see the module docstring."""
    inside = inside_windows(labels, grace)
    out = EventScore()
    for a, end in windows(labels, grace):
        out.segments += 1
        hits = np.flatnonzero(flagged[a:end])
        if hits.size:
            out.detected += 1
            out.delays.append(int(hits[0]))
    out.false_alarms = int(np.sum(flagged & ~inside))
    out.outside_rows = int(np.sum(~inside))
    return out


def held(score: F64, alarms: BOOL, thresholds: F64) -> BOOL:
    """Per series (columns): the rows from each alarm until the score first drops below half the
    series' threshold."""
    n = score.shape[0]
    idx = np.arange(n, dtype=np.int64)[:, None]
    high = score >= thresholds[None, :] / 2.0
    last_alarm = np.maximum.accumulate(np.where(alarms, idx, -1), axis=0)
    last_low = np.maximum.accumulate(np.where(high, -1, idx), axis=0)
    out: BOOL = high & (last_alarm > last_low)
    return out


def episodes(
    score: F64, alarms: BOOL, finite: BOOL, ts_us: I64, thresholds: F64, refractory: I64, refractory_s: F64
) -> BOOL:
    """Per series (columns): the rows of each alarm's episode as the kernel keeps it, from the
    alarm to the row before the one at which ``refractory`` readings in a row (rows without a
    finite value are no readings) have scored below half the threshold and ``refractory_s``
    seconds have passed since the alarm."""
    n, m = score.shape
    out = np.zeros((n, m), np.bool_)
    for j in range(m):
        rows = np.flatnonzero(finite[:, j])
        if not rows.size:
            continue
        low = score[rows, j] < thresholds[j] / 2.0
        k = np.arange(rows.size, dtype=np.int64)
        quiet = k - np.maximum.accumulate(np.where(low, -1, k))  # readings in a row below half, up to k
        ends = np.flatnonzero(quiet >= max(1, int(refractory[j])))
        ts = ts_us[rows]
        for i in np.flatnonzero(alarms[rows, j]).tolist():
            e = int(np.searchsorted(ends, i, side="right"))
            while e < ends.size and ts[ends[e]] - ts[i] < refractory_s[j] * 1e6:
                e += 1
            stop = int(rows[ends[e]]) if e < ends.size else n
            out[int(rows[i]) : stop, j] = True
    return out


# -- running the detector over a table -----------------------------------------------------------


@dataclass
class Online:
    """One table (rows x series) through a detector: per cell score, alarm and top detector."""

    score: F64
    alarms: BOOL
    top: I64
    finite: BOOL  # the cell had a finite value
    ts_us: I64  # per row
    thresholds: F64  # per series
    refractory: I64  # per series
    refractory_s: F64  # per series

    @property
    def flagged(self) -> BOOL:
        out: BOOL = np.any(self.alarms, axis=1)
        return out

    @property
    def over_threshold(self) -> BOOL:
        out: BOOL = np.any(self.score >= self.thresholds[None, :], axis=1)
        return out

    @property
    def held(self) -> BOOL:
        out: BOOL = np.any(held(self.score, self.alarms, self.thresholds), axis=1)
        return out

    @property
    def episode(self) -> BOOL:
        e = episodes(
            self.score, self.alarms, self.finite, self.ts_us, self.thresholds, self.refractory, self.refractory_s
        )
        out: BOOL = np.any(e, axis=1)
        return out


def run_online(
    config: DetectorConfig,
    channels: Sequence[Channel],
    ts_us: I64,
    values: F64,
    chunk: int = 512,
    on_chunk: Callable[[int], None] | None = None,
) -> Online:
    """Every row of ``values`` (rows x channels) in time order, ``chunk`` rows per ``update``
    (``on_chunk`` gets the number of rows after each)."""
    n, m = values.shape
    det = Detector(config, capacity=max(1, m))
    for sid, ch in enumerate(channels):
        det.bind(sid, ch.kind, ch.metric)
    score = np.zeros((n, m))
    alarms = np.zeros((n, m), np.bool_)
    top = np.full((n, m), -1, np.int64)
    series = np.arange(m, dtype=np.int64)
    for a in range(0, n, max(1, chunk)):
        b = min(n, a + max(1, chunk))
        scored = det.update(
            np.tile(series, b - a),
            np.repeat(ts_us[a:b], m),
            np.ascontiguousarray(values[a:b]).ravel(),
        )
        score[a:b] = scored.score.reshape(b - a, m)
        alarms[a:b] = scored.alarms.reshape(b - a, m)
        top[a:b] = scored.top.reshape(b - a, m)
        if on_chunk is not None:
            on_chunk(b - a)
    profiles = [det.profile(sid) for sid in range(m)]
    return Online(
        score,
        alarms,
        top,
        np.isfinite(values),
        ts_us,
        np.array([p.threshold for p in profiles], np.float64),
        np.array([p.refractory for p in profiles], np.int64),
        np.array([p.refractory_s for p in profiles], np.float64),
    )


def parse_us(stamps: Sequence[str]) -> I64:
    """``YYYY-MM-DD HH:MM:SS`` without a zone (taken as UTC) to integer microseconds."""
    out: I64 = np.array([s.strip().replace(" ", "T") for s in stamps], dtype="datetime64[us]").astype(np.int64)
    return out


def _float(raw: str | None) -> float:
    try:
        return float(raw) if raw not in (None, "", "NA", "NaN", "nan") else math.nan
    except ValueError:
        return math.nan


def _true(raw: str | None) -> bool:
    return (raw or "").strip().lower() in ("1", "1.0", "true")


@dataclass(frozen=True)
class LabelledTable:
    name: str
    group: str
    channels: tuple[Channel, ...]
    ts_us: I64
    values: F64
    labels: BOOL


def read_table(
    path: Path,
    channels: Sequence[Channel],
    *,
    time_column: str,
    label_column: str,
    delimiter: str,
    group: str = "",
    limit: int = 0,
) -> LabelledTable:
    with path.open(newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = reader.fieldnames or []
        missing = [c for c in (time_column, *(ch.column for ch in channels)) if c not in header]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}")
        rows: list[dict[str, str]] = []
        for row in reader:
            rows.append(row)
            if limit and len(rows) >= limit:
                break
    ts = parse_us([r[time_column] for r in rows])
    if ts.size > 1 and np.any(np.diff(ts) < 0):
        raise ValueError(f"{path}: times go backwards")
    values = np.array([[_float(r[c.column]) * c.scale for c in channels] for r in rows], np.float64)
    values = values.reshape(len(rows), len(channels))
    labels = np.array([_true(r.get(label_column)) for r in rows], np.bool_)
    return LabelledTable(path.name, group, tuple(channels), ts, values, labels)


# -- labelled results ----------------------------------------------------------------------------


@dataclass
class TableResult:
    table: LabelledTable
    online: Online
    grace: int

    @property
    def rows(self) -> int:
        return int(self.table.labels.shape[0])

    def row_alarms(self) -> RowScore:
        return row_score(self.table.labels, self.online.flagged)

    def row_held(self) -> RowScore:
        return row_score(self.table.labels, self.online.held)

    def row_episode(self) -> RowScore:
        return row_score(self.table.labels, self.online.episode)

    def row_over_threshold(self) -> RowScore:
        return row_score(self.table.labels, self.online.over_threshold)

    def events(self) -> EventScore:
        return event_score(self.table.labels, self.online.flagged, self.grace)

    def alarm_sources(self) -> Counter[tuple[str, str, bool]]:
        """Alarms by (channel, top detector, inside a detection window)."""
        inside = inside_windows(self.table.labels, self.grace)
        out: Counter[tuple[str, str, bool]] = Counter()
        for i, j in zip(*np.nonzero(self.online.alarms), strict=True):
            top = int(self.online.top[i, j])
            out[(self.table.channels[j].column, Kind(top).label if top >= 0 else "-", bool(inside[i]))] += 1
        return out


def _sum_rows(results: Iterable[TableResult], pick: Callable[[TableResult], RowScore]) -> RowScore:
    total = RowScore()
    for r in results:
        total = total + pick(r)
    return total


def _sum_events(results: Iterable[TableResult]) -> EventScore:
    total = EventScore()
    for r in results:
        total = total + r.events()
    return total


def row_lines(prefix: str, s: RowScore) -> list[str]:
    return [
        f"{prefix}_f1: {s.f1:.3f} ratio",
        f"{prefix}_precision: {s.precision:.3f} ratio",
        f"{prefix}_recall: {s.recall:.3f} ratio",
        f"{prefix}_far: {s.far_pct:.2f} %",
        f"{prefix}_mar: {s.mar_pct:.2f} %",
    ]


def event_lines(prefix: str, e: EventScore) -> list[str]:
    return [
        f"{prefix}_segments: {e.segments} segments",
        f"{prefix}_segment_recall: {e.recall:.3f} ratio",
        f"{prefix}_median_delay: {e.median_delay:.1f} rows",
        f"{prefix}_mean_delay: {e.mean_delay:.1f} rows",
        f"{prefix}_false_alarms: {e.false_alarms} alarms",
        f"{prefix}_false_alarms_per_1000_rows: {e.false_alarms_per_1000:.3f} alarms",
    ]


def sources_table(title: str, results: Iterable[TableResult]) -> Table:
    counts: Counter[tuple[str, str, bool]] = Counter()
    for r in results:
        counts.update(r.alarm_sources())
    pairs = sorted({(c, d) for c, d, _ in counts}, key=lambda k: -(counts[(*k, True)] + counts[(*k, False)]))
    t = Table(title=title)
    for col in ("channel", "top detector", "in segment", "outside"):
        t.add_column(col, justify="right" if col in ("in segment", "outside") else "left")
    for c, d in pairs:
        t.add_row(c, d, str(counts[(c, d, True)]), str(counts[(c, d, False)]))
    return t


# -- SKAB ----------------------------------------------------------------------------------------


def skab_files(root: Path) -> list[tuple[str, Path]]:
    files = sorted(root.glob("*/*.csv"), key=lambda p: (p.parent.name, int(p.stem) if p.stem.isdigit() else 0, p.stem))
    if not files:
        raise FileNotFoundError(f"no SKAB files (<group>/<file>.csv) under {root}")
    return [(p.parent.name, p) for p in files]


def run_skab(
    root: Path, config: DetectorConfig, channels: Sequence[Channel], grace: int, chunk: int, progress: Progress
) -> list[TableResult]:
    files = skab_files(root)
    task = progress.add_task("SKAB files", total=len(files))
    out = []
    for group, path in files:
        table = read_table(path, channels, time_column="datetime", label_column="anomaly", delimiter=";", group=group)
        out.append(TableResult(table, run_online(config, table.channels, table.ts_us, table.values, chunk), grace))
        progress.advance(task)
    return out


def skab_report(results: Sequence[TableResult]) -> tuple[list[Table], list[str]]:
    alarms = _sum_rows(results, TableResult.row_alarms)
    kept = _sum_rows(results, TableResult.row_held)
    events = _sum_events(results)
    lines = [
        f"skab_files: {len(results)} files",
        f"skab_rows: {sum(r.rows for r in results)} rows",
        *row_lines("skab_row", alarms),
        *row_lines("skab_row_held", kept),
        *row_lines("skab_row_episode", _sum_rows(results, TableResult.row_episode)),
        *event_lines("skab", events),
    ]
    t = Table(title="SKAB by group (rows flagged by alarms; events with the grace)")
    for col in ("group", "files", "rows", "row F1", "held F1", "segments", "detected", "median delay", "FA", "FA/1k"):
        t.add_column(col, justify="left" if col == "group" else "right")
    for group in sorted({r.table.group for r in results}):
        mine = [r for r in results if r.table.group == group]
        e = _sum_events(mine)
        t.add_row(
            group,
            str(len(mine)),
            str(sum(r.rows for r in mine)),
            f"{_sum_rows(mine, TableResult.row_alarms).f1:.3f}",
            f"{_sum_rows(mine, TableResult.row_held).f1:.3f}",
            str(e.segments),
            str(e.detected),
            f"{e.median_delay:.1f}",
            str(e.false_alarms),
            f"{e.false_alarms_per_1000:.2f}",
        )
        lines.append(f"skab_{group.replace('-', '_')}_false_alarms_per_1000_rows: {e.false_alarms_per_1000:.3f} alarms")
    return [t, sources_table("SKAB alarms by channel and top detector", results)], lines


# -- GECCO ---------------------------------------------------------------------------------------


def run_gecco(
    path: Path, config: DetectorConfig, grace: int, chunk: int, limit: int, progress: Progress
) -> TableResult:
    table = read_table(path, GECCO_CHANNELS, time_column="Time", label_column="EVENT", delimiter=",", limit=limit)
    task = progress.add_task("GECCO 2018 rows", total=len(table.labels))
    online = run_online(
        config, table.channels, table.ts_us, table.values, chunk, lambda rows: progress.advance(task, rows)
    )
    return TableResult(table, online, grace)


def gecco_report(result: TableResult) -> tuple[list[Table], list[str]]:
    over = result.row_over_threshold()
    lines = [
        f"gecco_rows: {result.rows} rows",
        f"gecco_event_rows: {int(result.table.labels.sum())} rows",
        f"gecco_row_f1: {over.f1:.3f} ratio",
        f"gecco_row_precision: {over.precision:.3f} ratio",
        f"gecco_row_recall: {over.recall:.3f} ratio",
        f"gecco_row_f1_alarms: {result.row_alarms().f1:.3f} ratio",
        *row_lines("gecco_row_held", result.row_held()),
        *row_lines("gecco_row_episode", result.row_episode()),
        *event_lines("gecco", result.events()),
    ]
    t = Table(title="GECCO 2018 per channel (rows with score >= threshold; alarms)")
    for col in ("channel", "metric", "rows >= t", "of them in events", "alarms", "alarms in segments"):
        t.add_column(col, justify="left" if col in ("channel", "metric") else "right")
    labels = result.table.labels
    inside = inside_windows(labels, result.grace)
    for j, ch in enumerate(result.table.channels):
        over_j = result.online.score[:, j] >= result.online.thresholds[j]
        al = result.online.alarms[:, j]
        t.add_row(
            ch.column,
            ch.metric,
            str(int(over_j.sum())),
            str(int((over_j & labels).sum())),
            str(int(al.sum())),
            str(int((al & inside).sum())),
        )
    return [t, sources_table("GECCO alarms by channel and top detector", [result])], lines


# -- simulator -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimAlarm:
    device_id: str
    kind: str  # device class
    metric: str
    ts_us: int
    detector: str


@dataclass(frozen=True)
class Judged:
    """An alarm as ``firmware_sim.scoring.score`` judges it (the same matching rule)."""

    alarm: SimAlarm
    matched: tuple[str, ...]  # ids of the events it matches; empty: a false alarm
    device_event: bool  # its device had some scored event then (another metric, a dropout, a skew)
    class_incident: bool  # an incident was under way on some device of the same class then

    @property
    def false(self) -> bool:
        return not self.matched


@dataclass
class SimResult:
    score: Score
    judged: list[Judged]  # every alarm in the scored span, in time order
    truths: list[GroundTruth]
    intervals_s: dict[str, float]
    span_us: tuple[int, int]
    values: int
    not_finite: int

    @property
    def false(self) -> list[Judged]:
        return [j for j in self.judged if j.false]


def sim_start(scenario_start: str, override: str | None) -> int:
    """The run's fixed start: ``override``, else the scenario's if absolute, else the default."""
    text = override or (scenario_start if scenario_start not in ("now",) and not scenario_start.startswith("-") else "")
    moment = datetime.fromisoformat(text or DEFAULT_SIM_START)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(to_us(moment))


def _scored_events(truths: Iterable[GroundTruth], span_us: tuple[int, int]) -> list[GroundTruth]:
    lo, hi = span_us
    return [t for t in truths if t.category is not TruthCategory.PLATFORM and t.start_us < hi and t.end_us > lo]


def judge(
    alarms: Sequence[SimAlarm],
    truths: Sequence[GroundTruth],
    intervals_s: dict[str, float],
    class_of: dict[str, str],
    span_us: tuple[int, int],
    grace_readings: int = 2,
) -> list[Judged]:
    """Each alarm in the span with the events it matches by ``firmware_sim.scoring.score``'s rule
    (an event of its device and metric, from the event's start to ``grace_readings`` of the
    device's readings after its end), and context for the false ones."""
    lo, hi = span_us
    scored = [t for t in _scored_events(truths, span_us) if t.metrics]
    every = _scored_events(truths, span_us)
    by_key: dict[tuple[str, str], list[GroundTruth]] = {}
    by_device: dict[str, list[GroundTruth]] = {}
    incidents: dict[str, list[GroundTruth]] = {}
    for t in scored:
        for d in t.device_ids:
            for m in t.metrics:
                by_key.setdefault((d, m), []).append(t)
    for t in every:
        for d in t.device_ids:
            by_device.setdefault(d, []).append(t)
        if t.category is TruthCategory.INCIDENT:
            for c in {class_of.get(d, "") for d in t.device_ids}:
                incidents.setdefault(c, []).append(t)
    out = []
    for a in sorted(alarms, key=lambda a: a.ts_us):
        if not (lo <= a.ts_us < hi) or a.device_id not in intervals_s:
            continue
        grace = int(grace_readings * intervals_s[a.device_id] * 1e6)

        def active(ts: Iterable[GroundTruth], a: SimAlarm = a, grace: int = grace) -> list[GroundTruth]:
            return [t for t in ts if t.start_us <= a.ts_us < t.end_us + grace]

        matched = tuple(t.event_id for t in active(by_key.get((a.device_id, a.metric), [])))
        out.append(
            Judged(
                a,
                matched,
                bool(active(by_device.get(a.device_id, []))),
                bool(active(incidents.get(a.kind, []))),
            )
        )
    return out


def run_sim(
    scenario_path: Path, hours: float, config: DetectorConfig, start: str | None, progress: Progress
) -> SimResult:
    scenario = load(scenario_path)
    t0 = sim_start(scenario.start, start)
    end = t0 + int(hours * HOUR_US)
    city = build_city(scenario)
    sim = Simulation(scenario, city, t0)
    det = Detector(config)
    # Series ids per (device class, metric): one per device of the fleet, bound on first sight.
    sids: dict[tuple[str, str], I64] = {}
    keys: list[tuple[str, str, str]] = []  # sid -> (device, class, metric)
    truths: list[GroundTruth] = []
    alarms: list[SimAlarm] = []
    values_seen = not_finite = 0
    task = progress.add_task(f"simulating {scenario_path.name}", total=round(hours * 3600))
    cursor = t0
    while cursor < end:
        cut = min(end, cursor + SIM_STEP_US)
        with np.errstate(divide="ignore", invalid="ignore"):  # the simulator divides by a dead feeder's 0 V
            adv = sim.advance(cut - 1)
        truths += adv.started
        parts_s: list[I64] = []
        parts_t: list[I64] = []
        parts_sample: list[I64] = []
        parts_v: list[F64] = []
        for batch in adv.batches:
            fleet = batch.fleet
            kind = str(fleet.kind)
            matrix = np.round(batch.values, 4)
            for j, metric in enumerate(batch.metrics):
                table = sids.get((kind, metric))
                if table is None:
                    table = np.arange(len(keys), len(keys) + len(fleet), dtype=np.int64)
                    for d, sid in zip(fleet.ids, table.tolist(), strict=True):
                        det.bind(sid, kind, metric)
                        keys.append((d, kind, metric))
                    sids[(kind, metric)] = table
                col = matrix[:, j]
                present = ~np.isnan(col)
                finite = np.isfinite(col)
                values_seen += int(present.sum())
                not_finite += int((present & ~finite).sum())
                parts_s.append(table[batch.idx[finite]])
                parts_t.append(batch.ts_us[finite])
                parts_sample.append(batch.sample_us[finite])
                parts_v.append(col[finite])
        if parts_s:
            # In the order the devices sent them (sampling time; a batch is one kind's readings in
            # that order), stamped with the time the device reports (clock skew included), as the
            # service sees them.
            series = np.concatenate(parts_s)
            ts = np.concatenate(parts_t)
            vals = np.concatenate(parts_v)
            order = np.argsort(np.concatenate(parts_sample), kind="stable")
            series, ts, vals = series[order], ts[order], vals[order]
            scored = det.update(series, ts, vals)
            for i in np.flatnonzero(scored.alarms).tolist():
                device, kind, metric = keys[int(series[i])]
                top = int(scored.top[i])
                alarms.append(SimAlarm(device, kind, metric, int(ts[i]), Kind(top).label if top >= 0 else "-"))
        progress.update(task, completed=round((cut - t0) / 1e6))
        cursor = cut
    intervals = {d: f.interval_s for f in city.fleets.values() for d in f.ids}
    span = (t0, end)
    result = score(
        truths, [AlertPoint(a.device_id, a.metric, a.ts_us) for a in alarms], intervals_s=intervals, span_us=span
    )
    class_of = {d: str(f.kind) for f in city.fleets.values() for d in f.ids}
    judged = judge(alarms, truths, intervals, class_of, span)
    false = sum(j.false for j in judged)
    if false != result.false_alarms:  # the two matching rules have drifted apart
        console.log(f"[yellow]false alarms: {false} here, {result.false_alarms} by firmware_sim.scoring")
    return SimResult(result, judged, truths, intervals, span, values_seen, not_finite)


def sim_report(r: SimResult) -> tuple[list[Table], list[str]]:
    s = r.score
    incident_kinds = {k.value for k in INCIDENTS}

    def recall_of(kinds: Iterable[str]) -> tuple[int, int]:
        ks = [s.by_kind[k] for k in kinds if k in s.by_kind]
        return sum(k.detected for k in ks), sum(k.events for k in ks)

    inc = recall_of(k for k in s.by_kind if k in incident_kinds)
    flt = recall_of(k for k in s.by_kind if k not in incident_kinds)
    hours = (r.span_us[1] - r.span_us[0]) / HOUR_US
    lines = [
        f"sim_hours: {hours:g} h",
        f"sim_devices: {len(r.intervals_s)} devices",
        f"sim_device_hours: {s.device_hours:.1f} h",
        f"sim_values: {r.values} values",
        f"sim_values_not_finite: {r.not_finite} values",
        f"sim_events: {s.events} events",
        f"sim_detected: {s.detected} events",
        f"sim_recall: {s.recall:.3f} ratio",
        f"sim_recall_incidents: {inc[0] / inc[1] if inc[1] else float('nan'):.3f} ratio",
        f"sim_recall_sensor_faults: {flt[0] / flt[1] if flt[1] else float('nan'):.3f} ratio",
        f"sim_alerts: {s.alerts} alerts",
        f"sim_true_alerts: {s.true_alerts} alerts",
        f"sim_false_alarms: {s.false_alarms} alerts",
        f"sim_false_alarms_per_1000_device_hours: {s.false_alarms_per_1000_device_hours:.2f} alerts",
        f"sim_median_detection_delay: {s.median_delay_s:.1f} s",
        f"sim_median_detection_delay_readings: {s.median_delay_readings:.1f} readings",
        f"sim_not_scorable_events: {s.not_scorable} events",
    ]
    for kind, k in sorted(s.by_kind.items()):
        lines.append(f"sim_recall_{kind}: {k.recall:.3f} ratio")
        lines.append(f"sim_events_{kind}: {k.events} events")
    first: dict[str, str] = {}  # event id -> the detector of its first matching alarm
    for j in r.judged:
        for e in j.matched:
            first.setdefault(e, j.alarm.detector)
    by_kind_det: dict[str, Counter[str]] = {}
    for t in _scored_events(r.truths, r.span_us):
        if t.metrics and t.event_id in first:
            by_kind_det.setdefault(t.kind, Counter())[first[t.event_id]] += 1
    t_kind = Table(title="Simulator: events by kind")
    for col in ("kind", "events", "detected", "recall", "median delay s", "first detected by"):
        t_kind.add_column(col, justify="left" if col in ("kind", "first detected by") else "right")
    for kind, k in sorted(s.by_kind.items()):
        delay = statistics.median(k.delays_s) if k.delays_s else float("nan")
        dets = ", ".join(f"{d} {n}" for d, n in by_kind_det.get(kind, Counter()).most_common())
        t_kind.add_row(kind, str(k.events), str(k.detected), f"{k.recall:.3f}", f"{delay:.1f}", dets)

    counts: Counter[tuple[str, str, str]] = Counter()
    on_device: Counter[tuple[str, str, str]] = Counter()
    in_class: Counter[tuple[str, str, str]] = Counter()
    devices: dict[tuple[str, str, str], set[str]] = {}
    for j in r.false:
        key = (j.alarm.kind, j.alarm.metric, j.alarm.detector)
        counts[key] += 1
        on_device[key] += j.device_event
        in_class[key] += j.class_incident
        devices.setdefault(key, set()).add(j.alarm.device_id)
    total = sum(counts.values())
    t_fa = Table(
        title=f"Simulator: false alarms by device class, metric and top detector ({total} in all). "
        "'device event': its device had another event then; 'class incident': an incident was under way "
        "on a device of the same class"
    )
    for col in ("class", "metric", "detector", "false alarms", "share", "devices", "per 1k device-h"):
        t_fa.add_column(col, justify="left" if col in ("class", "metric", "detector") else "right")
    t_fa.add_column("device event", justify="right")
    t_fa.add_column("class incident", justify="right")
    for key, n in counts.most_common():
        t_fa.add_row(
            *key,
            str(n),
            f"{100 * n / total:.1f} %",
            str(len(devices[key])),
            f"{1000 * n / s.device_hours:.1f}",
            str(on_device[key]),
            str(in_class[key]),
        )
    for (kind, metric, det), n in counts.most_common(TOP_FALSE_ALARMS):
        lines.append(f"sim_fa_{kind}_{metric}_{det}: {n} alerts")
    return [t_kind, t_fa], lines


# -- command line --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.detector_accuracy", description=__doc__.split("\n")[0])
    ap.add_argument("--skab", type=Path, default=DEFAULT_SKAB, help="SKAB data directory")
    ap.add_argument("--skab-channels", choices=("pipe", "all"), default="all")
    ap.add_argument("--gecco", type=Path, default=DEFAULT_GECCO, help="GECCO 2018 train.csv")
    ap.add_argument("--gecco-rows", type=int, default=0, help="only the first N rows (0: all)")
    ap.add_argument("--sim-scenario", type=Path, default=DEFAULT_SCENARIO)
    ap.add_argument("--sim-hours", type=float, default=48.0)
    ap.add_argument("--sim-start", default=None, help="RFC 3339 start of the simulation (fixed: deterministic)")
    ap.add_argument("--profiles", type=Path, default=DEFAULT_FILE, help="detector profiles (TOML)")
    ap.add_argument("--grace", type=int, default=5, help="rows a segment's detection window lasts at least")
    ap.add_argument("--chunk", type=int, default=512, help="rows per detector call (SKAB, GECCO)")
    ap.add_argument("--only", choices=BENCHMARKS, nargs="+", default=list(BENCHMARKS))
    args = ap.parse_args(argv)
    if args.sim_hours <= 0:
        ap.error("--sim-hours must be positive")
    if args.grace < 1 or args.chunk < 1:
        ap.error("--grace and --chunk must be at least 1")
    return args


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def run(args: argparse.Namespace) -> Iterator[tuple[list[Table], list[str]]]:
    config = DetectorConfig.load(args.profiles)
    console.log(f"profiles: {config.source}")
    with _progress() as progress:
        if "skab" in args.only:
            channels = SKAB_PIPE + (SKAB_OTHER if args.skab_channels == "all" else ())
            yield skab_report(run_skab(args.skab, config, channels, args.grace, args.chunk, progress))
        if "gecco" in args.only:
            yield gecco_report(run_gecco(args.gecco, config, args.grace, args.chunk, args.gecco_rows, progress))
        if "sim" in args.only:
            yield sim_report(run_sim(args.sim_scenario, args.sim_hours, config, args.sim_start, progress))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    lines: list[str] = []
    for tables, figures in run(args):
        for t in tables:
            console.print(t)
        lines += figures
    print("\n".join(lines))


if __name__ == "__main__":
    main()
