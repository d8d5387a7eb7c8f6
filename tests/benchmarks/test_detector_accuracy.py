"""The detector accuracy benchmark: its scorers on hand-built cases, the detector run strictly
online, and the command line end to end on small slices (one SKAB file, the first 20,000 GECCO
rows, two simulated hours of a tiny city). Needs no stack."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmarks import detector_accuracy as da
from stream.profiles import DEFAULT_FILE, DetectorConfig

T0 = 1_700_000_000_000_000
MINUTE = 60_000_000


def flags(n: int, *rows: int) -> da.BOOL:
    out = np.zeros(n, np.bool_)
    out[list(rows)] = True
    return out


def span(n: int, a: int, b: int) -> da.BOOL:
    out = np.zeros(n, np.bool_)
    out[a:b] = True
    return out


# -- scorers ---------------------------------------------------------------------------------------


def test_segments_are_maximal_runs() -> None:
    labels = np.array([0, 1, 1, 0, 0, 1, 0, 1], np.bool_)
    assert da.segments(labels) == [(1, 3), (5, 6), (7, 8)]
    assert da.segments(np.zeros(4, np.bool_)) == []


def test_event_score_recall_delay_and_false_alarms() -> None:
    n = 1000
    labels = span(n, 100, 200) | span(n, 500, 503)
    # row 130 detects the first segment 30 rows in; row 505 is past the second one's end but within
    # the grace from its start (500 + 10); rows 50 and 700 are false alarms.
    s = da.event_score(labels, flags(n, 50, 130, 150, 505, 700), grace=10)
    assert (s.segments, s.detected) == (2, 2)
    assert s.recall == 1.0
    assert sorted(s.delays) == [5, 30]
    assert s.false_alarms == 2
    assert s.outside_rows == n - 100 - 10
    assert s.false_alarms_per_1000 == pytest.approx(1000 * 2 / 890)
    # with a grace shorter than the segment, row 505 is outside the window: a miss and a false alarm
    short = da.event_score(labels, flags(n, 50, 130, 150, 505, 700), grace=2)
    assert (short.detected, short.false_alarms) == (1, 3)
    assert math.isnan(da.event_score(np.zeros(n, np.bool_), flags(n, 3), grace=5).recall)


def test_row_score_far_and_mar() -> None:
    labels = span(10, 2, 6)  # rows 2..5 anomalous
    s = da.row_score(labels, flags(10, 0, 2, 3))
    assert (s.tp, s.fp, s.fn, s.tn) == (2, 1, 2, 5)
    assert s.precision == pytest.approx(2 / 3) and s.recall == pytest.approx(0.5)
    assert s.f1 == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert s.far_pct == pytest.approx(100 / 6) and s.mar_pct == pytest.approx(50.0)


def test_held_lasts_until_the_score_drops_below_half_the_threshold() -> None:
    score = np.array([0.1, 0.6, 0.4, 0.3, 0.2, 0.6, 0.5, 0.1, 0.3])[:, None]
    alarms = np.array([0, 1, 0, 0, 0, 0, 1, 0, 0], np.bool_)[:, None]
    # alarm at 1 holds 1..3 (0.2 < 0.25 ends it); row 5 scores high but did not alarm (refractory);
    # the alarm at 6 holds only itself
    out = da.held(score, alarms, np.array([0.5]))
    assert np.flatnonzero(out[:, 0]).tolist() == [1, 2, 3, 6]


def test_episode_lasts_until_refractory_quiet_readings() -> None:
    score = np.array([0.1, 0.6, 0.1, 0.4, 0.1, 0.1, 0.9, 0.1, 0.1, 0.1, 0.1])[:, None]
    alarms = np.array([0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1], np.bool_)[:, None]
    finite = np.ones_like(alarms)
    finite[8, 0] = False  # no reading: not a quiet one either
    ts = T0 + np.arange(11, dtype=np.int64) * MINUTE
    args = (np.array([0.5]), np.array([2], np.int64), np.array([0.0]))
    # quiet readings after the alarm at 1: row 2 (1), row 3 high (0), rows 4, 5 (2: ends at 5); the
    # alarm at 10 runs to the end
    out = da.episodes(score, alarms, finite, ts, *args)
    assert np.flatnonzero(out[:, 0]).tolist() == [1, 2, 3, 4, 10]
    # ... and with 3 quiet readings, row 6 (high) restarts the count: rows 7, 9, 10 (8 is no reading)
    longer = da.episodes(score, alarms, finite, ts, np.array([0.5]), np.array([3], np.int64), np.array([0.0]))
    assert np.flatnonzero(longer[:, 0]).tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    # a time condition too, 5 minutes after the alarm: not at row 5 (4 minutes), row 6 is high, so the
    # second quiet reading after it, row 9 (8 is no reading), ends the episode
    timed = da.episodes(score, alarms, finite, ts, np.array([0.5]), np.array([2], np.int64), np.array([300.0]))
    assert np.flatnonzero(timed[:, 0]).tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 10]


# -- the detector, online --------------------------------------------------------------------------


def noisy(n: int, seed: int = 4) -> tuple[da.I64, da.F64]:
    rng = np.random.default_rng(seed)
    ts = T0 + np.arange(n, dtype=np.int64) * MINUTE
    return ts, 50.0 + rng.normal(0.0, 1.0, n)


def test_a_spike_in_its_segment_is_detected_and_a_shifted_label_misses_it() -> None:
    n, spike = 1500, 1000
    ts, x = noisy(n)
    x[spike] += 25.0
    ch = (da.Channel("x", "test", "x"),)
    run = da.run_online(DetectorConfig(), ch, ts, x[:, None])
    labelled = span(n, spike - 10, spike + 10)
    hit = da.event_score(labelled, run.flagged, grace=5)
    assert (hit.segments, hit.detected, hit.delays) == (1, 1, [10])
    assert hit.false_alarms <= 2  # Gaussian noise at threshold 0.5: hardly ever
    shifted = da.event_score(np.roll(labelled, 200), run.flagged, grace=5)
    assert (shifted.segments, shifted.detected) == (1, 0)
    assert shifted.false_alarms == hit.false_alarms + 1  # the spike is now a false alarm


def test_run_online_does_not_depend_on_the_chunks() -> None:
    n = 700
    ts, x = noisy(n, seed=9)
    x[300:] += 6.0  # a level shift
    x[100:110] = np.nan  # missing values go through
    both = np.column_stack([x, x[::-1]])
    channels = (da.Channel("a", "test", "a"), da.Channel("b", "pipe_node", "pressure_kpa"))
    config = DetectorConfig.load(DEFAULT_FILE)
    one = da.run_online(config, channels, ts, both, chunk=7)
    two = da.run_online(config, channels, ts, both, chunk=1000)
    np.testing.assert_array_equal(one.score, two.score)
    np.testing.assert_array_equal(one.alarms, two.alarms)
    assert np.all(one.score[100:110, 0] == 0.0)
    assert one.alarms[:, 0].any()


# -- the command line ------------------------------------------------------------------------------

TINY_SCENARIO = """
seed = 1
start = "2026-01-15T00:00:00+00:00"

