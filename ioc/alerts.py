"""The alert feed: alerts topic -> ``alerts`` table -> incidents (``ioc.incidents``) -> live events.

Delivery: offsets are committed after the alerts are stored and placed. A replay re-reads
alerts that are already stored; ``alert_id`` deduplicates them, and only newly stored alerts are
placed and published. A crash between storing and placing leaves those alerts stored without an
incident (logged at the next start); nothing is paged twice.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
import psycopg
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CommitFailedError

from cityops.core import log
from cityops.core.aio import AsyncService
from cityops.core.contracts import Alert, decode_alert, now_us, to_datetime
from cityops.core.kafka import make_consumer
from ioc import metrics
from ioc.settings import IocSettings

if TYPE_CHECKING:
    from ioc.incidents import Desk

_log = log.get("ioc.alerts")

INSERT = """
INSERT INTO alerts (alert_id, ts, device_id, kind, metric, value, score, detector, baseline, spread,
                    window_size, seq, gateway_at, emitted_at, detectors, explanation)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
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


class AlertFeed(AsyncService):
    def __init__(self, settings: IocSettings, desk: Desk, *, clock: Callable[[], int] = now_us) -> None:
        self.settings = settings
        self._desk = desk
        self._clock = clock
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        s = self.settings
        self._consumer = make_consumer(
            s.kafka_bootstrap, s.topics.alerts, group_id=s.group_id, client_id=s.client_id, max_poll_records=1_000
        )
        await self._consumer.start()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def run(self) -> None:
        assert self._consumer is not None, "start() first"
        while True:
            batch = await self._consumer.getmany(timeout_ms=200)
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
            # pages twice.
            new = await self._receive(alerts)
            for alert in new:
                metrics.LATENCY.observe(max(0.0, (self._clock() - alert.ts_us) / 1e6))
            try:
                await self._consumer.commit()
            except CommitFailedError as exc:
                # Rebalanced under us: the new owner replays; stored alerts are not pushed twice.
                metrics.ERRORS.labels("commit").inc()
                _log.warning("offset commit failed after rebalance", error=str(exc))
            for tp, records in batch.items():
                hw = self._consumer.highwater(tp)
                if hw is not None and records:
                    metrics.LAG.labels(str(tp.partition)).set(max(0, hw - records[-1].offset - 1))

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
