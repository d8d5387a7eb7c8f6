"""The alert feed: alerts topic -> ``alerts`` table -> incidents (``ioc.incidents``) -> live events.

Delivery: at least once into the database, exactly once onto the wall. A batch's offsets are
committed only after its alerts are stored and placed (one transaction, ``Desk.receive``). A
replay re-reads alerts that are already stored; ``alert_id`` deduplicates them, and only newly
stored alerts are placed and published, so nothing is paged twice.

Outages: while PostgreSQL is away the feed retries the *same* batch in place (it neither skips
nor commits an alert it has not stored) once the database answers again; while Kafka is away
the consumer reconnects by itself and a commit waits for it. At stop, the offsets of what was
stored are committed if Kafka takes them within ``close_timeout_s``; otherwise the next owner
replays them (and stores nothing twice).
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
import psycopg
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaConnectionError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from cityops.core import log
from cityops.core.aio import AsyncService, close_quietly
from cityops.core.contracts import Alert, decode_alert, now_us, to_datetime
from cityops.core.kafka import make_consumer
from ioc import metrics
from ioc.errors import IocError
from ioc.outages import KAFKA, POSTGRES, Outages
from ioc.settings import IocSettings

if TYPE_CHECKING:
    from ioc.incidents import Desk

_log = log.get("ioc.alerts")

INSERT = """
INSERT INTO alerts (alert_id, ts, device_id, kind, metric, value, score, detector, baseline, spread,
                    window_size, seq, gateway_at, emitted_at, detectors, explanation, alert_class)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (alert_id) DO NOTHING
