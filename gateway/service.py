"""The gateway: MQTT in, validated readings and dead letters out to Kafka.

Delivery: at-least-once from device to Kafka. An MQTT message is acknowledged to the broker
only after Kafka acknowledged what was made of it (the reading, its dead letter, or both), so
a gateway crash leaves the unacknowledged messages with the broker, which redelivers them to
the persistent session. A redelivered message may be forwarded twice; the stream tier's
unique key (series, time) absorbs that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiokafka import AIOKafkaProducer

from cityops.core import log
from cityops.core.aio import AsyncService
from cityops.core.contracts import MQTT_READINGS_FILTER, DeadLetter, encode, now_us
from cityops.core.errors import CityopsError, is_retriable
from cityops.core.kafka import make_producer
from cityops.core.metrics import MetricsServer
from cityops.core.mqtt import Inbound, MqttConfig, MqttSession, Receipt
from cityops.core.registry import RegistryFile
from gateway import metrics
from gateway.errors import GatewayError, PayloadError
from gateway.sequence import SequenceTracker
from gateway.settings import GatewaySettings
from gateway.validation import Limits, validate

_log = log.get("gateway")

Ack = tuple[Receipt, list["asyncio.Future[object]"], int]


class Gateway(AsyncService):
    def __init__(self, settings: GatewaySettings, *, clock: Callable[[], int] = now_us) -> None:
        self.settings = settings
        self._clock = clock
        self._limits = Limits(
            settings.max_payload_bytes, int(settings.max_future_skew_s * 1_000_000), int(settings.max_age_s * 1_000_000)
        )
        self._topics = settings.topics
        self._producer: AIOKafkaProducer | None = None
        self._mqtt: MqttSession | None = None
        self._metrics: MetricsServer | None = None
        self._sequences = SequenceTracker()
        # Concentrators speak for devices; the registry says which.
        self._registry = RegistryFile(settings.state_dir / "devices.json")
        self._acks: asyncio.Queue[Ack] = asyncio.Queue(maxsize=settings.max_in_flight)

    async def start(self) -> None:
        s = self.settings
        if s.metrics_port >= 0:
            self._metrics = MetricsServer(s.metrics_host, s.metrics_port)
            await self._metrics.start()
        self._producer = make_producer(s.kafka_bootstrap, client_id=s.mqtt_client_id, linger_ms=s.kafka_linger_ms)
        await self._producer.start()
        # Acknowledged to the broker only once Kafka has what was made of a message (see above).
        self._mqtt = MqttSession(
            MqttConfig(
                s.mqtt_host,
                s.mqtt_port,
                username=s.mqtt_user,
                password=s.mqtt_password.get_secret_value(),
                client_id=s.mqtt_client_id,
                clean_session=s.mqtt_clean_session,
                manual_ack=True,
            )
        )
        await self._mqtt.start()
        await self._mqtt.subscribe(MQTT_READINGS_FILTER, qos=1)
        _log.info(
            "gateway started", mqtt=f"{s.mqtt_host}:{s.mqtt_port}", kafka=s.kafka_bootstrap, topic=self._topics.readings
        )

    @property
    def metrics_port(self) -> int | None:
        """Where ``/metrics`` is served (the real port when configured as 0), None if disabled."""
        return self._metrics.port if self._metrics is not None else None

    async def stop(self) -> None:
        if self._mqtt is not None:
            await self._mqtt.stop()
            self._mqtt = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        if self._metrics is not None:
            await self._metrics.stop()
        _log.info("gateway stopped")

    async def run(self) -> None:
        """Forward until cancelled. A Kafka failure ends the run with GatewayError (not acked)."""
        assert self._mqtt is not None, "start() first"
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._acknowledge())
                async for message in self._mqtt.messages():
                    await self._handle(message)
        except* CityopsError as group:
            raise group.exceptions[0] from None

    async def _handle(self, message: Inbound) -> None:
        assert self._producer is not None
        metrics.MESSAGES_IN.inc()
        payload, topic = message.payload, message.topic
        now = self._clock()
        sends: list[asyncio.Future[object]] = []
        device_ts = now
        try:
            outcome = validate(topic, payload, now_us=now, limits=self._limits, devices=self._registry.get)
            encoded = [(encode(r), r.device_id.encode()) for r in outcome.readings]
        except PayloadError as exc:
            sends.append(await self._dead_letter(exc.reason, topic, payload, now))
            metrics.DEAD_LETTERS.labels("message").inc()
        except Exception as exc:
            # Whatever a device sends ends as readings or a dead letter, never as a dead gateway
            # (which the broker's redelivery would turn into a crash loop).
            _log.exception("message not processed", topic=topic)
            reason = f"the gateway could not process this message: {type(exc).__name__}: {exc}"
            sends.append(await self._dead_letter(reason, topic, payload, now))
            metrics.DEAD_LETTERS.labels("internal").inc()
        else:
            for r, (value, key) in zip(outcome.readings, encoded, strict=True):
                device_ts = min(device_ts, r.ts_us)
                event, missing = self._sequences.observe(r.device_id, r.seq)
                metrics.SEQUENCE_EVENTS.labels(event.value).inc()
                if missing:
                    metrics.SEQUENCE_MISSING.inc(missing)
                sends.append(await self._producer.send(self._topics.readings, value, key=key))
                metrics.READINGS_OUT.inc()
            if outcome.rejected:
                sends.append(await self._dead_letter(_rejections(outcome.rejected), topic, payload, now))
                metrics.DEAD_LETTERS.labels("metric").inc()
        await self._acks.put((message.receipt, sends, device_ts))
        metrics.IN_FLIGHT.set(self._acks.qsize())

    async def _dead_letter(self, reason: str, topic: str, payload: bytes, now: int) -> asyncio.Future[object]:
        assert self._producer is not None
        reason = _bounded(reason)
        device_id = topic.split("/")[3] if topic.count("/") == 4 else None
        _log.warning("dead letter", reason=reason, topic=topic)
        letter = DeadLetter(
            reason=reason, source=f"mqtt:{topic}", payload=payload, received_us=now, device_id=device_id
        )
        return await self._producer.send(  # type: ignore[no-any-return]
            self._topics.dead_letter,
            encode(letter),
            key=(device_id or "").encode(),
            headers=[("reason", reason.encode()[:1024])],
        )

    async def _acknowledge(self) -> None:
        """Ack MQTT messages in arrival order once Kafka has everything made of them."""
        assert self._mqtt is not None
        while True:
            receipt, sends, device_ts = await self._acks.get()
            try:
                for send in sends:
                    await send
            except Exception as exc:
                metrics.ERRORS.inc()
                # aiokafka's errors say whether the broker may accept the send later.
                raise GatewayError(
                    f"Kafka did not accept a forwarded message: {exc!r}", retriable=is_retriable(exc)
                ) from exc
            self._mqtt.ack(receipt)
            metrics.LATENCY.observe(max(0.0, (self._clock() - device_ts) / 1e6))
            metrics.IN_FLIGHT.set(self._acks.qsize())


# A dead letter must fit in a Kafka message whatever the device sent: a pack of thousands of
# bad records would otherwise make a reason of megabytes, which Kafka refuses (and the gateway,
# unable to forward the message, would stop).
MAX_REASON_CHARS = 4_000


def _rejections(rejected: list[str]) -> str:
    return "rejected: " + "; ".join(rejected)


def _bounded(reason: str) -> str:
    if len(reason) <= MAX_REASON_CHARS:
        return reason
    return reason[: MAX_REASON_CHARS - 20] + f"... ({len(reason)} chars)"
