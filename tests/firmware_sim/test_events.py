"""Incidents and sensor faults change the signals the way they should, and only where the
ground truth says. Noise is keyed by (device, sample), so a run with an event and the same
run without it differ exactly by what the event did."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from cityops.core.contracts import DeviceKind, GroundTruth, TruthCategory
from firmware_sim import EventKind, Scheduled
from firmware_sim.errors import ScenarioError
from firmware_sim.events import FELT_FLOW, FELT_KPA
from firmware_sim.signals import SCALE
from tests.firmware_sim.conftest import HOUR, T0, Series, run, scenario

L, P, W, E, D = (
    DeviceKind.LAMP_POLE,
    DeviceKind.PIPE_NODE,
    DeviceKind.WATER_QUALITY,
    DeviceKind.ENV_STATION,
    DeviceKind.DRAINAGE,
)


def pair(**incident: Any) -> tuple[Series, Series, GroundTruth]:
    """The day with the incident, the same day without it, and the incident's ground truth."""
    _, base = run(scenario(), 24)
    _, hit = run(scenario(incidents=[Scheduled(**incident)]), 24)
    (truth,) = hit.truth
    assert truth.kind == incident["kind"].value
    return hit, base, truth


def window(s: Series, kind: DeviceKind, truth: GroundTruth, ids: list[str]) -> np.ndarray:
    from firmware_sim import build_city

    fleet = build_city(scenario()).fleets[kind]
    devices = [fleet.index[i] for i in truth.device_ids if i in fleet.index and (not ids or i in ids)]
    return np.isin(s.idx[kind], devices) & (s.sample[kind] >= truth.start_us) & (s.sample[kind] < truth.end_us)


def changed(hit: Series, base: Series, kind: DeviceKind) -> np.ndarray:
    rows = np.zeros(len(hit.idx[kind]), dtype=bool)
    for name, v in hit.values[kind].items():
        rows |= ~np.isclose(v, base.values[kind][name], rtol=0, atol=1e-9)
    return rows


def only_where_the_truth_says(hit: Series, base: Series, truth: GroundTruth) -> None:
    for kind in hit.values:
        diff = changed(hit, base, kind)
        inside = window(hit, kind, truth, [])
        if kind is P:
            # Hydraulics move every node a little, and the network settles for hours after;
            # what counts is a change a pressure or flow sensor can tell from its noise.
            q = base.metric(P, "flow_m3h")
            diff = (np.abs(hit.metric(P, "pressure_kpa") - base.metric(P, "pressure_kpa")) > FELT_KPA + 1.5) | (
                np.abs(hit.metric(P, "flow_m3h") - q) > FELT_FLOW * np.abs(q) + 1.0 + 0.5
            )
            diff &= hit.sample[P] < truth.end_us
            assert not np.any(changed(hit, base, P) & (hit.sample[P] < truth.start_us))
        assert not np.any(diff & ~inside), (kind, int((diff & ~inside).sum()))


def test_pipe_burst_drops_pressure_across_the_network_as_hydraulics_say() -> None:
    hit, base, truth = pair(kind=EventKind.PIPE_BURST, at_s=10 * 3600, duration_s=2 * 3600, target="pipe-0004")
    assert truth.category is TruthCategory.INCIDENT and "pipe-0004" in truth.device_ids
    assert len(truth.device_ids) > 1  # felt beyond the burst node
    during = window(hit, P, truth, ["pipe-0004"])
    dp = hit.metric(P, "pressure_kpa")[during] - base.metric(P, "pressure_kpa")[during]
    dq = hit.metric(P, "flow_m3h")[during] - base.metric(P, "flow_m3h")[during]
    assert dp.mean() < -1.0 and np.abs(dq).mean() > 20.0
    only_where_the_truth_says(hit, base, truth)


def test_a_leak_grows_slowly() -> None:
    hit, base, truth = pair(kind=EventKind.PIPE_LEAK, at_s=4 * 3600, duration_s=8 * 3600, target="pipe-0004")
    during = window(hit, P, truth, ["pipe-0004"])
    dq = np.abs(hit.metric(P, "flow_m3h")[during] - base.metric(P, "flow_m3h")[during])
    quarter = len(dq) // 4
    assert 0 < dq[:quarter].mean() < dq[3 * quarter :].mean() / 2
    only_where_the_truth_says(hit, base, truth)


