"""The NAB harness: scoring rules on hand-built files, strictly online detectors, and the command
line end to end on a tiny synthetic corpus. Needs no stack."""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks import nab
from benchmarks._nab_scoring import (
    BOOL,
    F64,
    I64,
    NO_DETECTION,
    PROFILES,
    best_threshold,
    normalised,
    probation,
    scaled_sigmoid,
    score_file,
    sweep,
    total,
    truth,
)

STANDARD, LOW_FP, LOW_FN = PROFILES
N = 1000  # probation: rows 0..149
WINDOW = (400, 499)  # 100 rows


def fire(*rows: int, n: int = N) -> BOOL:
    d = np.zeros(n, np.bool_)
    d[list(rows)] = True
    return d


def sigma(x: float) -> float:
    return 2 / (1 + math.exp(5 * x)) - 1


# -- scoring rules ---------------------------------------------------------------------------------


def test_scaled_sigmoid() -> None:
    s = scaled_sigmoid(np.array([-1.0, -0.5, 0.0, 1.0, 2.99, 3.0, 10.0]))
    assert s[0] == pytest.approx(0.98661, abs=1e-5)
    assert s[1] == pytest.approx(0.84828, abs=1e-5)
    assert s[2] == 0.0
    assert s[3] == pytest.approx(-0.98661, abs=1e-5)
    assert s[4] > -1.0
    assert s[5] == s[6] == -1.0


def test_probation_length() -> None:
    assert probation(1000) == 150
    assert probation(1127) == 169
    assert probation(4032) == 604
    assert probation(22_695) == 750


def test_detection_at_a_windows_first_row_is_worth_tp() -> None:
    t = truth(N, [WINDOW])
    assert score_file(t, fire(400), STANDARD).score == pytest.approx(1.0)


def test_later_detection_is_worth_less_by_the_scaled_sigmoid() -> None:
    t = truth(N, [WINDOW])
    half = score_file(t, fire(450), STANDARD).score
    assert half == pytest.approx(sigma(-0.5) / sigma(-1.0))
    last = score_file(t, fire(499), STANDARD).score
    assert last == pytest.approx(sigma(-1 / 100) / sigma(-1.0))
    assert 1.0 > half > last > 0


def test_only_the_earliest_detection_in_a_window_counts() -> None:
    t = truth(N, [WINDOW])
    early = score_file(t, fire(420), STANDARD).score
    assert score_file(t, fire(420, 421, 460, 499), STANDARD).score == pytest.approx(early)


def test_false_positive_before_the_first_window_costs_the_full_fp() -> None:
    t = truth(N, [WINDOW])
    s = score_file(t, fire(200, 400), STANDARD)
    assert s.score == pytest.approx(1.0 - 0.11)
    assert s.fp_rows == 1
    assert score_file(t, fire(200, 400), LOW_FP).score == pytest.approx(1.0 - 0.22)


def test_false_positive_right_after_a_window_costs_less_than_far_after() -> None:
    t = truth(N, [WINDOW])
    near = score_file(t, fire(400, 500), STANDARD).score - 1.0
    mid = score_file(t, fire(400, 560), STANDARD).score - 1.0
    far = score_file(t, fire(400, 900), STANDARD).score - 1.0
    assert near == pytest.approx(0.11 * sigma(1 / 99))
    assert mid == pytest.approx(0.11 * sigma(61 / 99))
    assert far == pytest.approx(-0.11)  # 401/99 > 3 widths past the window
    assert 0 > near > mid > far


def test_false_positive_is_measured_from_the_previous_window() -> None:
    t = truth(N, [(300, 349), (600, 699)])
    # row 360: 11 rows past the first window (width 50); row 710: 11 past the second (width 100)
    a = score_file(t, fire(300, 600, 360), STANDARD).score - 2.0
    b = score_file(t, fire(300, 600, 710), STANDARD).score - 2.0
    assert a == pytest.approx(0.11 * sigma(11 / 49))
    assert b == pytest.approx(0.11 * sigma(11 / 99))


def test_every_false_positive_row_counts() -> None:
    t = truth(N, [WINDOW])
    assert score_file(t, fire(200, 201, 202), STANDARD).score == pytest.approx(-1.0 - 3 * 0.11)


