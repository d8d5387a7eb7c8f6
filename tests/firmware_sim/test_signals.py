"""Healthy signals: physical ranges, daily cycles, hydraulics, determinism, replay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cityops.core.contracts import METRICS, DeviceKind
from firmware_sim.scenario import DeviceClass
from firmware_sim.signals import local_hours
from tests.firmware_sim.conftest import HOUR, T0, run, scenario

L, P, W, E, D = (
    DeviceKind.LAMP_POLE,
    DeviceKind.PIPE_NODE,
    DeviceKind.WATER_QUALITY,
    DeviceKind.ENV_STATION,
    DeviceKind.DRAINAGE,
)
GECCO = Path(__file__).resolve().parents[3] / "shared" / "data" / "gecco2018" / "train.csv"

# What a healthy sensor of each metric reads in this (temperate, winter) city.
PLAUSIBLE = {
    L: {
        "voltage_v": (220, 240),
        "power_w": (0.5, 160),
        "current_a": (0, 0.8),
        "pm25_ugm3": (2, 60),
        "noise_dba": (35, 75),
        "temperature_c": (-10, 20),
        "humidity_pct": (50, 100),
    },
    P: {"pressure_kpa": (-50, 1000), "flow_m3h": (-3000, 3000)},
    W: {"chlorine_mgl": (0.2, 0.9), "turbidity_ntu": (0.01, 0.5), "ph": (7.3, 7.9), "conductivity_uscm": (450, 510)},
    E: {"pm25_ugm3": (2, 60), "no2_ugm3": (0.5, 120), "o3_ugm3": (0.5, 120), "co_mgm3": (0.01, 2.0)},
    D: {"level_cm": (0, 30), "cover_tilt": (0, 0)},
}


@pytest.fixture(scope="module")
def day() -> object:
    return run(scenario(), 24)


def test_every_kind_reports_every_metric_within_physical_and_plausible_ranges(day: object) -> None:
    _, s = day  # type: ignore[misc]
    assert set(s.values) == set(DeviceKind)
    for kind, values in s.values.items():
        assert set(values) == set(METRICS[kind])
        for name, v in values.items():
            spec = METRICS[kind][name]
            assert np.all((v >= spec.low) & (v <= spec.high)), (kind, name)
            lo, hi = PLAUSIBLE.get(kind, {}).get(name, (spec.low, spec.high))
            assert lo <= v.min() and v.max() <= hi, (kind, name, v.min(), v.max())


def test_lamps_follow_dusk_and_dawn_with_part_night_dimming(day: object) -> None:
    _, s = day  # type: ignore[misc]
    h = local_hours(s.sample[L], 4.895)
    on, dim, power = s.metric(L, "lamp_on"), s.metric(L, "dim_level"), s.metric(L, "power_w")
    assert np.all(on[(h > 11) & (h < 14)] == 0)  # midday in January
    assert np.all(on[(h > 19) & (h < 22)] == 1)
    assert np.all(dim[(h > 0.5) & (h < 4.5)] == 50)  # part-night dimming
    assert np.all(dim[(h > 19) & (h < 22)] == 100)
    assert power[on == 0].max() < 2.0  # the controller's standby draw only
    # Current is power over voltage at the driver's power factor.
    current = s.metric(L, "current_a")
    np.testing.assert_allclose(current, power / (s.metric(L, "voltage_v") * 0.95), rtol=1e-3, atol=1e-4)


def test_traffic_shapes_the_air_and_the_noise(day: object) -> None:
    _, s = day  # type: ignore[misc]
    h = local_hours(s.sample[E], 4.895)
    rush, night = (h > 7.5) & (h < 8.5), (h > 2.5) & (h < 3.5)
    for metric in ("no2_ugm3", "co_mgm3", "pm25_ugm3"):
        v = s.metric(E, metric)
        assert v[rush].mean() > v[night].mean() * 1.15, metric
    sound = s.metric(E, "noise_dba")
    assert sound[rush].mean() > sound[night].mean() + 5  # decibels: a difference, not a ratio


def test_pipe_nodes_see_the_networks_daily_demand(day: object) -> None:
    sim, s = day  # type: ignore[misc]
    flow = np.abs(s.metric(P, "flow_m3h"))
    hourly = [flow[(s.sample[P] >= T0 + i * HOUR) & (s.sample[P] < T0 + (i + 1) * HOUR)].mean() for i in range(24)]
    assert max(hourly) > 1.2 * min(hourly)
    # Each node reads the solver's pressure at its junction, plus sensor noise.
    plan = sim.plan(0)
    fleet = sim.city.fleets[P]
    t_rel = (s.sample[P] - plan.start_us) / 1e6
    solver = plan.hydraulics.pressure(t_rel, fleet.props["junction"][s.idx[P]].astype(np.intp))
    assert np.abs(s.metric(P, "pressure_kpa") - solver).max() < 3.0


def test_sequence_numbers_count_each_devices_readings(day: object) -> None:
    _, s = day  # type: ignore[misc]
    for kind in s.values:
        for device in np.unique(s.idx[kind]):
            rows = s.rows(kind, device)
            assert list(s.seq[kind][rows]) == list(range(rows.sum()))
            assert np.all(np.diff(s.sample[kind][rows]) == 60_000_000)


def test_the_same_seed_gives_the_same_run_however_time_is_cut() -> None:
    rates = {"incident_rates": {"feeder_outage": 6, "pipe_leak": 4}, "fault_rates": {"spike": 2, "drift": 1}}
    _, a = run(scenario(**rates), 6)
    _, b = run(scenario(**rates), 6, steps=37)
    _, c = run(scenario(seed=4, **rates), 6)
    assert a.truth == b.truth and a.truth
    for kind in a.values:
        np.testing.assert_array_equal(a.idx[kind], b.idx[kind])
        np.testing.assert_array_equal(a.seq[kind], b.seq[kind])
        for name in a.values[kind]:
            np.testing.assert_array_equal(a.values[kind][name], b.values[kind][name])
    assert not np.array_equal(a.metric(L, "voltage_v"), c.metric(L, "voltage_v"))
    assert a.truth != c.truth


def test_water_quality_stations_can_replay_the_gecco_recording() -> None:
    import pandas as pd

    # Eight stations start at eighths of the recording; the second starts at row 17,445,
    # shortly before a run of labelled events.
    devices = {W: DeviceClass(count=8, interval_s=60, replay=GECCO)}
    _, s = run(scenario(devices=devices), 24)
    csv = pd.read_csv(GECCO)
    start = 139_566 // 8
    rows = s.rows(W, 1)
    n = int(rows.sum())
    recorded = slice(start, start + n)
    np.testing.assert_allclose(s.metric(W, "chlorine_mgl")[rows], csv["Cl"].to_numpy()[recorded], equal_nan=True)
    np.testing.assert_allclose(s.metric(W, "turbidity_ntu")[rows], csv["Trueb"].to_numpy()[recorded], equal_nan=True)
    # The recording's labelled events are ground truth, at the times they were replayed.
    labelled = csv["EVENT"].to_numpy()[recorded]
    truth = [t for t in s.truth if t.device_ids == ["wq-0002"]]
    assert truth and all(t.kind == "contamination" for t in truth)
    in_truth = np.zeros(n, dtype=bool)
    for t in truth:
        in_truth |= (s.sample[W][rows] >= t.start_us) & (s.sample[W][rows] < t.end_us)
    np.testing.assert_array_equal(in_truth, labelled)