def test_a_feeder_outage_darkens_the_whole_cabinet_at_once() -> None:
    hit, base, truth = pair(kind=EventKind.FEEDER_OUTAGE, at_s=19 * 3600, duration_s=3600, target="CAB-002")
    assert truth.device_ids == [f"lamp-{i:04d}" for i in range(6, 11)]  # five lamps per cabinet
    during = window(hit, L, truth, [])
    for metric in ("voltage_v", "power_w", "current_a", "lamp_on"):
        assert np.all(hit.metric(L, metric)[during] == 0), metric
    assert np.all(base.metric(L, "voltage_v")[during] > 220)
    only_where_the_truth_says(hit, base, truth)


def test_a_failed_lamp_draws_nothing_while_switched_on() -> None:
    hit, base, truth = pair(kind=EventKind.LAMP_FAILURE, at_s=16 * 3600, duration_s=4 * 3600, target="lamp-0003")
    during = window(hit, L, truth, [])
    lit = during & (hit.metric(L, "lamp_on") == 1)
    assert lit.sum() > 60  # part of the window is after dusk
    assert np.all(hit.metric(L, "power_w")[lit] < 2) and np.all(base.metric(L, "power_w")[lit] > 20)
    only_where_the_truth_says(hit, base, truth)


def test_energy_theft_adds_a_constant_draw_day_and_night() -> None:
    hit, base, truth = pair(kind=EventKind.ENERGY_THEFT, at_s=3600, duration_s=20 * 3600, target="lamp-0007")
    during = window(hit, L, truth, [])
    np.testing.assert_allclose(hit.metric(L, "power_w")[during] - base.metric(L, "power_w")[during], 400.0)
    assert np.all(hit.metric(L, "current_a")[during] > base.metric(L, "current_a")[during] + 1.5)
    only_where_the_truth_says(hit, base, truth)


def test_a_pollution_episode_raises_particulates_over_one_district() -> None:
    hit, base, truth = pair(kind=EventKind.POLLUTION_EPISODE, at_s=6 * 3600, target="Zuid")
    assert truth.note == "district Zuid" and truth.device_ids
    assert {d.split("-")[0] for d in truth.device_ids} <= {"env", "lamp"}
    for kind in (E, L):
        during = window(hit, kind, truth, [])
        if during.any():
            ratio = hit.metric(kind, "pm25_ugm3")[during] / base.metric(kind, "pm25_ugm3")[during]
            assert ratio.max() == pytest.approx(4.0, rel=0.01) and ratio.min() >= 1.0
    only_where_the_truth_says(hit, base, truth)


def test_contamination_drops_chlorine_and_raises_turbidity() -> None:
    hit, base, truth = pair(kind=EventKind.CONTAMINATION, at_s=5 * 3600, target="wq-0002")
    during = window(hit, W, truth, [])
    assert hit.metric(W, "chlorine_mgl")[during].min() < 0.3 * base.metric(W, "chlorine_mgl")[during].min()
    assert hit.metric(W, "turbidity_ntu")[during].max() > 2.0
    only_where_the_truth_says(hit, base, truth)


def test_flooding_fills_the_manholes_of_a_district_and_lifts_their_covers() -> None:
    hit, base, truth = pair(kind=EventKind.FLOODING, at_s=2 * 3600, duration_s=3 * 3600, target="Noord")
    during = window(hit, D, truth, [])
    assert during.any()
    assert hit.metric(D, "level_cm")[during].max() > 150  # the shallowest manhole is 150 cm deep
    assert hit.metric(D, "cover_tilt")[during].max() == 1 and base.metric(D, "cover_tilt").max() == 0
    only_where_the_truth_says(hit, base, truth)


