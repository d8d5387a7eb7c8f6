"""Correlation: alerts of one asset group, place and time become one incident; others stay apart."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from cityops.core.contracts import DeviceKind, Topics
from cityops.core.registry import Device
from cityops.devstack import Stack
from firmware_sim import SimSettings, Simulator
from firmware_sim.scenario import DeviceClass, EventKind, Scheduled
from gateway import Gateway, GatewaySettings
from ioc import ApiServer
from ioc.correlation import Category, Signal, correlate, distance_m, group_keys
from stream import StreamService, StreamSettings
from tests.helpers import eventually, small_scenario
from tests.ioc.conftest import ioc_settings

T0 = datetime(2026, 11, 21, 20, 0, tzinfo=UTC)
WINDOW = timedelta(minutes=30)


def signal(
    device: str,
    *,
    at_s: float = 0.0,
    cat: Category = Category.ELECTRICAL,
    groups: tuple[str, ...] = ("cabinet:CAB-1", "feeder:F-1"),
    lat: float = 52.36,
    lon: float = 4.90,
    metric: str = "voltage_v",
    detector: str = "limit",
) -> Signal:
    return Signal(
        f"{device}/{metric}/{at_s}",
        device,
        metric,
        detector,
        0.0,
        230.0,
        T0 + timedelta(seconds=at_s),
        cat,
        groups,
        "Centrum",
        lat,
        lon,
    )


def test_two_hundred_lamps_of_one_cabinet_are_one_incident() -> None:
    lamps = [signal(f"lamp-{i:03d}", at_s=i * 0.5, lat=52.36 + i * 1e-4) for i in range(200)]
    (incident,) = correlate(lamps, [], radius_m=300, window=WINDOW)
    assert len(incident.assets) == 200 and incident.alert_count == 200
    assert incident.type == "cabinet_power_loss" and incident.group == "cabinet:CAB-1"
    assert incident.severity == 3  # widespread: one step above a cabinet's base severity
    assert incident.detected_at == T0 and incident.last_alert_at == T0 + timedelta(seconds=99.5)


def test_type_and_severity_update_as_alerts_join() -> None:
    (one,) = correlate([signal("lamp-1")], [], radius_m=300, window=WINDOW)
    assert (one.type, one.severity) == ("lamp_fault", 1)
    (two,) = correlate([signal("lamp-2", at_s=10)], [one], radius_m=300, window=WINDOW)
    assert two is one and (two.type, two.severity) == ("cabinet_power_loss", 2)
    assert set(two.assets) == {"lamp-1", "lamp-2"}


def test_unrelated_alerts_stay_separate() -> None:
    far = 52.36 + 0.01  # about 1.1 km north
    drafts = correlate(
        [
            signal("lamp-1"),
            signal("lamp-2", at_s=5),
            # Another cabinet, far away: its own incident.
            signal("lamp-9", at_s=6, groups=("cabinet:CAB-9", "feeder:F-5"), lat=far),
            # The same place and time, but water: another crew, another incident.
            signal("pipe-1", at_s=7, cat=Category.WATER_MAINS, groups=("dma:DMA-1",), metric="pressure_kpa"),
            # The first cabinet again, but after the window: a new incident.
            signal("lamp-3", at_s=WINDOW.total_seconds() + 60),
        ],
        [],
        radius_m=300,
        window=WINDOW,
    )
    assert sorted(sorted(d.assets) for d in drafts) == [["lamp-1", "lamp-2"], ["lamp-3"], ["lamp-9"], ["pipe-1"]]


def test_cabinets_on_one_feeder_are_one_feeder_power_loss() -> None:
    far = 52.36 + 0.02  # 2 km apart: only the feeder ties them
    drafts = correlate(
        [signal(f"a-{i}", at_s=i, groups=("cabinet:CAB-1", "feeder:F-1")) for i in range(4)]
        + [signal(f"b-{i}", at_s=10 + i, groups=("cabinet:CAB-2", "feeder:F-1"), lat=far) for i in range(4)]
        + [signal(f"c-{i}", at_s=20 + i, groups=("cabinet:CAB-3", "feeder:F-2"), lat=far + 0.02) for i in range(3)],
        [],
        radius_m=300,
        window=WINDOW,
    )
    feeder, other = sorted(drafts, key=lambda d: -len(d.assets))
    assert feeder.type == "feeder_power_loss" and feeder.group == "feeder:F-1" and len(feeder.assets) == 8
    assert feeder.title.startswith("Feeder power loss — F-1 (8 assets)") and feeder.severity == 4
    assert other.type == "cabinet_power_loss" and other.group == "cabinet:CAB-3" and len(other.assets) == 3


def test_a_silent_concentrator_is_one_incident_naming_it() -> None:
    """A concentrator speaks for lamps of many cabinets and feeders (and the city's other devices
    of its class): all of them falling silent is one incident about the concentrator."""
    lamps = [
        signal(
            f"lamp-{i:03d}",
            at_s=i * 0.1,
            groups=(
                *group_keys(Category.ELECTRICAL, "Centrum", {"cabinet": f"CAB-{i // 25}", "feeder": f"F-{i // 50}"}),
                *group_keys(Category.ELECTRICAL, "Centrum", {"concentrator": "conc-7"}, silent=True),
            ),
            lat=52.36 + (i % 40) * 0.002,  # spread over kilometres: only the concentrator ties them
            detector="staleness",
        )
        for i in range(200)
    ]
    # The city's usual noise: two statistical alerts on its lamps earlier in the window.
    noise = [
        signal(s.device_id, at_s=-60.0 + i, groups=lamps[i].groups[:2], detector="ewma")
        for i, s in enumerate(lamps[:2])
    ]
    (incident,) = correlate(noise + lamps, [], radius_m=300, window=WINDOW)
    assert incident.type == "concentrator_offline" and incident.group == "concentrator:conc-7"
    assert incident.title.startswith("Concentrator offline — conc-7 (200 assets)") and incident.silences == 200
    # The lamps of one feeder falling silent are a power loss, even behind one concentrator.
    feeder = [
        signal(s.device_id, at_s=i, groups=("cabinet:CAB-1", "feeder:F-1", "concentrator:conc-7"), detector="staleness")
        for i, s in enumerate(lamps[:10])
    ]
    (power,) = correlate(feeder, [], radius_m=300, window=WINDOW)
    assert power.type == "cabinet_power_loss"
    # Only silence is grouped by concentrator: its devices' other alerts are judged as before.
    assert group_keys(Category.ELECTRICAL, None, {"cabinet": "C", "concentrator": "conc-7"}) == ("cabinet:C",)


def test_nearby_assets_of_another_group_join_by_distance() -> None:
    a = signal("env-1", cat=Category.ENVIRONMENT, groups=("district:Noord",), metric="pm25_ugm3", detector="ewma")
    b = signal(
        "env-2", at_s=30, cat=Category.ENVIRONMENT, groups=("district:Oost",), lat=52.3615, metric="pm25_ugm3"
    )  # ~170 m away, across a district boundary
    assert distance_m((a.lat or 0, a.lon or 0), (b.lat or 0, b.lon or 0)) < 300
    (joined,) = correlate([a, b], [], radius_m=300, window=WINDOW)
    assert set(joined.assets) == {"env-1", "env-2"} and joined.type == "air_pollution"
    assert len(correlate([a, b], [], radius_m=100, window=WINDOW)) == 2


def test_batching_does_not_change_the_grouping() -> None:
    signals = [
        signal(
            f"lamp-{i}", at_s=i * 60, groups=(f"cabinet:CAB-{i % 3}", f"feeder:F-{i % 3}"), lat=52.36 + (i % 3) * 0.01
        )
        for i in range(12)
    ]
    whole = correlate(signals, [], radius_m=300, window=WINDOW)
    drafts: list = []
    for k in range(0, 12, 5):  # the same alerts in three batches, each continuing the open drafts
        for d in correlate(signals[k : k + 5], drafts, radius_m=300, window=WINDOW):
            if d not in drafts:
                drafts.append(d)
    assert sorted(sorted(d.assets) for d in drafts) == sorted(sorted(d.assets) for d in whole)


@pytest.mark.slow
async def test_a_simulated_cabinet_outage_becomes_one_incident(
    stack: Stack, topics: Topics, database: str, uid: str
) -> None:
    """Simulator -> gateway -> stream detectors -> IOC: a feeder outage darkens a cabinet's ten
    lamps (each raises its own alerts) and water is contaminated at the same time: two incidents."""
    cab = f"t{uid}-CAB-001"
    scenario = small_scenario(
        uid,
        start="-10m",
        speed=300,
        devices={
            DeviceKind.LAMP_POLE: DeviceClass(count=20, interval_s=5),
            DeviceKind.WATER_QUALITY: DeviceClass(count=2, interval_s=5),
        },
        incidents=[
            Scheduled(kind=EventKind.FEEDER_OUTAGE, at_s=360, duration_s=180, target=cab),
            Scheduled(kind=EventKind.CONTAMINATION, at_s=390, duration_s=180, target=f"t{uid}-wq-0001"),
        ],
    )
    from firmware_sim import build_city

    city = build_city(scenario)
    stack.register(city.devices)
    cabinet = {d.device_id for d in city.devices if d.attrs.get("cabinet") == cab}
    assert len(cabinet) == 10
    common = {"topic_prefix": topics.prefix, "pg_dsn": database}
    try:
        async with (
            # The devices fall silent once the replay ends; on a slow machine the wait below would
            # outlast their staleness limit and add "Device offline" incidents: not what this tests.
            StreamService(
                StreamSettings(**common, group_id=f"stream-{uid}", metrics_port=-1, stale_check_s=3600)
            ) as stream,
            ApiServer(ioc_settings(topics, database, uid, tick_s=1.0)) as api,
            Gateway(
                GatewaySettings(**common, mqtt_client_id=f"gw-{uid}", mqtt_clean_session=True, metrics_port=-1)
            ) as gw,
            asyncio.TaskGroup() as tasks,
        ):
            services = [tasks.create_task(stream.run()), tasks.create_task(gw.run())]
            await _register(database, city.devices)
            async with Simulator(SimSettings(**common), scenario) as sim:
                assert sim.sim is not None
                await sim.run(until_us=sim.sim.t0 + 600 * 1_000_000)
            http = httpx.AsyncClient(base_url=api.url, headers={"Authorization": f"Bearer {api.token()}"})

            async def incidents() -> list[dict[str, object]]:
                return list((await http.get("/incidents", params={"open_only": False})).json())

            async def settled() -> bool:
                got = await incidents()
                lamps = [i for i in got if i["category"] == "electrical"]
                water = [i for i in got if i["category"] == "water_quality"]
                return bool(lamps and water and set(lamps[0]["assets"]) == cabinet)  # type: ignore[arg-type]

            try:
                await eventually(settled, timeout=60)
            except AssertionError:
                raise AssertionError([(i["title"], i["assets"], i["alert_count"]) for i in await incidents()]) from None
            await asyncio.sleep(2)  # anything still in flight joins or stays apart now
            got = await incidents()
            await http.aclose()
            for task in services:
                task.cancel()
    finally:
        stack.unregister([d.device_id for d in city.devices])
    (outage,) = [i for i in got if i["category"] == "electrical"]
    assert outage["type"] == "cabinet_power_loss" and outage["group_key"] == f"cabinet:{cab}"
    assert set(outage["assets"]) == cabinet and int(outage["alert_count"]) >= 10  # type: ignore[call-overload]
    (water,) = [i for i in got if i["category"] == "water_quality"]
    assert water["type"] == "water_contamination" and water["assets"] == [f"t{uid}-wq-0001"]
    assert len(got) == 2, [(i["title"], i["assets"]) for i in got]


async def _register(dsn: str, devices: list[Device]) -> None:
    import psycopg

    from cityops.core import schema

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await schema.upsert_devices(conn, devices)


def test_an_incident_that_grew_does_not_swallow_its_surroundings() -> None:
    # Two lamps of one cabinet 2 km apart; a third lamp halfway between, of another cabinet.
    a = signal("lamp-a", groups=("cabinet:CAB-1",), lat=52.35)
    b = signal("lamp-b", at_s=1, groups=("cabinet:CAB-1",), lat=52.368)
    middle = signal("lamp-m", at_s=2, groups=("cabinet:CAB-7",), lat=52.359)  # ~1 km from each
    near_b = signal("lamp-n", at_s=3, groups=("cabinet:CAB-8",), lat=52.3695)  # ~170 m from b
    drafts = correlate([a, b, middle, near_b], [], radius_m=300, window=WINDOW)
    assert sorted(sorted(d.assets) for d in drafts) == [["lamp-a", "lamp-b", "lamp-n"], ["lamp-m"]]
