"""Scoring alerts against ground truth."""

from __future__ import annotations

import math

import pytest

from cityops.contracts import GroundTruth, TruthCategory
from firmware_sim.scoring import AlertPoint, score

S = 1_000_000
INTERVALS = {"a": 10.0, "b": 10.0, "c": 60.0}


def truth(kind: str, devices: list[str], metrics: list[str], start_s: int, end_s: int, **kw: object) -> GroundTruth:
    return GroundTruth(
        event_id=f"{kind}-{start_s}",
        kind=kind,
        category=kw.pop("category", TruthCategory.INCIDENT),  # type: ignore[arg-type]
        device_ids=devices,
        metrics=metrics,
        start_us=start_s * S,
        end_us=end_s * S,
    )


def test_recall_false_alarms_and_delay() -> None:
    truths = [
        truth("feeder_outage", ["a", "b"], ["voltage_v"], 100, 400),
        truth("spike", ["c"], ["level_cm"], 1000, 1060, category=TruthCategory.SENSOR_FAULT),
        truth("drift", ["c"], ["level_cm"], 2000, 3000, category=TruthCategory.SENSOR_FAULT),
        truth("dropout", ["a"], [], 500, 600, category=TruthCategory.SENSOR_FAULT),
        truth("malformed", ["a"], [], 700, 701, category=TruthCategory.PLATFORM),
    ]
    alerts = [
        AlertPoint("b", "voltage_v", 130 * S),  # detects the outage, 30 s = 3 readings late
        AlertPoint("a", "voltage_v", 140 * S),  # the same incident again: true, not another detection
        AlertPoint("c", "level_cm", 1100 * S),  # one reading after the spike: within the grace
        AlertPoint("a", "power_w", 200 * S),  # right device, wrong metric: a false alarm
        AlertPoint("b", "voltage_v", 5000 * S),  # nothing happening: a false alarm
        AlertPoint("z", "voltage_v", 150 * S),  # not a device of this run: ignored
    ]
    result = score(truths, alerts, intervals_s=INTERVALS, span_us=(0, 7200 * S))
    assert (result.events, result.detected, result.not_scorable) == (3, 2, 1)
    assert result.recall == pytest.approx(2 / 3)
    assert (result.alerts, result.true_alerts, result.false_alarms) == (5, 3, 2)
    assert result.device_hours == pytest.approx(6.0)
    assert result.false_alarms_per_1000_device_hours == pytest.approx(2000 / 6)
    assert sorted(result.delays_s) == [30.0, 100.0]
    assert sorted(result.delays_readings) == pytest.approx([100 / 60, 3.0])
    assert result.by_kind["drift"].detected == 0 and result.by_kind["feeder_outage"].recall == 1.0
    assert "recall: 0.667 ratio" in result.lines()


def test_no_events_gives_nan_recall_not_a_crash() -> None:
    result = score([], [AlertPoint("a", "x", 0)], intervals_s=INTERVALS, span_us=(0, 3600 * S))
    assert math.isnan(result.recall) and result.false_alarms == 1