@pytest.mark.parametrize(
    ("target", "kind", "metric"),
    [("pipe-0002", P, "pressure_kpa"), ("lamp-0001", L, "voltage_v"), ("drain-0003", D, "level_cm")],
)
def test_a_spike_changes_exactly_one_reading(target: str, kind: DeviceKind, metric: str) -> None:
    hit, base, truth = pair(kind=EventKind.SPIKE, at_s=3 * 3600, target=target, metric=metric)
    assert truth.category is TruthCategory.SENSOR_FAULT and truth.metrics == [metric]
    diff = hit.metric(kind, metric) - base.metric(kind, metric)
    (moved,) = np.flatnonzero(diff)
    assert diff[moved] == pytest.approx(10 * SCALE[kind][metric])
    only_where_the_truth_says(hit, base, truth)


def test_drift_grows_to_its_magnitude() -> None:
    hit, base, truth = pair(
        kind=EventKind.DRIFT, at_s=3600, duration_s=6 * 3600, target="lamp-0002", metric="temperature_c"
    )
    during = window(hit, L, truth, [])
    drift = np.abs(hit.metric(L, "temperature_c")[during] - base.metric(L, "temperature_c")[during])
    assert np.all(np.diff(drift) >= -1e-9) and drift[-1] == pytest.approx(8 * 3.0, rel=0.01)
    only_where_the_truth_says(hit, base, truth)


def test_a_stuck_sensor_repeats_one_value() -> None:
    hit, base, truth = pair(kind=EventKind.STUCK_AT, at_s=3600, target="wq-0001", metric="ph")
    during = window(hit, W, truth, [])
    assert len(np.unique(hit.metric(W, "ph")[during])) == 1
    assert len(np.unique(base.metric(W, "ph")[during])) > 10
    only_where_the_truth_says(hit, base, truth)


def test_a_noise_burst_adds_noise_only_inside_its_window() -> None:
    hit, base, truth = pair(kind=EventKind.NOISE_BURST, at_s=3600, target="lamp-0002", metric="noise_dba")
    during = window(hit, L, truth, [])
    extra = hit.metric(L, "noise_dba")[during] - base.metric(L, "noise_dba")[during]
    assert extra.std() > 5.0
    only_where_the_truth_says(hit, base, truth)


def test_a_dropout_silences_the_device_and_its_sequence_has_no_gap() -> None:
    hit, base, truth = pair(kind=EventKind.DROPOUT, at_s=3600, duration_s=1800, target="env-0001")
    assert truth.metrics == []
    mine = hit.idx[E] == 0
    times = hit.sample[E][mine]
    assert not np.any((times >= truth.start_us) & (times < truth.end_us))
    assert (base.idx[E] == 0).sum() - mine.sum() == 30  # half an hour of one reading a minute
    assert list(hit.seq[E][mine]) == list(range(mine.sum()))  # the device numbers what it sends


def test_clock_skew_shifts_the_reported_time_only() -> None:
    hit, base, truth = pair(kind=EventKind.CLOCK_SKEW, at_s=3600, target="drain-0002")
    during = window(hit, D, truth, [])
    assert np.all(hit.ts[D][during] - hit.sample[D][during] == 120_000_000)
    assert np.all(hit.ts[D][~during] == hit.sample[D][~during])
    only_where_the_truth_says(hit, base, truth)


def test_rates_plan_incidents_that_end_inside_the_run_and_name_real_devices() -> None:
    sim, s = run(scenario(incident_rates={k: 3 for k in (EventKind.PIPE_LEAK, EventKind.FLOODING)}), 48)
    ids = {d.device_id for d in sim.city.devices}
    assert s.truth
    for t in s.truth:
        assert set(t.device_ids) <= ids and t.device_ids
        assert T0 <= t.start_us < t.end_us <= T0 + 48 * HOUR


def test_an_unknown_target_is_a_scenario_error() -> None:
    with pytest.raises(ScenarioError, match="no device 'pipe-9999'"):
        run(scenario(incidents=[Scheduled(kind=EventKind.PIPE_BURST, at_s=60, target="pipe-9999")]), 1)
    with pytest.raises(ScenarioError, match="no district 'Atlantis'"):
        run(scenario(incidents=[Scheduled(kind=EventKind.FLOODING, at_s=60, target="Atlantis")]), 1)