RETURNING alert_id
"""


def alert_json(alert: Alert) -> dict[str, Any]:
    # JSON has no NaN or infinity: a detector without a baseline sends null.
    body = {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in msgspec.to_builtins(alert).items()
    }
    nonfinite = [k for k, v in body.items() if v is None]
    if nonfinite:
        _log.warning("alert with non-finite fields", alert_id=alert.alert_id, fields=nonfinite)
    body["ts"] = to_datetime(alert.ts_us).isoformat()
    return body


Batch = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]


class AlertFeed(AsyncService):
    def __init__(
        self, settings: IocSettings, desk: Desk, outages: Outages, *, clock: Callable[[], int] = now_us
    ) -> None:
        self.settings = settings
        self._desk = desk
        self._outages = outages
        self._clock = clock
        self._consumer: AIOKafkaConsumer | None = None
        # Offsets (next to read) of alerts stored but not committed yet.
        self._stored: dict[TopicPartition, int] = {}

    async def start(self) -> None:
        s = self.settings
        self._consumer = make_consumer(
            s.kafka_bootstrap, s.topics.alerts, group_id=s.group_id, client_id=s.client_id, max_poll_records=1_000
        )
        await self._consumer.start()

    async def stop(self) -> None:
        """Commits what was stored (if Kafka answers in time), then leaves the group; neither
        waits past ``close_timeout_s`` for a Kafka that is gone."""
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        if self._stored:
            try:
                async with asyncio.timeout(self.settings.close_timeout_s):
                    await self._commit(consumer)
            except (KafkaError, TimeoutError) as exc:
                _log.warning("stored alerts' offsets not committed at stop; they will be replayed", error=repr(exc))
        await close_quietly(consumer.stop(), timeout_s=self.settings.close_timeout_s)

    async def probe(self) -> None:
        """Ask Kafka for its metadata: raises (retriable) while no broker answers."""
        assert self._consumer is not None, "start() first"
        try:
            await self._consumer.topics()
        except KafkaError as exc:
            # aiokafka says "no broker answered" with a bare KafkaError (not retriable to it):
            # an outage all the same. A refusal (authorisation) stays final.
            if type(exc) is KafkaError or isinstance(exc, KafkaConnectionError) or exc.retriable:
                raise IocError(f"Kafka unreachable: {exc}", retriable=True) from exc
            raise

    async def run(self) -> None:
        consumer = self._consumer
        assert consumer is not None, "start() first"
        while True:
            batch: Batch = await self._outages.call(KAFKA, lambda: consumer.getmany(timeout_ms=200))
            if not batch:
                continue
            alerts: list[Alert] = []
            for records in batch.values():
                for rec in records:
                    try:
                        alerts.append(decode_alert(rec.value or b""))
                    except msgspec.DecodeError as exc:
                        metrics.ERRORS.labels("decode").inc()
                        _log.error("undecodable alert skipped", offset=rec.offset, error=str(exc))
            metrics.ALERTS_IN.inc(len(alerts))
            # Stored, placed and published before the offset is committed: a crash in between
            # replays alerts that are already stored, and only new ones are placed, so nothing
            # pages twice. A database outage retries this same batch until it is stored.
            new = await self._outages.call(POSTGRES, functools.partial(self._receive, alerts))
            for alert in new:
                metrics.LATENCY.observe(max(0.0, (self._clock() - alert.ts_us) / 1e6))
            for tp, records in batch.items():
                self._stored[tp] = max(self._stored.get(tp, 0), records[-1].offset + 1)
            await self._outages.call(KAFKA, lambda: self._commit(consumer))
            for tp, records in batch.items():
                hw = consumer.highwater(tp)
                if hw is not None and records:
                    metrics.LAG.labels(str(tp.partition)).set(max(0, hw - records[-1].offset - 1))

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        """Commit the stored offsets of the partitions still ours; aiokafka waits for the
        coordinator (a Kafka outage) by itself."""
        mine = consumer.assignment()
        offsets = {tp: OffsetAndMetadata(offset, "") for tp, offset in self._stored.items() if tp in mine}
        try:
            if offsets:
                await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # Rebalanced under us: the new owner replays; stored alerts are not pushed twice.
            metrics.ERRORS.labels("commit").inc()
            _log.warning("offset commit failed after rebalance", error=str(exc))
        self._stored.clear()

    async def _receive(self, alerts: list[Alert]) -> list[Alert]:
        """The desk takes the batch; if the database refuses its data (a value no contract check
        caught), it takes the alerts one by one and the ones refused alone are logged, counted
        and skipped: one alert cannot stop the feed, nor (replayed after every restart) the IOC."""
        try:
            return await self._desk.receive(alerts)
        except psycopg.DataError as exc:
            _log.warning("alert batch refused by the database; isolating its alerts", error=str(exc))
        new: list[Alert] = []
        for alert in alerts:
            try:
                new += await self._desk.receive([alert])
            except psycopg.DataError as exc:
                metrics.ERRORS.labels("refused").inc()
                _log.error("alert refused by the database, skipped", alert_id=alert.alert_id, error=str(exc))
        return new


async def store(conn: psycopg.AsyncConnection[Any], alerts: list[Alert]) -> list[Alert]:
    """Insert in one round trip (in the caller's transaction); returns the alerts that were new,
    in input order."""
    if not alerts:
        return []
    params = [
        (
            a.alert_id,
            to_datetime(a.ts_us),
            a.device_id,
            a.kind,
            a.metric,
            a.value,
            a.score,
            a.detector,
            a.baseline,
            a.spread,
            a.window,
            a.seq,
            to_datetime(a.gateway_us),
            to_datetime(a.emitted_us),
            a.detectors,
            a.explanation,
            a.alert_class.value,
        )
        for a in alerts
    ]
    new_ids: set[str] = set()
    async with conn.cursor() as cur:
        await cur.executemany(INSERT, params, returning=True)
        while True:
            row = await cur.fetchone()
            if row is not None:
                new_ids.add(str(row[0]))
            if not cur.nextset():
                break
    new: list[Alert] = []
    for a in alerts:
        if a.alert_id in new_ids:
            new.append(a)
            new_ids.discard(a.alert_id)  # the same alert twice in one batch is pushed once
    metrics.ALERTS_NEW.inc(len(new))
    return new
