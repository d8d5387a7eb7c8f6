"""The detector kernel's behaviour: what each detector catches, calibration, alarm hygiene,
determinism, snapshot/restore, reloads and adversarial input (hypothesis)."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.detectors import NSTATE, Detector, DetectorConfig, Kind, Scored
from stream.errors import ConfigError
from stream.profiles import DEFAULT_FILE

T0 = 1_795_000_000_000_000
ONLY = {"ewma": False, "robust": False, "cusum": False, "roc": False, "flatline": False}


def config(**defaults: object) -> DetectorConfig:
    return DetectorConfig.parse({"defaults": defaults})


def run(det: Detector, values: np.ndarray, *, interval_s: float = 10.0, sid: int = 0, t0: int = T0) -> Scored:
    ts = t0 + (np.arange(len(values)) * interval_s * 1e6).astype(np.int64)
    return det.update(np.full(len(values), sid, np.int64), ts, np.asarray(values, np.float64))


def noise(n: int, seed: int = 1, level: float = 50.0) -> np.ndarray:
    return level + np.random.default_rng(seed).normal(0, 1, n)


def alarms(out: Scored) -> list[int]:
    return np.flatnonzero(out.alarms).tolist()


# -- each detector catches its anomaly ------------------------------------------------------


def test_a_spike_alarms_once_with_an_explanation() -> None:
    x = noise(400)
    x[300] += 15
    out = run(Detector(), x)
    assert alarms(out) == [300]
    assert {"ewma", "robust", "roc"} <= set(out.fired_names(300))
    assert abs(out.baselines[300] - 50) < 0.5 and 0.5 < out.spreads[300] < 2
    assert out.score[300] == 1.0  # 15 sd: far beyond 1e-10


def test_a_level_shift_alarms_once_and_the_baseline_follows() -> None:
    x = noise(1200)
    x[600:] += 4  # 4 sd: each reading alone is unremarkable at 1e-5, the run is not
    out = run(Detector(), x)
    assert len(alarms(out)) == 1 and 600 <= alarms(out)[0] <= 615
    assert out.score[900:].max() < 0.5  # the new level is the new normal


def test_small_shift_only_cusum_sees() -> None:
    x = noise(2000, seed=3)
    x[1000:] += 1.5
    plain = run(Detector(config(cusum=False)), x)
    with_cusum = run(Detector(), x)
    assert not alarms(plain)[0:1] or alarms(plain)[0] < 1000
    first = [i for i in alarms(with_cusum) if i >= 1000]
    assert first and first[0] < 1100 and with_cusum.top[first[0]] == Kind.CUSUM


def test_a_stuck_sensor_is_a_flatline() -> None:
    x = noise(600)
    x[400:] = x[399]
    out = run(Detector(), x)
    (i,) = [i for i in alarms(out) if i >= 400]
    assert out.top[i] == Kind.FLATLINE and i < 420
    # A series that is always constant (a switch) never alarms as stuck.
    assert not alarms(run(Detector(), np.zeros(600)))


def test_rate_of_change_limit_is_physical() -> None:
    x = 100 + np.arange(300) * 0.01
    x[200] += 5.0  # within every statistical band after a 0.5/s cap? no: 5 units in 10 s
    det = Detector(config(**{**ONLY, "roc": True}, max_rate=0.2, warmup=5))
    out = run(det, x)
    assert alarms(out) == [200] and out.top[200] == Kind.ROC


def test_limits_use_their_averaging_period() -> None:
    # pH creeping over 9.5: single readings over it do not count, a 15-minute mean does.
    det = Detector(config(**ONLY, limit_high=9.5, limit_window_s=900, warmup=5))
    x = np.full(600, 7.5)
    x[100] = 12.0  # one wild reading: the 15-min mean barely moves
    x[300:] = 9.9
    out = run(det, x, interval_s=10)
    (i,) = alarms(out)
    assert i > 300 and out.top[i] == Kind.LIMIT and out.baselines[i] == 9.5
    assert (i - 300) * 10 < 900  # the mean (of the same mean age as a 15-min average) crosses in time


def test_physical_limits_alarm_from_the_first_reading() -> None:
    out = run(Detector(config(physical_high=100.0)), np.array([150.0, 50.0]))
    assert alarms(out) == [0] and out.top[0] == Kind.PHYSICAL


def test_time_of_day_baseline_learns_a_daily_pattern() -> None:
    # A lamp's power: 0 W by day, 100 W by night. After a few days the evening switch-on is
    # normal; a lamp dark at night is not.
    interval = 600.0
    days = 8
    hours = (np.arange(int(days * 86400 / interval)) * interval / 3600) % 24
    x = np.where((hours >= 18) | (hours < 6), 100.0, 0.0) + np.random.default_rng(2).normal(0, 0.5, hours.size)
    fault = int(7 * 86400 / interval + 20 * 3600 / interval)  # day 7, 20:00
    x[fault : fault + 6] = 0.0
    det = Detector(config(**ONLY, tod=True, tod_days=3, warmup=3, resolution=1.0))
    out = run(det, x, interval_s=interval)
    late = [i for i in alarms(out) if i > 4 * 86400 / interval]
    assert late == [fault]
    assert out.top[fault] == Kind.TOD and abs(out.baselines[fault] - 100) < 5


def test_staleness_fires_once_per_silence() -> None:
    det = Detector()
    run(det, noise(50), interval_s=10)
    last = T0 + 49 * 10_000_000
    assert det.stale(1, last + 20_000_000).size == 0  # 2 intervals: still fine
    assert det.stale(1, last + 60_000_000).tolist() == [0]  # 6 intervals, > 30 s minimum
    assert det.stale(1, last + 120_000_000).size == 0  # once per silence
    run(det, noise(5), interval_s=10, t0=last + 130_000_000)
    assert det.stale(1, last + 400_000_000).tolist() == [0]


# -- calibration and hygiene ----------------------------------------------------------------


def test_scores_are_calibrated_on_gaussian_noise() -> None:
    """Under the null, P(score >= s) is about 10**(-10 s): the score is a tail probability."""
    det = Detector(config(cusum=False, flatline=False))
    series = np.repeat(np.arange(200, dtype=np.int64), 1)
    rng = np.random.default_rng(7)
    scores = []
    for k in range(600):
        ts = np.full(200, T0 + k * 10_000_000, np.int64)
        scores.append(det.update(series, ts, rng.normal(0, 1, 200)).score)
    s = np.concatenate(scores[60:])  # after warm-up
    for level in (0.1, 0.2, 0.3):
        rate = float((s >= level).mean())
        expected = 10 ** (-10 * level)
        assert expected / 4 < rate < expected * 4, (level, rate, expected)


def test_a_persistent_anomaly_is_one_episode() -> None:
    x = noise(600)
    x[300:360] += np.where(np.arange(60) % 2 == 0, 12, -12)  # 60 readings of violent noise
    out = run(Detector(config(refractory=30)), x)
    assert len([i for i in alarms(out) if 300 <= i < 400]) == 1
    # After `refractory` quiet readings the series re-arms.
    x[500] += 20
    assert 500 in alarms(run(Detector(config(refractory=30)), x))


def test_refractory_in_seconds() -> None:
    x = noise(200)
    x[[100, 140]] += 20
    assert alarms(run(Detector(config(refractory=5)), x)) == [100, 140]
    assert alarms(run(Detector(config(refractory=5, refractory_s=3600)), x)) == [100]


# -- determinism, state, configuration ------------------------------------------------------


def interleaved(n_series: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    series = rng.integers(0, n_series, n).astype(np.int64)
    counts = np.zeros(n_series, np.int64)
    ts = np.empty(n, np.int64)
    for i, s in enumerate(series):
        ts[i] = T0 + counts[s] * 10_000_000
        counts[s] += 1
    values = rng.normal(0, 1, n) * (1 + series) + series * 10
    values[rng.random(n) < 0.01] += 30
    return series, ts, values


def test_batch_boundaries_do_not_matter() -> None:
    series, ts, values = interleaved(20, 6000, seed=4)
    whole = Detector(DetectorConfig.load(DEFAULT_FILE)).update(series, ts, values)
    det = Detector(DetectorConfig.load(DEFAULT_FILE))
    cuts = [0, 1, 37, 1000, 1001, 4500, 6000]
    parts = [det.update(series[a:b], ts[a:b], values[a:b]) for a, b in itertools.pairwise(cuts)]
    np.testing.assert_array_equal(np.concatenate([p.score for p in parts]), whole.score)
    np.testing.assert_array_equal(np.concatenate([p.alarms for p in parts]), whole.alarms)


def test_a_restored_detector_scores_exactly_like_an_uninterrupted_one() -> None:
    cfg = DetectorConfig.parse({"defaults": {"tod": True}})
    series, ts, values = interleaved(30, 8000, seed=5)
    uninterrupted = Detector(cfg).update(series, ts, values)

    first = Detector(cfg)
    first.update(series[:5000], ts[:5000], values[:5000])
    sids = np.arange(30, dtype=np.int64)
    blobs = first.snapshot(sids)
    second = Detector(cfg, capacity=4)  # another process, laid out differently
    second.update(np.array([29], np.int64), np.array([T0], np.int64), np.array([1.0]))  # some other state
    second.reset(np.array([29], np.int64))
    second.restore(sids[::-1].copy(), blobs[::-1])
    resumed = second.update(series[5000:], ts[5000:], values[5000:])
    np.testing.assert_array_equal(resumed.score, uninterrupted.score[5000:])
    np.testing.assert_array_equal(resumed.alarms, uninterrupted.alarms[5000:])


def test_a_snapshot_of_another_layout_is_refused() -> None:
    with pytest.raises(ValueError, match="snapshot"):
        Detector().restore(np.array([0], np.int64), [Detector().snapshot(np.array([0], np.int64))[0][:-8]])


def test_reload_changes_behaviour_and_keeps_state() -> None:
    x = noise(400)
    x[300] += 5  # p ~ 6e-7: score ~0.55 after correction
    det = Detector(config(threshold=0.9))
    assert not alarms(run(det, x[:300]))
    det.reload(config(threshold=0.4))
    out = run(det, x[300:], t0=T0 + 300 * 10_000_000)
    assert alarms(out) == [0]  # warm state kept: no new warm-up


def test_profiles_resolve_by_kind_and_metric() -> None:
    cfg = DetectorConfig.load(DEFAULT_FILE)
    assert cfg.profile("water_quality", "ph").limit_high == 9.5
    assert cfg.profile("water_quality", "ph").slow_window == 1440  # the kind's override
    assert cfg.profile("water_quality", "ph").limit_source.startswith("Directive (EU) 2020/2184")
    assert cfg.profile("lamp_pole", "dim_level").ewma is False
    assert cfg.profile("nothing", "else") == cfg.default
    det = Detector(cfg)
    det.bind(0, "water_quality", "ph")
    det.bind(1, "env_station", "pm25_ugm3")
    assert det.profile(0).limit_low == 6.5 and det.profile(1).limit_window_s == 86400


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"defaults": {"window": 1}}, "window"),
        ({"defaults": {"nope": 1}}, "nope"),
        ({"kinds": {"pipe_node": {"metrics": {"flow_m3h": {"limit_low": 5, "limit_high": 1}}}}}, "limit_low"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
    ],
)
def test_invalid_profiles_are_refused_with_the_reason(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DetectorConfig.parse(raw)


WARM_CHECK = """
import numpy as np
from stream.detectors import Detector, compile_kernels, detect_kernel, stale_kernel
compile_kernels()
before = (list(detect_kernel.signatures), list(stale_kernel.signatures))
d = Detector()
d.bind(3, "pipe", "pressure_kpa")
ts = np.arange(1, 201, dtype=np.int64) * 10_000_000
d.update(np.full(200, 3, np.int64), ts, np.random.default_rng(1).normal(400, 2, 200))
d.stale(4, int(ts[-1]) + 3_600_000_000)
after = (list(detect_kernel.signatures), list(stale_kernel.signatures))
assert before[0] and before[1], before
assert after == before, (before, after)
"""


def test_warming_up_compiles_the_signatures_a_real_batch_uses() -> None:
    """A service compiles before joining its group; a batch must then need no other compile.
    In a fresh interpreter: in this one, earlier tests have compiled whatever they used."""
    done = subprocess.run([sys.executable, "-c", WARM_CHECK], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_state_is_small() -> None:
    det = Detector(capacity=1_000_000)
    assert det.nbytes / 1_000_000 == NSTATE * 8 + 16  # one row and two ids per series
    assert det.nbytes < 2**30


# -- adversarial input ----------------------------------------------------------------------

finite = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False)
anything = st.one_of(finite, st.just(math.nan), st.just(math.inf), st.just(-math.inf), st.just(1e300))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(anything, min_size=1, max_size=300),
    steps=st.lists(st.integers(min_value=-5, max_value=50), min_size=1, max_size=300),
)
def test_any_input_gives_scores_in_range_and_never_poisons_the_state(values: list[float], steps: list[int]) -> None:
    """NaN, infinities, huge values, duplicate and backwards timestamps: scores stay in [0, 1],
    non-finite readings are skipped, and the state stays finite so normal data scores again."""
    n = len(values)
    ts = T0 + np.cumsum(np.resize(np.asarray(steps, np.int64), n)) * 1_000_000
    det = Detector(DetectorConfig.parse({"defaults": {"tod": True, "limit_high": 1e9, "limit_window_s": 60}}))
    x = np.asarray(values, np.float64)
    out = det.update(np.zeros(n, np.int64), ts, x)
    assert np.all((out.score >= 0) & (out.score <= 1))
    assert not out.alarms[~np.isfinite(x)].any() and np.all(out.score[~np.isfinite(x)] == 0)
    assert np.isfinite(det.state[0]).all()
    folded = int((np.abs(x) <= 1e100).sum())
    assert det.state[0, 0] == folded
    after = det.update(np.zeros(3, np.int64), ts[-1] + np.arange(1, 4) * 1_000_000, np.ones(3))
    assert np.all((after.score >= 0) & (after.score <= 1))


@settings(max_examples=40, deadline=None)
@given(level=finite, n=st.integers(min_value=40, max_value=400))
def test_a_constant_series_never_alarms(level: float, n: int) -> None:
    assert not run(Detector(), np.full(n, level)).alarms.any()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32 - 1), dup=st.integers(min_value=1, max_value=4))
def test_unfed_readings_are_scored_zero_and_change_nothing(seed: int, dup: int) -> None:
    """Redelivered readings (feed False) leave the detector exactly where it was."""
    x = noise(200, seed=seed % 1000)
    ts = T0 + np.arange(200, dtype=np.int64) * 10_000_000
    a, b = Detector(), Detector()
    a.update(np.zeros(200, np.int64), ts, x)
    idx = np.repeat(np.arange(200), dup)
    feed = np.zeros(idx.size, np.bool_)
    feed[::dup] = True
    out = b.update(np.zeros(idx.size, np.int64), ts[idx], x[idx], feed)
    np.testing.assert_array_equal(a.state[0], b.state[0])
    assert np.all(out.score[~feed] == 0)


def test_time_of_day_follows_daylight_saving_time_within_a_batch() -> None:
    """Amsterdam went from UTC+1 to UTC+2 at 2026-03-29 01:00 UTC: a reading an hour after
    that is 04:00 local time, in the bin of 04:00 whatever else its batch holds."""
    det = Detector(DetectorConfig.parse({"timezone": "Europe/Amsterdam", "defaults": {"tod": True}}))
    switch = 1_774_746_000_000_000  # 2026-03-29T01:00:00Z
    np.testing.assert_array_equal(
        det.local_time(np.array([switch - 3_600_000_000, switch + 3_600_000_000], np.int64)),
        [3600.0, switch, 7200.0],
    )
    before, after = switch - 1_800_000_000, switch + 3_600_000_000  # 01:30 CET, 04:00 CEST
    det.update(np.array([0, 0], np.int64), np.array([before, after], np.int64), np.array([1.0, 2.0]))
    bins = det.tod[det.tod_slot[0]].reshape(-1, 3)[:24]
    assert bins[1, 2] == 1 and bins[4, 2] == 1 and bins[:, 2].sum() == 2  # 01:xx and 04:xx local


REFERENCE_PROFILES = {
    "default": {},
    "likelihood_tod_spatial": {"likelihood": True, "tod": True, "spatial": True, "robust": False},
    "time_windows_limits": {"window_s": 300, "slow_window_s": 3000, "limit_high": 5.0, "limit_window_s": 60},
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    profile=st.sampled_from(sorted(REFERENCE_PROFILES)),
    values=st.lists(st.one_of(st.floats(-1e6, 1e6), anything), min_size=1, max_size=120),
    steps=st.lists(st.integers(min_value=-20, max_value=4000), min_size=1, max_size=120),
    series=st.lists(st.integers(min_value=0, max_value=2), min_size=1, max_size=120),
)
def test_the_kernel_matches_the_plain_python_reference(
    profile: str, values: list[float], steps: list[int], series: list[int]
) -> None:
    """The kernel against `benchmarks.detector_speed.PurePythonDetector` (the same recurrence
    written one reading at a time, with the kernel's tail table) on adversarial input: NaN,
    infinities, huge values, constant runs, duplicate and backwards timestamps, long gaps."""
    from benchmarks.detector_speed import PurePythonDetector
    from stream import detectors

    n = len(values)
    sids = np.resize(np.asarray(series, np.int64), n)
    ts = T0 + np.cumsum(np.resize(np.asarray(steps, np.int64), n)) * 1_000_000
    x = np.asarray(values, np.float64)
    cfg = DetectorConfig.parse({"defaults": {"warmup": 5, **REFERENCE_PROFILES[profile]}})
    kernel = Detector(cfg).update(sids, ts, x)
    python = PurePythonDetector(cfg, tail=detectors._log10_tail.py_func)
    reference = python.update(sids.tolist(), ts.tolist(), x.tolist())
    np.testing.assert_allclose(kernel.score, [r.score for r in reference], rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(kernel.alarms, [r.alarm for r in reference])
    np.testing.assert_array_equal(kernel.top, [r.top for r in reference])
