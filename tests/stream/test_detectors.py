"""The Numba kernel against a plain NumPy/Python reference of the same recurrence."""

from __future__ import annotations

import numpy as np

from stream.detectors import EwmaParams, EwmaZScore


def reference(values: np.ndarray, p: EwmaParams) -> tuple[np.ndarray, np.ndarray]:
    """EWMA z-score for ONE series, written for clarity, not speed."""
    scores = np.zeros(len(values))
    alarms = np.zeros(len(values), bool)
    mean, var, since = values[0], 0.0, p.refractory
    for i in range(1, len(values)):
        x = values[i]
        spread = max(np.sqrt(var), p.min_spread * (abs(mean) + 1.0))
        warmed = i >= p.warmup
        z = abs(x - mean) / spread if warmed else 0.0
        scores[i] = z
        since += 1
        if z >= p.threshold and since > p.refractory:
            alarms[i], since = True, 0
        folded = np.clip(x, mean - p.clip * spread, mean + p.clip * spread) if warmed else x
        d = folded - mean
        mean = mean + p.alpha * d
        var = (1 - p.alpha) * (var + d * p.alpha * d)
    return scores, alarms


def test_kernel_matches_reference_on_interleaved_series() -> None:
    rng = np.random.default_rng(3)
    p = EwmaParams(alpha=0.1, warmup=10, threshold=4.0, refractory=5)
    n_series, n = 5, 400
    data = [rng.normal(10 * s, 1 + s, n) for s in range(n_series)]
    for s in range(n_series):
        data[s][rng.integers(50, n, 4)] += 15 * (1 + s)  # spikes
    # Interleave the series the way a Kafka batch would, split over several batches.
    order = np.repeat(np.arange(n_series), n).reshape(n_series, n).T.ravel()
    values = np.stack(data, axis=1).ravel()
    det = EwmaZScore(p, capacity=2)  # forces state growth too
    scores = np.empty_like(values)
    alarms = np.empty(len(values), bool)
    for lo in range(0, len(values), 333):
        out = det.update(order[lo : lo + 333].astype(np.int64), values[lo : lo + 333])
        scores[lo : lo + 333] = out.scores
        alarms[lo : lo + 333] = out.alarms
    for s in range(n_series):
        ref_scores, ref_alarms = reference(data[s], p)
        np.testing.assert_allclose(scores[order == s], ref_scores, rtol=1e-9, atol=1e-9)
        np.testing.assert_array_equal(alarms[order == s], ref_alarms)
    assert alarms.sum() >= n_series  # the spikes were found


def test_spike_alarms_once_and_does_not_blind_the_detector() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(100.0, 1.0, 300)
    values[200] = 160.0
    values[260] = 140.0
    det = EwmaZScore(EwmaParams(refractory=20))
    out = det.update(np.zeros(300, np.int64), values)
    assert set(np.flatnonzero(out.alarms)) == {200, 260}
    assert out.baselines[200] == np.float64(out.baselines[200])
    assert abs(out.baselines[201] - 100.0) < 3.0  # clipping kept the spike out of the baseline


def test_no_alarms_during_warm_up() -> None:
    values = np.array([1.0, 1.0, 50.0, 1.0])
    out = EwmaZScore(EwmaParams(warmup=30)).update(np.zeros(4, np.int64), values)
    assert not out.alarms.any()


def test_readings_not_fed_leave_the_state_alone() -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(50.0, 1.0, 200)
    once, twice = EwmaZScore(), EwmaZScore()
    once.update(np.zeros(200, np.int64), values)
    twice.update(np.zeros(150, np.int64), values[:150])
    # A replay of 50 already-stored readings (not fed), then the rest: same state as one pass.
    feed = np.r_[np.zeros(50, np.bool_), np.ones(50, np.bool_)]
    replay = twice.update(np.zeros(100, np.int64), values[100:], feed)
    assert not replay.alarms[:50].any() and (replay.scores[:50] == 0).all()
    assert (once.mean[0], once.var[0], once.count[0]) == (twice.mean[0], twice.var[0], twice.count[0])


def test_reset_series_are_cold_again() -> None:
    det = EwmaZScore()
    det.update(np.array([0, 1, 0, 1], np.int64), np.array([1.0, 2.0, 1.0, 2.0]))
    assert not det.is_cold(0) and not det.is_cold(1)
    det.reset(np.array([1, 99], np.int64))  # 99 was never seen
    assert not det.is_cold(0) and det.is_cold(1) and det.is_cold(99)
