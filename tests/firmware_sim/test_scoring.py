"""Scoring alerts against ground truth."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable

import pytest

from cityops.core.contracts import GroundTruth, Topics, TruthCategory
from cityops.core.registry import Device
from cityops.devstack import Stack
from firmware_sim import EventKind, Scheduled, SimSettings, Simulator
from firmware_sim.scoring import AlertPoint, Score, alerts_from_database, score
from gateway import Gateway, GatewaySettings
from ioc import ApiServer, IocSettings
from stream import StreamService, StreamSettings
from tests.helpers import eventually, small_scenario

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


@pytest.mark.slow
async def test_a_simulated_citys_incidents_become_alerts_and_score_against_the_truth(
    stack: Stack, topics: Topics, database: str, fleet: list[Device], uid: str
) -> None:
    """Simulator -> Mosquitto -> gateway -> Kafka -> stream -> alerts -> IOC -> database, scored."""
    minute = 60
    scenario = small_scenario(
        uid,
        start="-20m",
        speed=300,
        interval_s=5,
        incidents=[
            Scheduled(kind=EventKind.FEEDER_OUTAGE, at_s=12 * minute, duration_s=3 * minute, target=f"t{uid}-CAB-001"),
            Scheduled(kind=EventKind.CONTAMINATION, at_s=13 * minute, duration_s=4 * minute, target=f"t{uid}-wq-0001"),
            Scheduled(
                kind=EventKind.SPIKE, at_s=14 * minute, target=f"t{uid}-pipe-0002", metric="pressure_kpa", magnitude=40
            ),
        ],
    )
    common = {"topic_prefix": topics.prefix, "pg_dsn": database}
    async with (
        StreamService(StreamSettings(**common, group_id=f"stream-{uid}", metrics_port=-1)) as stream,
        ApiServer(IocSettings(**common, group_id=f"ioc-{uid}", port=0)),
        Gateway(GatewaySettings(**common, mqtt_client_id=f"gw-{uid}", mqtt_clean_session=True, metrics_port=-1)) as gw,
        asyncio.TaskGroup() as tasks,
    ):
        services = [tasks.create_task(stream.run()), tasks.create_task(gw.run())]
        async with Simulator(SimSettings(**common), scenario) as sim:
            assert sim.sim is not None and sim.truth is not None and sim.city is not None
            span = (sim.sim.t0, sim.sim.t0 + 19 * minute * S)
            await sim.run(until_us=span[1])
            truths = list(sim.truth.events)
            intervals = {d: f.interval_s for f in sim.city.fleets.values() for d in f.ids}

        async def scored() -> Score:
            return score(truths, await alerts_from_database(database, span), intervals_s=intervals, span_us=span)

        try:
            await eventually(lambda: _all_detected(scored()), timeout=120)
        except AssertionError as exc:  # say which event went undetected
            raise AssertionError("\n".join((await scored()).lines())) from exc
        for task in services:
            task.cancel()
    result = await scored()
    print("\n" + "\n".join(result.lines()))
    assert result.recall == 1.0 and result.events == 3
    assert result.median_delay_readings <= 2
    # Ten devices for 19 minutes: a handful of false alarms at most on a quiet city.
    assert result.false_alarms <= 5, result.lines()


async def _all_detected(result: Awaitable[Score]) -> bool:
    r = await result
    return r.events > 0 and r.detected == r.events
