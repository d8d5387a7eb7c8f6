"""Scenario files and the command line's overrides."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cityops.core.contracts import DeviceKind
from firmware_sim import EventKind, Scenario, build_city, load, with_overrides
from firmware_sim.errors import ScenarioError
from firmware_sim.scenario import resolve_start
from firmware_sim.settings import SCENARIOS


def test_the_demo_scenario_loads_and_builds_its_city() -> None:
    demo = load(SCENARIOS / "demo.toml")
    assert demo.start == "-30m" and demo.speed == 60
    assert [i.kind for i in demo.incidents][:2] == [EventKind.PIPE_BURST, EventKind.FEEDER_OUTAGE]
    city = build_city(demo)
    assert len(city.devices) == sum(c.count for c in demo.devices.values()) == 54
    lamp = next(d for d in city.devices if d.kind == DeviceKind.LAMP_POLE)
    pipe = next(d for d in city.devices if d.kind == DeviceKind.PIPE_NODE)
    assert lamp.attrs["cabinet"].startswith("CAB-") and lamp.attrs["feeder"].startswith("F-")
    assert pipe.attrs["dma"].startswith("DMA-") and pipe.attrs["pipe"] and pipe.attrs["junction"]
    south, west, north, east = demo.city.extent
    assert all(south <= d.lat <= north and west <= d.lon <= east for d in city.devices)
    assert {d.district for d in city.devices} <= set(demo.city.districts)


def test_an_empty_file_is_a_small_quiet_city(tmp_path: Path) -> None:
    path = tmp_path / "empty.toml"
    path.write_text("")
    scenario = load(path)
    assert scenario == Scenario() and not scenario.incident_rates and not scenario.incidents


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("seed = ", "cannot read scenario"),
        ('mode = "batch"', "invalid scenario"),
        ("[incident_rates]\nspike = 1", "not incidents"),
        ("[fault_rates]\npipe_burst = 1", "not sensor faults"),
        ('start = "yesterday"', "start must be"),
        ("[devices.lamp_pole]\ncount = -1", "invalid scenario"),
        ("colour = 1", "invalid scenario"),
    ],
)
def test_invalid_scenarios_say_what_is_wrong(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError, match=reason):
        load(path)


def test_start_may_be_now_an_offset_or_a_time() -> None:
    now = datetime(2026, 11, 21, 12, tzinfo=UTC)
    assert resolve_start("now", now) == now
    assert resolve_start("-6h", now) == now - timedelta(hours=6)
    assert resolve_start("-90m", now) == now - timedelta(minutes=90)
    assert resolve_start("2026-11-20T00:00:00+01:00", now) == datetime(2026, 11, 19, 23, tzinfo=UTC)
    with pytest.raises(ValueError, match="no UTC offset"):
        resolve_start("2026-11-20T00:00:00", now)


def test_devices_and_rate_override_the_scenario() -> None:
    demo = load(SCENARIOS / "demo.toml")
    big = with_overrides(demo, devices=10_000, rate=50_000, duration_s=60, seed=9, mode="concentrator")
    counts = {k: c.count for k, c in big.devices.items()}
    assert sum(counts.values()) == 10_000
    # Split as the scenario's counts are (24 : 12 : 4 : 6 : 8 of 54).
    assert counts[DeviceKind.LAMP_POLE] == pytest.approx(10_000 * 24 / 54, abs=1)
    assert all(c.interval_s == pytest.approx(0.2) for c in big.devices.values())  # 10,000 devices / 50,000 per s
    assert (big.duration_s, big.seed, big.mode) == (60, 9, "concentrator")
    with pytest.raises(ScenarioError):
        with_overrides(demo, rate=0)