def test_probation_period_is_ignored() -> None:
    t = truth(N, [WINDOW])
    assert score_file(t, fire(10, 100, 149), STANDARD).score == pytest.approx(-1.0)
    assert score_file(t, fire(150), STANDARD).score == pytest.approx(-1.0 - 0.11)
    # a window wholly inside the probation period counts neither way
    early = truth(N, [(20, 60), WINDOW])
    s = score_file(early, fire(30, 400), STANDARD)
    assert s.score == pytest.approx(1.0)
    assert (s.null, s.found, s.missed) == (-1.0, 1, 0)


def test_missed_window_costs_fn() -> None:
    t = truth(N, [WINDOW, (700, 749)])
    assert score_file(t, fire(400), STANDARD).score == pytest.approx(0.0)
    assert score_file(t, fire(400), LOW_FN).score == pytest.approx(-1.0)
    assert score_file(t, fire(), LOW_FN).score == pytest.approx(-4.0)


def test_normalisation_perfect_is_100_and_null_is_0() -> None:
    truths = [truth(N, [WINDOW, (700, 749)]), truth(600, [(300, 320)]), truth(N, [])]
    for p in PROFILES:
        perfect = total([score_file(t, fire(*(a for a, _ in t.windows), n=t.n), p) for t in truths])
        null = total([score_file(t, fire(n=t.n), p) for t in truths])
        assert normalised(perfect) == pytest.approx(100.0)
        assert normalised(null) == pytest.approx(0.0)
        assert null.score == -p.fn * 3
    assert math.isnan(normalised(score_file(truths[2], fire(300), STANDARD)))


def test_sweep_agrees_with_scoring_each_threshold() -> None:
    rng = np.random.default_rng(7)
    truths = [truth(N, [WINDOW, (700, 749)]), truth(800, []), truth(1200, [(500, 560)])]
    scores = [np.round(rng.random(t.n) ** 6, 2) for t in truths]
    scores[0][420] = scores[2][510] = 0.995
    for p in PROFILES:
        thresholds, totals = sweep(truths, scores, p)
        assert thresholds[0] == NO_DETECTION
        assert totals[0] == pytest.approx(-3 * p.fn)
        assert np.all(np.diff(thresholds) < 0)
        for t, expected in zip(thresholds, totals, strict=True):
            got = total([score_file(tr, s >= t, p) for tr, s in zip(truths, scores, strict=True)]).score
            assert got == pytest.approx(expected)
        t_best, s_best = best_threshold(thresholds, totals)
        assert s_best == totals.max()
        assert t_best == thresholds[np.flatnonzero(totals == totals.max())[0]]  # the highest of equals


def test_windows_must_not_overlap() -> None:
    with pytest.raises(ValueError):
        truth(N, [(400, 499), (450, 600)])


# -- detectors ---------------------------------------------------------------------------------------


