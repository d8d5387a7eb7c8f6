"""The detector speed benchmark: its command line end to end (``--quick``: no timing asserted),
and its pure-Python detector as a reference for ``stream.detectors.detect_kernel``. Needs no stack."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from benchmarks import detector_speed as bench
from benchmarks.detector_speed import LIMITS, Batch, PurePythonDetector, Scoring, Workload, config
from stream import detectors as det
from stream.detectors import Detector, DetectorConfig, Kind, Scored
from stream.profiles import Profile

FIGURE = re.compile(r"^(?P<name>[a-z0-9_]+): (?P<value>[-+0-9.eE]+) (?P<unit>\S.*)$")

EXPECTED = {
    "detector_full_profile": "M readings/s",
    "detector_batch_100": "M readings/s",
    "detector_batch_10000": "M readings/s",
    **{f"detector_{d}_only": "M readings/s" for d in bench.CORE},
    "detector_with_tod": "M readings/s",
    "detector_with_limits": "M readings/s",
    "kernel_readings_per_s_per_core": "M readings/s",
    "kernel_target_per_core": "M readings/s",
    "kernel_vs_target": "x",
    "kernel_only_full_profile": "M readings/s",
    "wrapper_overhead": "%",
    "kernel_cpu_per_wall": "x",
    "pure_python": "M readings/s",
    "speedup_vs_pure_python": "x",
    "pandas_rolling": "M readings/s",
    "speedup_vs_pandas_rolling": "x",
    "pandas_ewm": "M readings/s",
    "speedup_vs_pandas_ewm": "x",
    "river_hst": "M readings/s",
    "speedup_vs_river_hst": "x",
    "state_bytes_per_series": "B",
    "state_bytes_per_series_tod": "B",
    "measured_bytes_per_series": "B",
    "measured_bytes_per_series_tod": "B",
    "one_million_series": "GiB",
    "one_million_series_tod": "GiB",
    "one_million_series_target": "GiB",
}
# Figures that may be zero or below on a noisy machine (a wrapper faster than its noise).
MAY_BE_NONPOSITIVE = {"wrapper_overhead"}


def test_quick_run_prints_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    figures = bench.main(["--quick"])
    lines = capsys.readouterr().out.splitlines()
    # The figure lines come last, one per figure, after the table.
    tail = [FIGURE.match(line) for line in lines[-len(figures) :]]
    assert all(tail), lines[-len(figures) :]
    printed = {m["name"]: (float(m["value"]), m["unit"]) for m in tail if m}
    assert list(printed) == [f.name for f in figures]
    assert {name: unit for name, (_, unit) in printed.items()} == EXPECTED
    for name, (value, _) in printed.items():
        assert math.isfinite(value), name
        if name not in MAY_BE_NONPOSITIVE:
            assert value > 0, name
    # 20 float64 state columns plus the profile id and the time-of-day slot; 24 bins of 3.
    assert printed["state_bytes_per_series"][0] == det.NSTATE * 8 + 16
    assert printed["state_bytes_per_series_tod"][0] == det.NSTATE * 8 + 16 + 3 * Profile().tod_bins * 8
    assert printed["kernel_readings_per_s_per_core"] == printed["detector_full_profile"]


# -- the pure-Python detector as the kernel's reference ------------------------------------------


def table_tail(z: float) -> float:
    """The kernel's interpolated tail, in Python: with it the reference should match the kernel
    to rounding, discrete decisions included."""
    z = abs(z)
    if z < det._TAIL_MAX:
        f = z / det._TAIL_STEP
        j = int(f)
        w = f - j
        return float(det._TAIL[j] * (1.0 - w) + det._TAIL[j + 1] * w)
    return bench.log10_tail(z)


def test_tail_table_error_below_a_ten_thousandth_of_a_decade() -> None:
    # Scores saturate near z = 7 (p = 1e-10 and Bonferroni); beyond z = 30 the exact tail
    # switches to its first asymptotic term, a step of 4.5e-4 decades that the table bridges.
    zs = np.linspace(0.0, 20.0, 20_001)
    err = max(abs(table_tail(z) - bench.log10_tail(z)) for z in zs)
    assert err < 2e-5
    assert bench.log10_tail(1.959963984540054) == pytest.approx(math.log10(0.05), abs=1e-12)


CONFIGS: dict[str, DetectorConfig] = {
    "default": config(),
    "tod_and_limits": config(tod=True, **LIMITS),
    "time_windows": config(
        window_s=600.0, slow_window_s=6000.0, max_rate=5.0, flatline_eps=0.05, refractory_s=300.0, clip=3.0
    ),
    **{f"{d}_only": config(**{c: c == d for c in bench.CORE}) for d in bench.CORE},
    "likelihood": config(likelihood=True, tod=True, tod_bins=48, likelihood_window=300),
    "spatial": config(spatial=True, spatial_tolerance=0.01),
    "profiles": DetectorConfig.parse(
        {
            "timezone": "Europe/Amsterdam",
            "defaults": {"warmup": 20, "window": 30},
            "kinds": {
                "pole": {
                    "robust": False,
                    "metrics": {"power": {"tod": True, "tod_bins": 12, "resolution": 0.5, "cusum_drift": 1.0}},
                },
                "pipe": {"threshold": 0.3, "refractory": 5, "flatline_min_run": 4, "limit_high": 400.0},
            },
        }
    ),
}
BINDINGS = [("pole", "power"), ("pole", "other"), ("pipe", "flow"), ("none", "none")]


def stream(seed: int, series: int = 40, rounds: int = 300, t0_us: int = bench.T0_US) -> Batch:
    """Interleaved series with spikes, level shifts, quantised and stuck ones (series 0 from
    the middle on), and a few readings that must not count (not finite, absurd)."""
    data = Workload.make(series, seed=seed, horizon=rounds // 2, t0_us=t0_us).stream(range(rounds))
    values = data.values.copy()
    values[(data.series == 0) & (np.arange(len(data)) >= len(data) // 2)] = 42.0  # stuck
    rng = np.random.default_rng(seed)
    odd = rng.choice(values.shape[0], 12, replace=False)
    values[odd[:4]] = np.nan
    values[odd[4:6]] = np.inf
    values[odd[6:9]] = 1e300
    return Batch(data.series, data.ts_us, values)


def run_both(
    cfg: DetectorConfig, data: Batch, tail: Callable[[float], float], bind: bool, batch: int = 233
) -> tuple[Detector, PurePythonDetector, Scored, list[Scoring]]:
    kernel, ref = Detector(cfg), PurePythonDetector(cfg, tail=tail)
    if bind:
        for sid in range(int(data.series.max()) + 1):
            kind, metric = BINDINGS[sid % len(BINDINGS)]
            kernel.bind(sid, kind, metric)
            ref.bind(sid, kind, metric)
    rng = np.random.default_rng(0)
    outs: list[Scored] = []
    ref_out: list[Scoring] = []
    for b in data.slices(batch):
        feed = rng.random(len(b)) > 0.02  # some redeliveries
        outs.append(kernel.update(b.series, b.ts_us, b.values, feed))
        ref_out += ref.update(b.series.tolist(), b.ts_us.tolist(), b.values.tolist(), feed.tolist())
    scored = Scored(*(np.concatenate([getattr(o, f) for o in outs]) for f in Scored.__dataclass_fields__))
    return kernel, ref, scored, ref_out


def column(results: list[Scoring], field: str) -> np.ndarray:
    return np.array([getattr(r, field) for r in results])


def first_difference(scored: Scored, ref: list[Scoring], data: Batch) -> str:
    """Where kernel and reference part, to make a failure readable."""
    for i, r in enumerate(ref):
        k = (scored.score[i], scored.alarms[i], scored.fired[i], scored.top[i])
        if not (abs(k[0] - r.score) < 2e-5 and k[1:] == (r.alarm, r.fired, r.top)):
            return f"reading {i} (series {data.series[i]}, x={data.values[i]}): kernel {k}, reference {r}"
    return "no per-reading difference"


DST_END_2026 = 1_792_890_000_000_000  # 2026-10-25 01:00 UTC: Amsterdam from UTC+2 to UTC+1


@pytest.mark.parametrize("name", [*CONFIGS, "tod_across_dst"])
def test_reference_matches_kernel_with_the_kernels_tail(name: str) -> None:
    data = stream(seed=3)
    if name == "tod_across_dst":  # batches span the change of the UTC offset
        name, data = "likelihood", stream(seed=3, t0_us=DST_END_2026 - 3_600_000_000)
    kernel, ref, scored, out = run_both(CONFIGS[name], data, table_tail, bind=name == "profiles")
    where = first_difference(scored, out, data)
    np.testing.assert_allclose(scored.score, column(out, "score"), rtol=1e-9, atol=1e-12, err_msg=where)
    np.testing.assert_array_equal(scored.alarms, column(out, "alarm"), err_msg=where)
    np.testing.assert_array_equal(scored.fired, column(out, "fired"), err_msg=where)
    np.testing.assert_array_equal(scored.top, column(out, "top"), err_msg=where)
    np.testing.assert_allclose(scored.baselines, column(out, "baseline"), rtol=1e-9, atol=1e-9, err_msg=where)
    np.testing.assert_allclose(scored.spreads, column(out, "spread"), rtol=1e-9, atol=1e-9, err_msg=where)
    rows = int(data.series.max()) + 1
    state = ref.state_matrix(rows)
    for col_name, col in bench.STATE_COLUMNS.items():
        np.testing.assert_allclose(kernel.state[:rows, col], state[:, col], rtol=1e-9, atol=1e-9, err_msg=col_name)
    for sid, st in ref.states.items():
        slot = kernel.tod_slot[sid]
        if st.tod:
            np.testing.assert_allclose(kernel.tod[slot, : len(st.tod)], st.tod, rtol=1e-9, atol=1e-9)
        else:
            assert slot < 0 or not kernel.tod[slot].any()
    # The comparison covers alarms and their episodes, not only quiet readings.
    assert scored.alarms.any() and (scored.fired != 0).sum() > 10


def test_reference_matches_kernel_with_the_exact_tail() -> None:
    data = stream(seed=5, series=60)
    kernel, ref, scored, out = run_both(CONFIGS["tod_and_limits"], data, bench.log10_tail, bind=False)
    # The table's error, 1e-4 decades at most, is 1e-5 in a score.
    np.testing.assert_allclose(scored.score, column(out, "score"), rtol=1e-6, atol=2e-5)
    np.testing.assert_array_equal(scored.alarms, column(out, "alarm"))
    np.testing.assert_allclose(kernel.state[:60], ref.state_matrix(60), rtol=1e-6, atol=1e-9)
    fired = np.bitwise_or.reduce(scored.fired)
    for kind in (Kind.EWMA, Kind.ROBUST, Kind.CUSUM, Kind.ROC, Kind.FLATLINE, Kind.LIMIT, Kind.PHYSICAL):
        assert fired & (1 << kind), kind.label


def test_reference_state_covers_every_column() -> None:
    assert sorted(bench.STATE_COLUMNS.values()) == list(range(det.NFIELDS))


def test_workload_keeps_each_series_in_time_order() -> None:
    work = Workload.make(50, seed=1)
    data = work.stream(range(20))
    assert len(data) == 1000
    for sid in range(50):
        ts = data.ts_us[data.series == sid]
        assert ts.shape[0] == 20 and (np.diff(ts) > 0).all()
    assert list(work.round(3).series) != list(work.round(4).series)  # random order per round
    assert np.isfinite(data.values).all()


def test_pandas_rolling_z_is_the_z_against_the_previous_window() -> None:
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"series": np.tile([0, 1, 2], 40), "value": rng.standard_normal(120)})
    z = bench.pandas_rolling_z(frame, window=10, min_periods=5).to_numpy()
    x = frame["value"].to_numpy()[1::3]  # series 1 alone
    for j in range(len(x)):
        prev = x[max(0, j - 10) : j]
        expected = abs(x[j] - prev.mean()) / prev.std(ddof=1) if len(prev) >= 5 else np.nan
        np.testing.assert_allclose(z[1 + 3 * j], expected, rtol=1e-9)