[city]
water_network = "Net1"
lamps_per_cabinet = 2

[devices.lamp_pole]
count = 4
interval_s = 10

[devices.pipe_node]
count = 2
interval_s = 10

[devices.water_quality]
count = 1
interval_s = 10

[devices.env_station]
count = 1
interval_s = 10

[devices.drainage]
count = 1
interval_s = 10

[[incidents]]
kind = "spike"
at_s = 3600
target = "pipe-0001"
metric = "pressure_kpa"
magnitude = 40

[[incidents]]
kind = "feeder_outage"
at_s = 4800
duration_s = 900

[truth]
file = ""
kafka = false
"""


def figures(out: str) -> dict[str, float]:
    result: dict[str, float] = {}
    for line in out.strip().splitlines():
        name, _, rest = line.partition(": ")
        value, _, unit = rest.partition(" ")
        assert name and unit, f"not a figure line: {line!r}"
        result[name] = float(value)
    return result


SKAB_FILE = da.DEFAULT_SKAB / "valve1" / "1.csv"


def test_cli_on_small_slices(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    skab = tmp_path / "skab"
    (skab / "valve1").mkdir(parents=True)
    shutil.copy(SKAB_FILE, skab / "valve1" / SKAB_FILE.name)
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY_SCENARIO)
    argv = [
        "--skab",
        str(skab),
        "--gecco",
        str(da.DEFAULT_GECCO),
        "--gecco-rows",
        "20000",
        "--sim-scenario",
        str(scenario),
        "--sim-hours",
        "2",
    ]
    da.main(argv)
    got = figures(capsys.readouterr().out)

    expected = [
        "skab_files",
        "skab_row_f1",
        "skab_row_far",
        "skab_row_mar",
        "skab_row_held_f1",
        "skab_row_episode_f1",
        "skab_segment_recall",
        "skab_median_delay",
        "skab_false_alarms_per_1000_rows",
        "gecco_rows",
        "gecco_row_f1",
        "gecco_row_f1_alarms",
        "gecco_row_held_f1",
        "gecco_row_episode_f1",
        "gecco_segment_recall",
        "gecco_median_delay",
        "gecco_false_alarms_per_1000_rows",
        "sim_events",
        "sim_recall",
        "sim_recall_spike",
        "sim_recall_feeder_outage",
        "sim_false_alarms_per_1000_device_hours",
        "sim_median_detection_delay",
        "sim_median_detection_delay_readings",
    ]
    missing = [k for k in expected if k not in got]
    assert not missing, missing
    assert all(math.isfinite(got[k]) for k in expected), {k: got[k] for k in expected}
    assert got["skab_files"] == 1 and got["skab_segments"] == 1
    assert got["gecco_rows"] == 20000
    assert got["sim_events"] == 2 and got["sim_hours"] == 2
    for k in ("skab_segment_recall", "gecco_segment_recall", "sim_recall", "gecco_row_f1"):
        assert 0.0 <= got[k] <= 1.0
    assert any(k.startswith("sim_fa_") for k in got) or got["sim_false_alarms"] == 0

    # A fixed start: the simulator part is deterministic.
    da.main([*argv, "--only", "sim"])
    again = figures(capsys.readouterr().out)
    assert again == {k: v for k, v in got.items() if k.startswith("sim_")}


def test_sim_start_is_fixed_unless_the_scenario_gives_a_time() -> None:
    default = da.sim_start("now", None)
    assert default == da.sim_start("-30m", None)
    assert default == da.sim_start("now", da.DEFAULT_SIM_START)
    assert da.sim_start("2026-03-01T00:00:00+00:00", None) == default + 45 * 86_400_000_000  # from 15 January