def series(n: int, seed: int = 1, anomalies: bool = True) -> tuple[I64, F64]:
    """Five-minute readings with a daily cycle and noise; a spike at n/3 and a level shift at n/2."""
    rng = np.random.default_rng(seed)
    ts = 1_400_000_000_000_000 + np.arange(n, dtype=np.int64) * 300_000_000
    x = 50 + 10 * np.sin(np.arange(n) * 2 * np.pi / 288) + rng.normal(0, 1, n)
    if anomalies:
        x[n // 3] += 40
        x[n // 2 :] += 15
    return ts, x


def available() -> list[str]:
    names = ["windowed_gaussian"]
    try:
        from stream.detectors import Detector, DetectorConfig  # noqa: F401
    except ImportError:
        pass
    else:
        names.append("cityops")
    return names


@pytest.mark.parametrize("name", available())
def test_detectors_are_strictly_online(name: str) -> None:
    det = nab.DETECTORS[name](argparse.Namespace(config=None))
    ts, x = series(6_800)  # past the Windowed Gaussian's 6400-row window and a few of its steps
    full = det.run(ts, x, 0.5 if not det.sweeps_raw else 0.999)
    assert full.score.shape == x.shape and full.alarms.shape == x.shape
    assert np.all((full.score >= 0) & (full.score <= 1))
    for cut in (1, 2, 500, 2_267, 6_399, 6_400, 6_401, 6_555):
        part = det.run(ts[:cut], x[:cut], 0.5 if not det.sweeps_raw else 0.999)
        np.testing.assert_array_equal(part.score, full.score[:cut])
        np.testing.assert_array_equal(part.alarms, full.alarms[:cut])


def test_windowed_gaussian_follows_nabs_rule() -> None:
    """Against a literal loop over NAB's rule with a small window (30 rows, steps of 7)."""
    _, x = series(200, seed=3)
    x[50:60] = x[49]  # a flat stretch
    window, step = 30, 7
    expected = np.zeros(x.shape[0])
    data: list[float] = []
    buf: list[float] = []
    mean, std = 0.0, 1.0
    for i, v in enumerate(x.tolist()):
        if data:
            expected[i] = 1 - 0.5 * math.erfc(abs(v - mean) / std / math.sqrt(2))
        if len(data) < window:
            data.append(v)
        else:
            buf.append(v)
            if len(buf) < step:
                continue
            data, buf = data[step:] + buf, []
        mean, std = float(np.mean(data)), float(np.std(data)) or 1e-6
    np.testing.assert_allclose(nab.windowed_gaussian_scores(x, window, step), expected, rtol=1e-9, atol=1e-12)


def test_repeated_timestamps_become_strictly_increasing() -> None:
    ts = np.array([10, 20, 20, 20, 25, 40], np.int64)
    assert nab.strictly_increasing(ts).tolist() == [10, 20, 21, 22, 25, 40]
    assert nab.strictly_increasing(np.array([10, 20, 15, 30], np.int64)).tolist() == [10, 20, 21, 30]


def test_a_file_whose_timestamps_step_backwards_is_scored_in_file_order(tmp_path: Path) -> None:
    """Real NAB files hold timestamps that go backwards: such a file loads, its windows are found
    in file order (the first matching row, as NAB's ``list.index``), and every row is scored."""
    path = tmp_path / "cat" / "back.csv"
    path.parent.mkdir(parents=True)
    stamps = ["2015-01-01 00:00:00", "2015-01-01 00:05:00", "2015-01-01 00:10:00", "2015-01-01 00:15:00"]
    stamps += ["2015-01-01 00:05:00", "2015-01-01 00:10:00", "2015-01-01 00:20:00", "2015-01-01 00:25:00"]
    path.write_text("timestamp,value\n" + "".join(f"{t},{i}\n" for i, t in enumerate(stamps)))
    f = nab.load_file(path, "cat/back.csv", [["2015-01-01 00:05:00", "2015-01-01 00:10:00"]])
    assert f.truth.windows == ((1, 2),)
    assert (np.diff(f.ts_us) > 0).all() and f.values.tolist() == list(range(8))
    late = [["2015-01-01 00:12:00", "2015-01-01 00:22:00"]]  # from 00:15 (row 3) to the row before 00:25
    assert nab.window_rows(nab.parse_us(stamps), late) == [(3, 6)]


# -- command line ------------------------------------------------------------------------------------


def stamp(ts_us: int) -> str:
    return str(np.datetime64(int(ts_us) // 1_000_000, "s")).replace("T", " ")


def write_corpus(root: Path) -> tuple[Path, Path]:
    """Three files in two categories: a spike and a level shift inside windows, and a clean file."""
    data, labels = root / "data", root / "labels" / "combined_windows.json"
    windows: dict[str, list[list[str]]] = {}
    specs = {
        "synthA/spike.csv": (600, [(330, 370)], 11),
        "synthA/shift.csv": (500, [(380, 420)], 12),
        "synthB/clean.csv": (400, [], 13),
    }
    for key, (n, wins, seed) in specs.items():
        ts, x = series(n, seed, anomalies=False)
        for a, b in wins:
            x[(a + b) // 2] += 30  # the anomaly in the middle of its window
        path = data / key
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["timestamp", "value"])
            w.writerows((stamp(t), f"{v:.4f}") for t, v in zip(ts.tolist(), x.tolist(), strict=True))
        windows[key] = [[stamp(ts[a]) + ".000000", stamp(ts[b]) + ".000000"] for a, b in wins]
    labels.parent.mkdir(parents=True)
    labels.write_text(json.dumps(windows))
    return data, labels


def figures(out: str) -> dict[str, float]:
    lines = [line.split(": ") for line in out.strip().splitlines()]
    return {k: float(v.split()[0]) for k, v in lines}


class Refractory:
    """A detector whose alarms are not ``score >= t``: at most one per 20 readings."""

    name = "refractory"
    sweeps_raw = False

    def run(self, ts_us: I64, values: F64, threshold: float) -> nab.Run:
        score = nab.windowed_gaussian_scores(values)
        alarms = np.zeros(values.shape[0], np.bool_)
        last = -(10**9)
        for i in np.flatnonzero(score >= threshold).tolist():
            if i - last > 20:
                alarms[i], last = True, i
        return nab.Run(score, alarms)


def test_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(nab.DETECTORS, "refractory", lambda args: Refractory())
    data, labels = write_corpus(tmp_path)
    out = tmp_path / "out"
    base = ["--data", str(data), "--labels", str(labels), "--detector", "windowed_gaussian", "refractory"]
    nab.main([*base, "--out", str(out)])
    first = figures(capsys.readouterr().out)

    for det in ("windowed_gaussian", "refractory"):
        for key in ("synthA/spike.csv", "synthA/shift.csv", "synthB/clean.csv"):
            cat, name = key.split("/")
            with (out / det / cat / f"{det}_{name}").open() as f:
                rows = list(csv.DictReader(f))
            assert list(rows[0]) == ["timestamp", "value", "anomaly_score", "label"]
            assert len(rows) == sum(1 for _ in (data / key).open()) - 1
            assert all(0.0 <= float(r["anomaly_score"]) <= 1.0 for r in rows)
    saved = json.loads((out / "thresholds.json").read_text())
    assert set(saved) == {"windowed_gaussian", "refractory"}
    assert set(saved["windowed_gaussian"]) == {p.name for p in PROFILES}
    report = (out / "report.md").read_text()
    assert "windowed_gaussian" in report and "synthB" in report
    assert (out / "scores.png").stat().st_size > 0
    for p in PROFILES:
        for det in ("windowed_gaussian", "refractory"):
            assert first[f"nab_{p.slug}_{det}"] == pytest.approx(saved[det][p.name]["normalised"], abs=0.05)
    assert first["nab_standard_windowed_gaussian"] > 50  # the spikes are obvious
    assert "nab_standard_windowed_gaussian_synthB_raw" in first

    # The CSV of a re-run detector reproduces its alarms under NAB's rule, at the saved threshold.
    t = saved["refractory"]["standard"]["threshold"]
    ts, x = (lambda f: (f.ts_us, f.values))(nab.load_corpus(data, labels)[0])
    alarms = Refractory().run(ts, x, t).alarms
    with (out / "refractory" / "synthA" / "refractory_shift.csv").open() as f:
        written = np.array([float(r["anomaly_score"]) for r in csv.DictReader(f)])
    np.testing.assert_array_equal(written >= t, alarms)

    # A held-out run reuses the saved thresholds (and leaves the file alone) ...
    tfile = out / "thresholds.json"
    before = tfile.read_text()
    nab.main([*base, "--out", str(tmp_path / "again"), "--threshold-file", str(tfile)])
    again = figures(capsys.readouterr().out)
    assert tfile.read_text() == before
    assert again == first
    assert "from" in (tmp_path / "again" / "report.md").read_text()
    # ... whatever they are: a threshold above every score detects nothing, which scores 0.
    edited = json.loads(before)
    for p in PROFILES:
        edited["windowed_gaussian"][p.name]["threshold"] = NO_DETECTION
    tfile.write_text(json.dumps(edited))
    nab.main([*base, "--out", str(tmp_path / "null"), "--threshold-file", str(tfile)])
    null = figures(capsys.readouterr().out)
    assert null["nab_standard_windowed_gaussian"] == 0.0
    assert null["nab_standard_refractory"] == first["nab_standard_refractory"]

    # A threshold file that does not exist yet is where the chosen thresholds go.
    fresh = tmp_path / "fresh.json"
    nab.main([*base, "--out", str(tmp_path / "fresh"), "--threshold-file", str(fresh)])
    capsys.readouterr()
    assert json.loads(fresh.read_text()) == saved
    assert not (tmp_path / "fresh" / "thresholds.json").exists()


def test_labels_for_a_missing_file_are_an_error(tmp_path: Path) -> None:
    data, labels = write_corpus(tmp_path)
    (data / "synthB" / "clean.csv").unlink()
    with pytest.raises(FileNotFoundError):
        nab.load_corpus(data, labels)


def test_window_rows_from_timestamps(tmp_path: Path) -> None:
    data, labels = write_corpus(tmp_path)
    files = {f.key: f for f in nab.load_corpus(data, labels)}
    assert files["synthA/spike.csv"].truth.windows == ((330, 370),)
    assert files["synthB/clean.csv"].truth.windows == ()
    assert files["synthA/shift.csv"].category == "synthA"
