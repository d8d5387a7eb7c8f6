"""The stream service: readings from Kafka -> PostgreSQL, detectors -> alerts topic.

Delivery: offsets are committed only after the batch is durably stored and its alerts and
dead letters are acknowledged by Kafka. A crash anywhere before that replays the batch:
stored rows are deduplicated by the (device, metric, ts) key; alerts may be published again
with the same ``alert_id`` (consumers deduplicate on it). Nothing is lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import msgspec
import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError

from cityops import log
from cityops.contracts import Alert, DeadLetter, Reading, decode_reading, encode, now_us, to_datetime
from cityops.kafka import make_consumer, make_producer
from cityops.lifecycle import AsyncService
from cityops.metrics import MetricsServer
from stream import metrics
from stream.detectors import BOOL, I64, EwmaParams, EwmaZScore
from stream.series import SeriesIndex
from stream.settings import StreamSettings
from stream.store import ReadingStore, Rows

_log = log.get("stream")

Batch = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]


class _ForgetRevoked(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, service: StreamService) -> None:
        self._service = service

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self._service.forget([tp.partition for tp in revoked])

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        pass


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
        self.detector = EwmaZScore(
            EwmaParams(
                alpha=settings.ewma_alpha,
                warmup=settings.ewma_warmup,
                threshold=settings.ewma_threshold,
                clip=settings.ewma_clip,
                refractory=settings.ewma_refractory,
            )
        )
        self._consumer: AIOKafkaConsumer | None = None
        self._series_by_partition: dict[int, set[int]] = {}
        self._producer: AIOKafkaProducer | None = None
        self._metrics: MetricsServer | None = None

    async def start(self) -> None:
        s = self.settings
        if s.metrics_port >= 0:
            self._metrics = MetricsServer(s.metrics_host, s.metrics_port)
            await self._metrics.start()
        await self.store.start()
        self._producer = make_producer(s.kafka_bootstrap, client_id=s.client_id)
        await self._producer.start()
        self._consumer = make_consumer(
            s.kafka_bootstrap,
            self._topics.readings,
            listener=_ForgetRevoked(self),
            group_id=s.group_id,
            client_id=s.client_id,
            max_poll_records=s.max_batch,
        )
        await self._consumer.start()
        _log.info("stream started", topic=self._topics.readings, group=s.group_id, storage=self.store.mode)

    @property
    def metrics_port(self) -> int | None:
        """Where ``/metrics`` is served (the real port when configured as 0), None if disabled."""
        return self._metrics.port if self._metrics is not None else None

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        await self.store.stop()
        if self._metrics is not None:
            await self._metrics.stop()
        _log.info("stream stopped")

    async def run(self) -> None:
        """Consume until cancelled."""
        assert self._consumer is not None, "start() first"
        interval_us = int(self.settings.maintenance_interval_s * 1_000_000)
        next_maintenance = self._clock() + interval_us
        while True:
            batch = await self._consumer.getmany(
                timeout_ms=self.settings.poll_timeout_ms, max_records=self.settings.max_batch
            )
            if batch:
                await self.process(batch)
            # Between batches, on the writer's own connection: never inside a batch's transaction.
            now = self._clock()
            if now >= next_maintenance:
                await self.store.maintain(to_datetime(now))
                next_maintenance = now + interval_us

    async def process(self, batch: Batch) -> None:
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
                rows.kind_of[reading.device_id] = reading.kind
                owned = self._series_by_partition.setdefault(tp.partition, set())
                for metric, v in reading.metrics.items():
                    sid = self.series.id(reading.device_id, metric)
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

        try:
            await self._consumer.commit()
        except CommitFailedError as exc:
            # The group rebalanced under us; the new owner replays from the last commit and
            # the store's key makes the replay harmless.
            metrics.ERRORS.labels("commit").inc()
            _log.warning("offset commit failed after rebalance", error=str(exc))
        for tp, records in batch.items():
            highwater = self._consumer.highwater(tp)
            if highwater is not None and records:
                metrics.LAG.labels(str(tp.partition)).set(max(0, highwater - records[-1].offset - 1))

    async def _warm_up(self, series: I64, ts: I64, new: BOOL) -> None:
        """Replay stored history into the detector for series it has not seen (or has forgotten),
        up to the series' first new reading in this batch."""
        idx = np.flatnonzero(new)
        if not idx.size:
            return
        order = np.lexsort((ts[idx], series[idx]))
        unique, first = np.unique(series[idx][order], return_index=True)
        first_ts = ts[idx][order][first]
        cold = [(int(s), int(t)) for s, t in zip(unique, first_ts, strict=True) if self.detector.is_cold(int(s))]
        if not cold:
            return
        hist_idx, _, hist_values = await self.store.history(
            [self.series.key(s) for s, _ in cold],
            [before for _, before in cold],
            limit=self.settings.warmup_readings,
            max_age_us=int(self.settings.warmup_max_age_s * 1_000_000),
        )
        if hist_idx:
            sids = np.asarray([cold[i][0] for i in hist_idx], np.int64)
            self.detector.update(sids, np.asarray(hist_values, np.float64))
            metrics.WARMUP_READINGS.inc(len(hist_idx))

    def forget(self, partitions: list[int]) -> None:
        """Partitions moved to another consumer: drop their series' state, so that if they come
        back the series warm up from what the other consumer stored meanwhile."""
        for partition in partitions:
            owned = self._series_by_partition.pop(partition, set())
            if owned:
                self.detector.reset(np.fromiter(owned, np.int64))

    async def _detect(self, rows: Rows, new: BOOL) -> list[Alert]:
        if not rows:
            return []
        series, values, ts = rows.arrays()
        await self._warm_up(series, ts, new)
        scored = self.detector.update(series, values, new)
        emitted = self._clock()
        alerts = []
        for i in np.flatnonzero(scored.alarms):
            device_id, metric = rows.device_ids[i], rows.metrics[i]
            alerts.append(
                Alert(
                    alert_id=Alert.make_id(device_id, metric, int(ts[i]), self.detector.name),
                    device_id=device_id,
                    kind=rows.kind_of[device_id],
                    metric=metric,
                    ts_us=int(ts[i]),
                    value=float(values[i]),
                    score=float(scored.scores[i]),
                    detector=self.detector.name,
                    baseline=float(scored.baselines[i]),
                    spread=float(scored.spreads[i]),
                    window=self.detector.window,
                    seq=rows.seq[i],
                    gateway_us=rows.gateway_us[i],
                    emitted_us=emitted,
                )
            )
        return alerts

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
