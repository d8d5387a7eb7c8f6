"""The stream service: readings from Kafka -> PostgreSQL, detectors -> alerts topic.

Delivery: offsets are committed only after the batch is durably stored and its alerts and
dead letters are acknowledged by Kafka. A crash anywhere before that replays the batch:
stored rows are deduplicated by the (device, metric, ts) key; alerts may be published again
with the same ``alert_id`` (consumers deduplicate on it). Nothing is lost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import msgspec
import numpy as np
import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.partitioner import murmur2

from cityops.core import log
from cityops.core.aio import AsyncService, close_quietly, race
from cityops.core.contracts import (
    Alert,
    DeadLetter,
    Reading,
    decode_reading,
    encode,
    now_us,
    to_datetime,
)
from cityops.core.errors import is_retriable
from cityops.core.health import Backoff, Health
from cityops.core.kafka import make_consumer, make_producer
from cityops.core.metrics import MetricsServer
from stream import alerts, metrics
from stream.detectors import (
    BOOL,
    I64,
    Detector,
    DetectorConfig,
    compile_kernels,
)
from stream.errors import ConfigError
from stream.profiles import ProfileFile
from stream.series import SeriesIndex
from stream.settings import StreamSettings
from stream.silence import Progress, Silence
from stream.store import ReadingStore, Rows, all_states, history, save_states

_log = log.get("stream")

Batch = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]


class _ForgetRevoked(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, service: StreamService) -> None:
        self._service = service

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._service.hand_over([tp.partition for tp in revoked])

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._service.adopt([tp.partition for tp in assigned])


class StreamService(AsyncService):
    def __init__(
        self,
        settings: StreamSettings,
        *,
        clock: Callable[[], int] = now_us,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._topics = settings.topics
        self.store = ReadingStore(settings.pg_dsn, mode=settings.storage_mode)
        self.series = SeriesIndex()
        self.detector = Detector(DetectorConfig())  # the profiles file is read in start()
        self._profiles = ProfileFile(settings.profiles)
        self._kinds: list[str] = []  # device class per series id
        self._dirty: set[int] = set()  # series whose state changed since the last snapshot
        # Partitions catch up unevenly after a backlog: silence is judged in the time of the
        # one furthest behind, and only over time it was known read to its end.
        self.progress = Progress()
        self._silence = Silence(
            mass_share=settings.mass_silence_share, mass_min_devices=settings.mass_silence_min_devices
        )
        # Rebalance callbacks run while a batch may be suspended mid-way: restoring, replaying
        # and scoring take this lock, so no series is folded twice.
        self._state_lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._series_by_partition: dict[int, set[int]] = {}
        self._producer: AIOKafkaProducer | None = None
        self._metrics: MetricsServer | None = None
        self.health = Health("stream", ["postgres", "kafka"])
        self._store_broken = True  # not connected yet

    async def start(self) -> None:
        """Read the profiles, compile, serve metrics and ``/healthz``, then connect to the
        database and Kafka, waiting for them (with backoff) while they are away: a service
        started before its dependencies does not exit. A refusal (a wrong password) raises."""
        s = self.settings
        self.detector.reload(self._profiles.load())
        # Before joining the group: compiling inside the poll loop would miss heartbeats.
        await asyncio.to_thread(compile_kernels)
        if s.metrics_port >= 0:
            self._metrics = MetricsServer(s.metrics_host, s.metrics_port, health=self.health)
            await self._metrics.start()
        await self._connect()
        _log.info(
            "stream started",
            topic=self._topics.readings,
            group=s.group_id,
            storage=self.store.mode,
            profiles=str(self._profiles.path),
        )

    async def _connect(self) -> None:
        """Open what is not open (the database first: a consumer without it would hold
        partitions it cannot store), retrying what may come back."""
        s = self.settings
        backoff = Backoff()
        while True:
            try:
                if self._store_broken:
                    await close_quietly(self.store.stop())
                    await self.store.start()
                    self._store_broken = False
                    self.health.up("postgres")
                if self._producer is None:
                    producer = make_producer(s.kafka_bootstrap, client_id=s.client_id)
                    try:
                        await producer.start()
                    except BaseException:
                        await close_quietly(producer.stop())
                        raise
                    self._producer = producer
                if self._consumer is None:
                    consumer = make_consumer(
                        s.kafka_bootstrap,
                        self._topics.readings,
                        listener=_ForgetRevoked(self),
                        group_id=s.group_id,
                        client_id=s.client_id,
                        max_poll_records=s.max_batch,
                    )
                    # Set before start(): the assignment callback (adopt) may run inside it.
                    self._consumer = consumer
                    try:
                        await consumer.start()
                    except BaseException:
                        self._consumer = None
                        await close_quietly(consumer.stop())
                        raise
                    self.health.up("kafka")  # the new consumer reached it
                return
            except Exception as exc:
                if not is_retriable(exc):
                    raise
                self._lost(exc)
                await asyncio.sleep(backoff.next())

    async def probe_kafka(self) -> None:
        """Ask Kafka for its metadata, bounded: ``/healthz`` says whether it answered."""
        consumer = self._consumer
        if consumer is None:  # being reopened: _connect() reports how that goes
            return
        try:
            await asyncio.wait_for(consumer.topics(), self.settings.kafka_probe_timeout_s)
        except (KafkaError, TimeoutError) as exc:
            # aiokafka says "no broker answered" with a bare KafkaError, final to it: an outage
            # all the same. Nothing else here is final either: the probe only reports.
            timeout = self.settings.kafka_probe_timeout_s
            self.health.down("kafka", f"no answer within {timeout:g} s" if isinstance(exc, TimeoutError) else exc)
            return
        self.health.up("kafka")

    def _lost(self, exc: BaseException) -> None:
        """A dependency failed: say which, and reconnect to the database before its next use
        (a connection that dropped stays broken)."""
        if isinstance(exc, psycopg.Error):
            self.health.down("postgres", exc)
            self._store_broken = True
        else:
            self.health.down("kafka", exc)

    @property
    def metrics_port(self) -> int | None:
        """Where ``/metrics`` is served (the real port when configured as 0), None if disabled."""
        return self._metrics.port if self._metrics is not None else None

    async def stop(self) -> None:
        """Within seconds even with a dependency gone: hand the partitions over (saving their
        detector state), save the rest, and close."""
        timeout = self.settings.close_timeout_s
        if self._consumer is not None:
            await close_quietly(self._consumer.stop(), timeout_s=timeout)
            self._consumer = None
        if self.store.mode is not None and not self._store_broken:
            try:
                await asyncio.wait_for(self.save_states(sorted(self._dirty)), timeout)
            except (psycopg.Error, TimeoutError) as exc:
                _log.warning("detector state not saved", error=repr(exc))
        if self._producer is not None:
            await close_quietly(self._producer.stop(), timeout_s=timeout)
            self._producer = None
        await close_quietly(self.store.stop(), timeout_s=timeout)
        if self._metrics is not None:
            await self._metrics.stop()
        _log.info("stream stopped")

    async def run(self) -> None:
        """Consume until cancelled, riding out outages of the database and of Kafka, and watch
        Kafka alongside: a batch whose commit waits for Kafka to return raises nothing, so only
        asking tells that it is away."""
        assert self._consumer is not None, "start() first"
        await race(self._consume(), self._watch_kafka())

    async def _watch_kafka(self) -> None:
        while True:
            up = self.health.is_up("kafka")
            await asyncio.sleep(self.settings.kafka_probe_s if up else 0.5)
            await self.probe_kafka()

    async def _consume(self) -> None:
        """Between batches, on the writer's own connection (never inside a batch's transaction)
        and on the injected clock: rollup maintenance, profile reloads, staleness, snapshots."""
        assert self._consumer is not None, "start() first"
        s = self.settings
        due: dict[str, float] = {}
        every = {
            "maintain": s.maintenance_interval_s,
            "profiles": s.profiles_check_s,
            "stale": s.stale_check_s,
            "snapshot": s.snapshot_interval_s,
        }
        start = self._clock()
        for name, seconds in every.items():
            due[name] = start + seconds * 1e6
        while True:
            batch = await self._consumer.getmany(timeout_ms=s.poll_timeout_ms, max_records=s.max_batch)
            if batch:
                await self._store_until_done(batch)
            now = self._clock()
            try:
                await self._connect()
                if now >= due["maintain"]:
                    await self.store.maintain(to_datetime(self._clock()))
                if now >= due["profiles"]:
                    self.reload_profiles()
                if now >= due["stale"]:
                    await self.check_staleness()
                if now >= due["snapshot"]:
                    await self.save_states(sorted(self._dirty))
            except Exception as exc:
                if not is_retriable(exc):
                    raise
                self._lost(exc)  # tried again when next due
            for name, at in due.items():
                if now >= at:
                    due[name] = now + every[name] * 1e6

    async def _store_until_done(self, batch: Batch) -> None:
        """Process ``batch`` until it is stored and committed, however long its dependencies are
        away. A failed attempt may have moved the batch's series' detectors past readings that
        were then not stored: those series start again from their saved state and what is
        stored, as after a restart, so the retry scores (and alerts on) every reading once."""
        backoff = Backoff()
        while True:
            try:
                await self._connect()
                await self.process_isolating(batch)
            except Exception as exc:
                if not is_retriable(exc):
                    raise
                metrics.ERRORS.labels("retried").inc()
                self._lost(exc)
                self._rewind(batch)
                _log.warning("batch not stored; retrying", error=repr(exc), records=sum(map(len, batch.values())))
                await asyncio.sleep(backoff.next())
                continue
            self.health.up("postgres")
            self.health.up("kafka")
            return

    def _rewind(self, batch: Batch) -> None:
        touched = {sid for records in batch.values() for rec in records for sid in self._series_of(rec)}
        if touched:
            self.detector.reset(np.fromiter(touched, np.int64))
            self._dirty.difference_update(touched)

    def _series_of(self, rec: ConsumerRecord[bytes, bytes]) -> list[int]:
        try:
            reading = decode_reading(rec.value or b"")
        except msgspec.DecodeError:
            return []
        return [sid for m in reading.metrics if (sid := self.series.find(reading.device_id, m)) is not None]

    def reload_profiles(self) -> bool:
        """Apply the profile file if it changed; an invalid file keeps the profiles in force."""
        try:
            config = self._profiles.poll()
        except ConfigError as exc:
            metrics.PROFILE_RELOADS.labels("invalid").inc()
            _log.error("detector profiles not reloaded", error=str(exc))
            return False
        if config is None:
            return False
        self.detector.reload(config)
        metrics.PROFILE_RELOADS.labels("ok").inc()
        _log.info("detector profiles reloaded", file=config.source, profiles=len(config.overrides) + 1)
        return True

    def stream_time(self) -> int:
        """How far the pipeline has got (``stream.silence``); 0 while that is unknown. Partitions
        read to their end advance with the clock, so a whole city that fell silent while no
        consumer ran is still noticed."""
        return self.progress.stream_time() or 0

    async def note_progress(self) -> None:
        """Mark the partitions the consumer has read to their end. What the broker holds is
        known as of the consumer's last fetch for the partition, so the mark is put back by
        that fetch's age: a fetch from before a stall says nothing about the stall."""
        consumer = self._consumer
        if consumer is None:
            return
        now = self._clock()
        wall_ms = time.time() * 1000.0  # the fetcher stamps fetches with the wall clock
        for tp in consumer.assignment():
            if tp.topic != self._topics.readings:
                continue
            try:
                high, fetched = consumer.highwater(tp), consumer.last_poll_timestamp(tp)
                if high is None or fetched is None or await consumer.position(tp) < high:
                    continue
            except IllegalStateError:  # revoked meanwhile
                continue
            self.progress.drained(tp.partition, now - max(0, int((wall_ms - fetched) * 1000.0)))

    async def check_staleness(self) -> list[Alert]:
        """Alert once per silence, judged in stream time (``stream.silence``): a silent device,
        a metric that stopped while its device reports, or most of the feed at once."""
        assert self._producer is not None
        await self.note_progress()
        now = self.stream_time()
        if not now:
            return []
        found = self._silence.judge(self.detector, self.series, now)
        emitted = self._clock()
        out = [
            alerts.silence(self.detector, sid, self.series.key(sid), self._kinds[sid], now, emitted, device_metrics=n)
            for sid, n in found.devices
        ]
        out += [
            alerts.silence(self.detector, sid, self.series.key(sid), self._kinds[sid], now, emitted)
            for sid in found.metrics
        ]
        if found.feed is not None:
            kinds = [self._kinds[sid] for sid in found.feed.shown_by]
            out.append(alerts.feed_silence(self._topics.readings, found.feed, kinds, now, emitted))
            _log.warning("feed silent", silent_devices=found.feed.silent, reporting=found.feed.reporting)
        for a in out:
            metrics.SILENCES.labels(a.alert_class.value).inc()
        if out:
            await asyncio.gather(*[await self._send_alert(a) for a in out])
        return out

    async def save_states(self, series: list[int], conn: psycopg.AsyncConnection[object] | None = None) -> None:
        """Snapshot these series' detector state to PostgreSQL."""
        series = [sid for sid in series if not self.detector.is_cold(sid)]
        if not series:
            return
        sids = np.asarray(series, np.int64)
        await save_states(
            conn or self.store.conn,
            [self.series.key(sid) for sid in series],
            [self._kinds[sid] for sid in series],
            self.detector.snapshot(sids),
            [self.detector.last_ts(sid) for sid in series],
        )
        self._dirty.difference_update(series)
        metrics.STATES_SAVED.inc(len(series))

    async def process_isolating(self, batch: Batch) -> None:
        """Process a batch; if the database refuses its data (a value no contract check caught),
        process it record by record, and send the records it refuses alone to the dead-letter
        topic with their offsets, so one record cannot stop a partition (or, replayed after every
        restart, the service). The offsets are committed once, after the last record."""
        try:
            await self.process(batch)
            return
        except psycopg.DataError as exc:
            _log.warning("batch refused by the database; isolating its records", error=str(exc))
        assert self._consumer is not None and self._producer is not None
        for tp, records in batch.items():
            for rec in records:
                try:
                    await self.process({tp: [rec]}, commit=False)
                except psycopg.DataError as exc:
                    letter = DeadLetter(
                        reason=f"refused by the database: {exc}",
                        source=f"kafka:{tp.topic}/{tp.partition}@{rec.offset}",
                        payload=rec.value or b"",
                        received_us=self._clock(),
                    )
                    _log.warning("dead letter", reason=letter.reason, source=letter.source)
                    await (await self._producer.send(self._topics.dead_letter, encode(letter), key=b""))
                    metrics.DEAD_LETTERS.inc()
        await self._commit()

    async def process(self, batch: Batch, *, commit: bool = True) -> None:
        assert self._consumer is not None and self._producer is not None
        rows = Rows()
        readings: list[Reading] = []
        dead: list[DeadLetter] = []
        now = self._clock()
        for tp, records in batch.items():
            for rec in records:
                value = rec.value or b""
                try:
                    reading = decode_reading(value)
                except msgspec.DecodeError as exc:
                    dead.append(
                        DeadLetter(
                            reason=f"undecodable reading: {exc}",
                            source=f"kafka:{tp.topic}/{tp.partition}@{rec.offset}",
                            payload=value,
                            received_us=now,
                        )
                    )
                    continue
                readings.append(reading)
                self.progress.saw(tp.partition, reading.ts_us, now)
                rows.kind_of[reading.device_id] = reading.kind
                owned = self._series_by_partition.setdefault(tp.partition, set())
                for metric, v in reading.metrics.items():
                    sid = self.series.id(reading.device_id, metric)
                    if sid == len(self._kinds):
                        self._kinds.append(reading.kind)
                        self.detector.bind(sid, reading.kind, metric)
                    owned.add(sid)
                    rows.device_ids.append(reading.device_id)
                    rows.metrics.append(metric)
                    rows.series.append(sid)
                    rows.ts_us.append(reading.ts_us)
                    rows.values.append(v)
                    rows.seq.append(reading.seq)
                    rows.gateway_us.append(reading.gateway_us)
        metrics.MESSAGES_IN.inc(sum(len(r) for r in batch.values()))
        metrics.BATCH_SIZE.observe(sum(len(r) for r in batch.values()))

        # One transaction per batch, committed only after Kafka acknowledged the batch's alerts
        # and dead letters. A crash before the commit leaves nothing stored, so the replay
        # finds every row new and raises the same alerts (same ids) again; a crash after it
        # replays rows that are stored, whose alerts were already acknowledged.
        await self.store.prepare(rows)
        try:
            async with self.store.transaction():
                new = await self.store.write(rows)
                sends = [await self._send_alert(a) for a in await self._detect(rows, new)]
                for letter in dead:
                    _log.warning("dead letter", reason=letter.reason, source=letter.source)
                    sends.append(await self._producer.send(self._topics.dead_letter, encode(letter), key=b""))
                    metrics.DEAD_LETTERS.inc()
                await asyncio.gather(*sends)
        except Exception:
            metrics.ERRORS.labels("batch").inc()
            raise
        inserted = int(new.sum())
        metrics.ROWS_STORED.inc(inserted)
        metrics.ROWS_DUPLICATE.inc(len(rows) - inserted)
        stored = self._clock()
        for reading in readings:
            metrics.LATENCY.observe(max(0.0, (stored - reading.ts_us) / 1e6))

        if commit:
            await self._commit()
        for tp, records in batch.items():
            highwater = self._consumer.highwater(tp)
            if highwater is not None and records:
                metrics.LAG.labels(str(tp.partition)).set(max(0, highwater - records[-1].offset - 1))

    async def _commit(self) -> None:
        assert self._consumer is not None
        try:
            await self._consumer.commit()
        except CommitFailedError as exc:
            # The group rebalanced under us; the new owner replays from the last commit and
            # the store's key makes the replay harmless.
            metrics.ERRORS.labels("commit").inc()
            _log.warning("offset commit failed after rebalance", error=str(exc))

    async def _warm_up(self, series: I64, ts: I64, new: BOOL) -> None:
        """Bring series the detector has not seen (or has forgotten) up to date before their
        first new reading in this batch: restore the saved state, if any, and replay the stored
        readings after it (without one: the latest ``warmup_readings``). A restored series then
        scores exactly as if the process had never stopped."""
        idx = np.flatnonzero(new)
        if not idx.size:
            return
        order = np.lexsort((ts[idx], series[idx]))
        unique, first = np.unique(series[idx][order], return_index=True)
        first_ts = ts[idx][order][first]
        floor = int(self.settings.warmup_max_age_s * 1_000_000)
        cold = []
        for s, t in zip(unique.tolist(), first_ts.tolist(), strict=True):
            if not self.detector.is_cold(s) and t - self.detector.last_ts(s) > floor:
                self.detector.reset(np.array([s], np.int64))  # silent too long: start again
            if self.detector.is_cold(s):
                cold.append((s, t))
        if not cold:
            return
        keys = [self.series.key(s) for s, _ in cold]
        saved = await self.store.load_states(keys)
        after = [t - floor for _, t in cold]
        for i, (blob, last_ts) in saved.items():
            sid, before = cold[i]
            # Not from this batch's future (it would skip readings), nor from before a silence
            # longer than the age cap (the world moved on: a cold start is more honest).
            if not before - floor <= last_ts < before:
                continue
            try:
                self.detector.restore(np.array([sid], np.int64), [blob])
            except ValueError as exc:  # not a state this version reads: warm up from history
                _log.warning("detector state not restored", series=keys[i], error=str(exc))
                self.detector.reset(np.array([sid], np.int64))
                continue
            after[i] = last_ts
            metrics.STATES_RESTORED.inc()
        hist_idx, hist_ts, hist_values = await self.store.history(
            keys, [before for _, before in cold], after, limit=self.settings.warmup_readings
        )
        if hist_idx:
            sids = np.asarray([cold[i][0] for i in hist_idx], np.int64)
            self.detector.update(sids, np.asarray(hist_ts, np.int64), np.asarray(hist_values, np.float64))
            metrics.WARMUP_READINGS.inc(len(hist_idx))

    async def adopt(self, partitions: list[int]) -> None:
        """Partitions were assigned to this consumer: restore their series' saved state now,
        not at their next reading, and replay what was stored after it, so a device that fell
        silent while no consumer ran is noticed (staleness). On a connection of its own, as in
        ``hand_over``."""
        self.progress.assign(partitions)
        if self.store.mode is None or self._consumer is None or not partitions:
            return
        total = len(self._consumer.partitions_for_topic(self._topics.readings) or ())
        if not total:
            return
        wanted = set(partitions)
        try:
            async with (
                self._state_lock,
                await psycopg.AsyncConnection.connect(self.settings.pg_dsn, autocommit=True) as conn,
            ):
                saved = [
                    st
                    for st in await all_states(conn)
                    # The gateway keys readings by device id: Kafka's default partitioner.
                    if (murmur2(st.device_id.encode()) & 0x7FFFFFFF) % total in wanted
                ]
                adopted = []
                for st in saved:
                    sid = self.series.id(st.device_id, st.metric)
                    if sid == len(self._kinds):
                        self._kinds.append(st.kind)
                        self.detector.bind(sid, st.kind, st.metric)
                    if not self.detector.is_cold(sid):
                        continue
                    try:
                        self.detector.restore(np.array([sid], np.int64), [st.state])
                    except ValueError as exc:
                        _log.warning("detector state not restored", series=(st.device_id, st.metric), error=str(exc))
                        continue
                    partition = (murmur2(st.device_id.encode()) & 0x7FFFFFFF) % total
                    self._series_by_partition.setdefault(partition, set()).add(sid)
                    adopted.append((sid, st))
                hist_idx, hist_ts, hist_values = await history(
                    conn,
                    [(st.device_id, st.metric) for _, st in adopted],
                    [2**62] * len(adopted),
                    [st.last_ts_us for _, st in adopted],
                    limit=self.settings.warmup_readings,
                )
                if hist_idx:
                    self.detector.update(
                        np.asarray([adopted[i][0] for i in hist_idx], np.int64),
                        np.asarray(hist_ts, np.int64),
                        np.asarray(hist_values, np.float64),
                    )
        except psycopg.Error as exc:
            _log.warning("detector state not adopted", error=str(exc))
            return
        metrics.STATES_RESTORED.inc(len(adopted))
        metrics.SERIES.set(len(self.series))
        _log.info("detector state adopted", partitions=sorted(wanted), series=len(adopted))

    async def hand_over(self, partitions: list[int]) -> None:
        """Partitions move to another consumer: save their series' state for the new owner
        (on a connection of its own: a batch may hold the writer's), then forget it, so that
        if they come back they resume from what the other consumer saved meanwhile."""
        async with self._state_lock:
            owned = sorted(set().union(*(self._series_by_partition.get(p, set()) for p in partitions)))
            if owned and self.store.mode is not None:
                try:
                    async with await psycopg.AsyncConnection.connect(self.settings.pg_dsn, autocommit=True) as conn:
                        await self.save_states(owned, conn)
                except psycopg.Error as exc:
                    _log.warning("detector state not handed over", error=str(exc))
            self.forget(partitions)

    def forget(self, partitions: list[int]) -> None:
        for partition in partitions:
            self.progress.forget(partition)
            owned = self._series_by_partition.pop(partition, set())
            if owned:
                self._silence.forget(np.fromiter(owned, np.int64))
                self.detector.reset(np.fromiter(owned, np.int64))
                self._dirty.difference_update(owned)

    async def _detect(self, rows: Rows, new: BOOL) -> list[Alert]:
        if not rows:
            return []
        series, values, ts = rows.arrays()
        async with self._state_lock:
            await self._warm_up(series, ts, new)
            began = time.perf_counter()
            scored = self.detector.update(series, ts, values, new)
            metrics.DETECT_SECONDS.observe(time.perf_counter() - began)
        metrics.SERIES.set(len(self.series))
        self._dirty.update(np.unique(series[new]).tolist())
        emitted = self._clock()
        return [
            alerts.from_reading(self.detector, rows, scored, int(i), emitted) for i in np.flatnonzero(scored.alarms)
        ]

    async def _send_alert(self, alert: Alert) -> asyncio.Future[object]:
        assert self._producer is not None
        _log.info(
            "alert",
            device=alert.device_id,
            metric=alert.metric,
            value=alert.value,
            baseline=round(alert.baseline, 3),
            score=round(alert.score, 2),
        )
        metrics.ALERTS_OUT.labels(alert.detector).inc()
        return await self._producer.send(self._topics.alerts, encode(alert), key=alert.device_id.encode())  # type: ignore[no-any-return]
