"""The stream service on real Kafka and PostgreSQL, with an injected clock."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from aiokafka import ConsumerRecord, TopicPartition

from cityops.core import contracts
from cityops.core.contracts import Reading, Topics
from cityops.core.kafka import make_producer
from cityops.core.schema import StorageMode
from cityops.devstack import Stack
from stream import StreamService, StreamSettings
from stream.detectors import Detector, DetectorConfig
from stream.metrics import PROFILE_RELOADS
from stream.profiles import DEFAULT_FILE
from tests.helpers import eventually, produce, read_topic, scalar

T0 = contracts.to_us(contracts.to_datetime(0).replace(year=2026, month=11, day=21, hour=9))


class ManualClock:
    def __init__(self, now_us: int) -> None:
        self.now_us = now_us

    def __call__(self) -> int:
        return self.now_us


async def test_stores_dead_letters_and_maintains_on_its_clock(
    stack: Stack, topics: Topics, database: str, uid: str
) -> None:
    clock = ManualClock(T0 + 3_600_000_000)
    settings = StreamSettings(
        topic_prefix=topics.prefix,
        pg_dsn=database,
        group_id=f"s-{uid}",
        metrics_port=-1,
        storage_mode=StorageMode.NATIVE,
        maintenance_interval_s=60,
    )
    producer = make_producer(stack.settings.kafka_bootstrap, client_id="test")
    await producer.start()
    try:
        for i in range(50):
            r = Reading("dev-1", "pipe_node", i, T0 + i * 1_000_000, {"pressure_kpa": 400.0 + i % 3}, T0)
            await producer.send(topics.readings, contracts.encode(r), key=b"dev-1")
        await producer.send_and_wait(topics.readings, b"\x93not a reading", key=b"dev-1")
    finally:
        await producer.stop()

    async with StreamService(settings, clock=clock) as service, asyncio.TaskGroup() as tasks:
        runner = tasks.create_task(service.run())
        await eventually(lambda: _equals(scalar(database, "SELECT count(*) FROM readings"), 50))
        assert await scalar(database, "SELECT count(*) FROM readings_1m") == 0  # maintenance not due yet
        clock.now_us += 61_000_000
        await eventually(lambda: _equals(scalar(database, "SELECT sum(n) FROM readings_1m"), 50))
        runner.cancel()

    assert await scalar(database, "SELECT count(*) FROM readings_1h") == 1
    letters = [
        contracts.decode_dead_letter(v)
        for v in await read_topic(stack.settings.kafka_bootstrap, topics.dead_letter, expect=1)
    ]
    assert len(letters) == 1
    assert letters[0].payload == b"\x93not a reading"
    assert letters[0].reason.startswith("undecodable reading")
    assert letters[0].source.startswith(f"kafka:{topics.readings}/")


async def _publish(stack: Stack, topics: Topics, readings: list[Reading]) -> None:
    messages = [(r.device_id.encode(), contracts.encode(r)) for r in readings]
    await produce(stack.settings.kafka_bootstrap, topics.readings, messages)


async def _run_until(settings: StreamSettings, database: str, rows: int) -> None:
    """A stream process that runs until ``rows`` readings are stored, then stops."""
    async with StreamService(settings) as service, asyncio.TaskGroup() as tasks:
        runner = tasks.create_task(service.run())
        await eventually(lambda: _equals(scalar(database, "SELECT count(*) FROM readings"), rows))
        runner.cancel()


async def _equals(value: object, expected: object) -> bool:
    return await value == expected  # type: ignore[misc]


async def test_a_restarted_stream_warms_up_from_history_and_catches_the_next_spike(
    stack: Stack, topics: Topics, database: str, uid: str
) -> None:
    settings = StreamSettings(topic_prefix=topics.prefix, pg_dsn=database, group_id=f"s-{uid}", metrics_port=-1)

    def reading(i: int) -> Reading:
        value = 400.0 + (i % 5) * 0.5 + (80.0 if i == 45 else 0.0)
        return Reading("dev-1", "pipe_node", i, T0 + i * 1_000_000, {"pressure_kpa": value}, T0)

    await _publish(stack, topics, [reading(i) for i in range(40)])
    await _run_until(settings, database, 40)
    # A new process: without history it would need 30 readings before it could alert.
    await _publish(stack, topics, [reading(i) for i in range(40, 50)])
    await _run_until(settings, database, 50)
    alerts = [
        contracts.decode_alert(v)
        for v in await read_topic(stack.settings.kafka_bootstrap, topics.alerts, expect=1, timeout=10)
    ]
    assert [(a.device_id, a.seq) for a in alerts] == [("dev-1", 45)]
    assert abs(alerts[0].baseline - 401.0) < 1.0  # the baseline came from the stored history


async def test_a_batch_opening_with_an_old_duplicate_does_not_fool_a_cold_detector(
    stack: Stack, topics: Topics, database: str, uid: str
) -> None:
    """The series shifted from 50 to 80 long ago; a new process must not alarm on 80 because a
    redelivered old reading happened to open its first batch."""
    settings = StreamSettings(topic_prefix=topics.prefix, pg_dsn=database, group_id=f"s-{uid}", metrics_port=-1)

    def reading(i: int) -> Reading:
        value = (50.0 if i < 100 else 80.0) + (i % 5) * 0.3
        return Reading("dev-2", "pipe_node", i, T0 + i * 1_000_000, {"pressure_kpa": value}, T0)

    await _publish(stack, topics, [reading(i) for i in range(201)])
    await _run_until(settings, database, 201)
    first = [
        contracts.decode_alert(v).seq
        for v in await read_topic(stack.settings.kafka_bootstrap, topics.alerts, expect=100, timeout=3)
    ]
    await _publish(stack, topics, [reading(50), reading(201)])  # a redelivered old reading, then a new one
    await _run_until(settings, database, 202)
    after = [
        contracts.decode_alert(v).seq
        for v in await read_topic(stack.settings.kafka_bootstrap, topics.alerts, expect=100, timeout=3)
    ]
    assert after == first  # nothing new: 201 is normal for the level the series had settled at
    assert all(seq < 201 for seq in after)


def _noisy(device: str, i: int, *, spike: dict[int, float] | None = None) -> Reading:
    """A pressure series with deterministic noise (sd about 1 kPa) and optional spikes."""
    jitter = ((i * 7919) % 13 - 6) / 3.7
    value = 400.0 + jitter + (spike or {}).get(i, 0.0)
    return Reading(device, "pipe_node", i, T0 + i * 1_000_000, {"pressure_kpa": value}, T0)


async def _run_service(settings: StreamSettings, database: str, rows: int) -> StreamService:
    service = StreamService(settings)
    async with service, asyncio.TaskGroup() as tasks:
        runner = tasks.create_task(service.run())
        await eventually(lambda: _equals(scalar(database, "SELECT count(*) FROM readings"), rows))
        runner.cancel()
    return service


async def test_a_restarted_stream_resumes_its_saved_state_exactly(
    stack: Stack, topics: Topics, database: str, uid: str
) -> None:
    """Stop (state saved), more readings arrive, start again (state restored, readings since
    replayed): the detector ends exactly where one that never stopped would be. (A warm-up
    from history instead would replay only 5 readings and end elsewhere.)"""
    settings = StreamSettings(
        topic_prefix=topics.prefix, pg_dsn=database, group_id=f"s-{uid}", metrics_port=-1, warmup_readings=5
    )
    readings = [_noisy("dev-3", i, spike={70: 30.0, 140: -25.0}) for i in range(300)]
    await _publish(stack, topics, readings[:100])
    await _run_service(settings, database, 100)
    assert await scalar(database, "SELECT count(*) FROM detector_state WHERE device_id = 'dev-3'") == 1
    # Stored but not yet seen by the next process: it replays them after the saved state.
    await _publish(stack, topics, readings[100:300])
    second = await _run_service(settings, database, 300)

    reference = Detector(DetectorConfig.load(DEFAULT_FILE))
    reference.bind(0, "pipe_node", "pressure_kpa")
    reference.update(
        np.zeros(300, np.int64),
        np.array([r.ts_us for r in readings], np.int64),
        np.array([r.metrics["pressure_kpa"] for r in readings]),
    )
    sid = second.series.id("dev-3", "pressure_kpa")
    np.testing.assert_array_equal(second.detector.state[sid], reference.state[0])
    alerts = [
        contracts.decode_alert(v)
        for v in await read_topic(stack.settings.kafka_bootstrap, topics.alerts, expect=2, timeout=10)
    ]
    assert sorted(a.seq for a in alerts) == [70, 140]
    assert all(a.explanation and a.detectors for a in alerts)


@pytest.mark.parametrize(
    "lose_state",
    [
        "DELETE FROM detector_state RETURNING 1",
        "UPDATE detector_state SET state = 'not a state' RETURNING 1",  # another version's bytes
    ],
)
async def test_without_a_usable_saved_state_a_stream_warms_up_from_history(
    stack: Stack, topics: Topics, database: str, uid: str, lose_state: str
) -> None:
    settings = StreamSettings(topic_prefix=topics.prefix, pg_dsn=database, group_id=f"s-{uid}", metrics_port=-1)
    await _publish(stack, topics, [_noisy("dev-4", i) for i in range(40)])
    await _run_service(settings, database, 40)
    await scalar(database, lose_state)
    # Without history a cold detector would need 30 readings before it could alert.
    await _publish(stack, topics, [_noisy("dev-4", i, spike={45: 40.0}) for i in range(40, 50)])
    await _run_service(settings, database, 50)
    (alert,) = [
        contracts.decode_alert(v)
        for v in await read_topic(stack.settings.kafka_bootstrap, topics.alerts, expect=1, timeout=10)
    ]
    assert alert.seq == 45 and abs(alert.baseline - 400.0) < 1.5


async def test_profile_edits_apply_without_a_restart(
    stack: Stack, topics: Topics, database: str, uid: str, tmp_path: Path
) -> None:
    profiles = tmp_path / "profiles.toml"
    profiles.write_text("[defaults]\nthreshold = 1.0\n")  # only certainties alarm
    settings = StreamSettings(
        topic_prefix=topics.prefix,
        pg_dsn=database,
        group_id=f"s-{uid}",
        metrics_port=-1,
        profiles=profiles,
        profiles_check_s=0.05,
    )
    moderate = {45: 4.5, 95: 4.5}  # about 1e-5: alarms at 0.3, not at 1.0
    async with StreamService(settings) as service, asyncio.TaskGroup() as tasks:
        runner = tasks.create_task(service.run())
        await _publish(stack, topics, [_noisy("dev-5", i, spike=moderate) for i in range(60)])
        await eventually(lambda: _equals(scalar(database, "SELECT count(*) FROM readings"), 60))

        profiles.write_text("[defaults]\nthreshold = 0.3\nrefractory = 5\n")
        await eventually(lambda: _true(service.detector.config.default.threshold == 0.3))
        invalid = PROFILE_RELOADS.labels("invalid")
        refused = invalid._value.get()
        profiles.write_text("[defaults]\nthreshold = 'high'\n")  # a bad edit keeps what works
        await eventually(lambda: _true(invalid._value.get() > refused))
        assert service.detector.config.default.threshold == 0.3

        await _publish(stack, topics, [_noisy("dev-5", i, spike=moderate) for i in range(60, 110)])
        await eventually(lambda: _equals(scalar(database, "SELECT count(*) FROM readings"), 110))
        runner.cancel()
    alerts = [
        contracts.decode_alert(v)
        for v in await read_topic(stack.settings.kafka_bootstrap, topics.alerts, expect=2, timeout=5)
    ]
    assert [a.seq for a in alerts] == [95]


async def test_a_silent_series_raises_one_staleness_alert(
    stack: Stack, topics: Topics, database: str, uid: str
) -> None:
    clock = ManualClock(T0 + 100_000_000)
    # The loop's own checks are not due in this test: it runs them in step with the clock.
    settings = StreamSettings(
        topic_prefix=topics.prefix, pg_dsn=database, group_id=f"s-{uid}", metrics_port=-1, stale_check_s=3_600
    )
    async with StreamService(settings, clock=clock) as service, asyncio.TaskGroup() as tasks:
        runner = tasks.create_task(service.run())
        await _publish(stack, topics, [_noisy("dev-6", i) for i in range(40)])
        await eventually(lambda: _equals(scalar(database, "SELECT count(*) FROM readings"), 40))
        clock.now_us += 20_000_000  # 20 s of silence after 1 s readings: not yet (30 s minimum)
        assert await service.check_staleness() == []
        clock.now_us += 20_000_000
        assert len(await service.check_staleness()) == 1
        clock.now_us += 60_000_000
        assert await service.check_staleness() == []  # once per silence
        runner.cancel()
    alerts = [
        contracts.decode_alert(v)
        for v in await read_topic(stack.settings.kafka_bootstrap, topics.alerts, expect=2, timeout=5)
    ]
    assert [(a.device_id, a.metric, a.detector) for a in alerts] == [("dev-6", "pressure_kpa", "staleness")]
    assert "no reading for 40 s (pressure_kpa)" in alerts[0].explanation
    assert service.stream_time() > T0 + 39_000_000


async def _true(value: bool) -> bool:
    return value


@pytest.mark.slow
async def test_a_rebalance_hands_detector_state_to_the_new_owner(
    stack: Stack, topics: Topics, database: str, uid: str
) -> None:
    """A second instance joins the group: the first saves the state of the partitions it gives
    up, the second restores it, and every series ends exactly where one uninterrupted detector
    would be (each reading folded in once, by one of them; a warm-up from history would replay
    only 5 readings)."""
    settings = StreamSettings(
        topic_prefix=topics.prefix, pg_dsn=database, group_id=f"s-{uid}", metrics_port=-1, warmup_readings=5
    )
    devices = [f"reb-{k}" for k in range(12)]  # spread over the topic's 3 partitions
    first_half = [_noisy(d, i) for i in range(60) for d in devices]
    second_half = [_noisy(d, i) for i in range(60, 120) for d in devices]
    async with StreamService(settings) as a, asyncio.TaskGroup() as tasks:
        run_a = tasks.create_task(a.run())
        await _publish(stack, topics, first_half)
        await eventually(lambda: _equals(scalar(database, "SELECT count(*) FROM readings"), 720))
        async with StreamService(settings.model_copy(update={"client_id": f"b-{uid}"})) as b:
            run_b = tasks.create_task(b.run())
            await eventually(lambda: _true(bool(b._consumer and b._consumer.assignment())), timeout=60)
            await eventually(lambda: _true(len(a._consumer.assignment()) < 3 if a._consumer else False), timeout=60)
            await _publish(stack, topics, second_half)
            await eventually(lambda: _equals(scalar(database, "SELECT count(*) FROM readings"), 1440), timeout=60)
            run_b.cancel()
            run_a.cancel()

    moved = [d for d in devices if not a.detector.is_cold(a.series.id(d, "pressure_kpa"))]
    taken = [d for d in devices if d in {k[0] for k in (b.series.key(s) for s in range(len(b.series)))}]
    assert taken, "the second instance took no partition"
    for device in devices:
        owner = b if device in taken else a
        sid = owner.series.id(device, "pressure_kpa")
        reference = Detector(DetectorConfig.load(DEFAULT_FILE))
        reference.bind(0, "pipe_node", "pressure_kpa")
        readings = [r for r in first_half + second_half if r.device_id == device]
        reference.update(
            np.zeros(len(readings), np.int64),
            np.array([r.ts_us for r in readings], np.int64),
            np.array([r.metrics["pressure_kpa"] for r in readings]),
        )
        np.testing.assert_array_equal(owner.detector.state[sid], reference.state[0], err_msg=device)
    assert set(moved).isdisjoint(taken)


async def test_a_series_silent_for_longer_than_the_age_cap_starts_cold(
    stack: Stack, topics: Topics, database: str, uid: str
) -> None:
    """Yesterday's state must not judge today: after a silence longer than
    ``warmup_max_age_s`` neither the saved state nor the old history is used."""
    settings = StreamSettings(
        topic_prefix=topics.prefix, pg_dsn=database, group_id=f"s-{uid}", metrics_port=-1, warmup_max_age_s=600
    )
    await _publish(stack, topics, [_noisy("dev-7", i) for i in range(60)])
    await _run_service(settings, database, 60)
    later = [
        Reading("dev-7", "pipe_node", 1000 + i, T0 + (7200 + i) * 1_000_000, {"pressure_kpa": 300.0 + (i % 3)}, T0)
        for i in range(20)
    ]
    await _publish(stack, topics, later)  # two hours later, at another level
    second = await _run_service(settings, database, 80)
    assert second.detector.state[second.series.id("dev-7", "pressure_kpa"), 0] == 20  # only today's readings
    assert not await read_topic(stack.settings.kafka_bootstrap, topics.alerts, expect=1, timeout=3)


async def test_a_device_that_fell_silent_while_no_consumer_ran_is_noticed(
    stack: Stack, topics: Topics, database: str, uid: str
) -> None:
    """The stream stops; the device stops too. A new stream process adopts the saved state of
    its partitions at assignment, so it knows the device and raises one staleness alert
    without waiting for a reading that will not come."""
    settings = StreamSettings(
        topic_prefix=topics.prefix, pg_dsn=database, group_id=f"s-{uid}", metrics_port=-1, stale_check_s=1
    )
    await _publish(stack, topics, [_noisy("dev-8", i) for i in range(40)])
    await _run_service(settings, database, 40)

    clock = ManualClock(T0 + 40_000_000)
    async with StreamService(settings, clock=clock) as service, asyncio.TaskGroup() as tasks:
        runner = tasks.create_task(service.run())
        await eventually(lambda: _true(service.series.find("dev-8", "pressure_kpa") is not None), timeout=30)
        sid = service.series.id("dev-8", "pressure_kpa")
        assert service.detector.state[sid, 0] == 40  # restored as it was saved, nothing replayed twice
        clock.now_us += 120_000_000  # two minutes of silence on the clock: nothing to catch up
        alerts = [
            contracts.decode_alert(v)
            for v in await read_topic(stack.settings.kafka_bootstrap, topics.alerts, expect=1, timeout=15)
        ]
        runner.cancel()
    assert [(a.device_id, a.detector) for a in alerts] == [("dev-8", "staleness")]


async def test_a_partition_still_catching_up_raises_no_false_staleness(
    stack: Stack, topics: Topics, database: str, uid: str
) -> None:
    """Batches straight into ``process()``: partition 0 has caught up to T0 + 600 s, partition 1
    (still replaying a backlog) only to T0 + 40 s. Its device is not silent, only behind."""
    clock = ManualClock(T0 + 601_000_000)
    settings = StreamSettings(topic_prefix=topics.prefix, pg_dsn=database, group_id=f"s-{uid}", metrics_port=-1)

    def records(partition: int, readings: list[Reading]) -> list[ConsumerRecord[bytes, bytes]]:
        return [
            ConsumerRecord(
                topics.readings, partition, i, 0, 0, r.device_id.encode(), contracts.encode(r), None, 0, 0, ()
            )
            for i, r in enumerate(readings)
        ]

    async with StreamService(settings, clock=clock) as service:
        await service.process(
            {
                TopicPartition(topics.readings, 0): records(0, [_noisy("ahead", i) for i in range(0, 601, 10)]),
                TopicPartition(topics.readings, 1): records(1, [_noisy("behind", i) for i in range(0, 41)]),
            }
        )
        assert await service.check_staleness() == []
        # The price: silence is judged on the slowest partition's time, so "ahead" is found
        # silent only once that time passes its last reading (here after 700 s of nothing, with
        # every partition read to its end).
        clock.now_us += 700_000_000
        for partition in range(3):
            service.progress.drained(partition, clock.now_us)
        stale = await service.check_staleness()
    assert sorted(a.device_id for a in stale) == ["ahead", "behind"]


def _pipe(device: str, i: int, *, flow: bool = True) -> Reading:
    values = {"pressure_kpa": 400.0 + (i * 7919) % 13 / 3.7}
    if flow:
        values["flow_m3h"] = 50.0 + (i * 104729) % 11 / 5.0
    return Reading(device, "pipe_node", i, T0 + i * 1_000_000, values, T0)


async def _drained(service: StreamService, readings: int) -> bool:
    """The consumer has read ``readings`` messages and has nothing left to read."""
    consumer = service._consumer
    if consumer is None:
        return False
    parts = [tp for tp in consumer.assignment() if tp.topic == service.settings.topics.readings]
    highs = [consumer.highwater(tp) for tp in parts]
    if not parts or None in highs:
        return False
    return sum(h or 0 for h in highs) == readings and all(
        [await consumer.position(tp) == h for tp, h in zip(parts, highs, strict=True)]
    )


async def test_a_paused_stream_raises_no_staleness(stack: Stack, topics: Topics, database: str, uid: str) -> None:
    """The service stalls for two minutes (here: its state lock held, as by a long batch) while
    the device keeps reporting. Its readings wait unread; the device is not silent."""
    clock = ManualClock(T0 + 40_000_000)
    settings = StreamSettings(
        topic_prefix=topics.prefix, pg_dsn=database, group_id=f"s-{uid}", metrics_port=-1, stale_check_s=3_600
    )
    async with StreamService(settings, clock=clock) as service, asyncio.TaskGroup() as tasks:
        runner = tasks.create_task(service.run())
        await _publish(stack, topics, [_noisy("dev-p", i) for i in range(40)])
        await eventually(lambda: _equals(scalar(database, "SELECT count(*) FROM readings"), 40))
        await eventually(lambda: _drained(service, 40))
        async with service._state_lock:
            await _publish(stack, topics, [_noisy("dev-p", i) for i in range(40, 160)])
            # The fetcher has seen them (the consumer is behind), the batch waits for the lock.
            await eventually(lambda: _lagging(service))
            clock.now_us += 120_000_000
            assert await service.check_staleness() == []
        await eventually(lambda: _equals(scalar(database, "SELECT count(*) FROM readings"), 160))
        assert await service.check_staleness() == []
        await eventually(lambda: _drained(service, 160))
        clock.now_us += 60_000_000  # now a real silence of a minute, with nothing left to read
        stale = await service.check_staleness()
        runner.cancel()
    assert [(a.device_id, a.alert_class) for a in stale] == [("dev-p", contracts.TruthCategory.INCIDENT)]


async def _lagging(service: StreamService) -> bool:
    consumer = service._consumer
    assert consumer is not None
    for tp in consumer.assignment():
        high = consumer.highwater(tp)
        if tp.topic == service.settings.topics.readings and high is not None and await consumer.position(tp) < high:
            return True
    return False


async def test_silence_is_told_apart_device_metric_and_feed(
    stack: Stack, topics: Topics, database: str, uid: str
) -> None:
    """A device that stops: one alert for both its metrics. A metric that stops while its
    device reports: a sensor fault. Most of the feed at once: one platform alert; the devices
    still silent once the feed is back are then alerted on one by one."""
    clock = ManualClock(T0 + 100_000_000)  # readings arrive as they are stamped
    settings = StreamSettings(
        topic_prefix=topics.prefix,
        pg_dsn=database,
        group_id=f"s-{uid}",
        metrics_port=-1,
        stale_check_s=3_600,
        mass_silence_min_devices=10,
    )
    fleet = [f"f-{k}" for k in range(24)]
    async with StreamService(settings, clock=clock) as service, asyncio.TaskGroup() as tasks:
        runner = tasks.create_task(service.run())
        # 0..39 s: everyone reports both metrics. 40..99 s: "quiet" stops, "flowless" loses its
        # flow meter, the fleet goes on.
        first = [_pipe(d, i) for i in range(40) for d in ["quiet", "flowless", *fleet]]
        then = [_pipe(d, i, flow=d != "flowless") for i in range(40, 100) for d in ["flowless", *fleet]]
        await _publish(stack, topics, first + then)
        total = 2 * len(first) + 2 * len(then) - 60
        await eventually(lambda: _equals(scalar(database, "SELECT count(*) FROM readings"), total), timeout=60)
        await eventually(lambda: _drained(service, len(first) + len(then)))
        alone = await service.check_staleness()
        assert sorted((a.device_id, a.metric, a.alert_class) for a in alone) == [
            ("flowless", "flow_m3h", contracts.TruthCategory.SENSOR_FAULT),
            ("quiet", "pressure_kpa", contracts.TruthCategory.INCIDENT),  # its most frequent metric
        ]
        assert "none of its 2 metrics" in next(a for a in alone if a.device_id == "quiet").explanation
        clock.now_us += 60_000_000  # everyone silent for a minute: the feed, not 25 devices
        feed = await service.check_staleness()
        assert [(a.device_id, a.alert_class, a.value) for a in feed] == [
            (f"feed/{topics.readings}", contracts.TruthCategory.PLATFORM, 25.0)
        ]
        assert "25 of 25 reporting devices" in feed[0].explanation
        clock.now_us += 60_000_000
        assert await service.check_staleness() == []  # once per silence
        # The feed is back for all but three of the fleet: those three are silent on their own.
        back = [_pipe(d, i, flow=d != "flowless") for i in range(220, 225) for d in ["flowless", *fleet[3:]]]
        clock.now_us = T0 + 225_000_000
        await _publish(stack, topics, back)
        await eventually(lambda: _drained(service, len(first) + len(then) + len(back)))
        left = await service.check_staleness()
        runner.cancel()
    assert sorted(a.device_id for a in left) == fleet[:3]
    assert {a.alert_class for a in left} == {contracts.TruthCategory.INCIDENT}


async def test_each_alert_says_what_it_is(stack: Stack, topics: Topics, database: str, uid: str) -> None:
    """A sensor stuck at one value is a sensor fault, and says why; a spike may be the city."""
    settings = StreamSettings(topic_prefix=topics.prefix, pg_dsn=database, group_id=f"s-{uid}", metrics_port=-1)
    stuck = [_noisy("stuck", i) for i in range(60)] + [
        Reading("stuck", "pipe_node", i, T0 + i * 1_000_000, {"pressure_kpa": 401.0}, T0) for i in range(60, 90)
    ]
    spiky = [_noisy("spiky", i, spike={70: 80.0}) for i in range(90)]
    await _publish(stack, topics, stuck + spiky)
    await _run_until(settings, database, 180)
    alerts = [
        contracts.decode_alert(v)
        for v in await read_topic(stack.settings.kafka_bootstrap, topics.alerts, expect=2, timeout=10)
    ]
    by_device = {a.device_id: a for a in alerts}
    assert sorted(by_device) == ["spiky", "stuck"] and len(alerts) == 2
    assert by_device["stuck"].detector == "flatline"
    assert by_device["stuck"].alert_class is contracts.TruthCategory.SENSOR_FAULT
    assert by_device["stuck"].explanation.endswith("judged a sensor fault: a stuck sensor")
    assert by_device["spiky"].alert_class is contracts.TruthCategory.INCIDENT and by_device["spiky"].seq == 70
