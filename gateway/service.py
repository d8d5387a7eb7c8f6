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
from aiokafka.errors import KafkaError

from cityops.core import log
from cityops.core.aio import AsyncService, close_quietly
from cityops.core.contracts import MQTT_READINGS_FILTER, DeadLetter, encode, now_us
from cityops.core.errors import BrokerError, CityopsError, is_retriable
from cityops.core.health import Backoff, Health
from cityops.core.kafka import make_producer
from cityops.core.metrics import MetricsServer
from cityops.core.mqtt import Inbound, MqttConfig, MqttSession, Receipt
from cityops.core.registry import RegistryFile
from gateway import metrics
from gateway.errors import GatewayError, PayloadError
from gateway.quarantine import CrashGuard, digest
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
        self.health = Health("gateway", ["kafka", "mqtt"])
        # One per MQTT session: two gateways never share a client id, nor a marker file.
        self._guard = CrashGuard(
            settings.state_dir / "gateway" / settings.mqtt_client_id, after=settings.crash_quarantine_after
        )
        # Acknowledged to the broker only once Kafka has what was made of a message (see above).
        self._mqtt_config = MqttConfig(
            settings.mqtt_host,
            settings.mqtt_port,
            username=settings.mqtt_user,
            password=settings.mqtt_password.get_secret_value(),
            client_id=settings.mqtt_client_id,
            clean_session=settings.mqtt_clean_session,
            manual_ack=True,
        )

    async def start(self) -> None:
        """Serve metrics and ``/healthz``, then connect to Kafka and the broker, waiting for them
        (with backoff) for as long as they are away: a gateway started before its dependencies
        does not exit. A refusal (the broker rejects the gateway's account) raises."""
        s = self.settings
        if s.metrics_port >= 0:
            self._metrics = MetricsServer(s.metrics_host, s.metrics_port, health=self.health)
            await self._metrics.start()
        await self._guard.start()
        await self._connect()
        _log.info(
            "gateway started", mqtt=f"{s.mqtt_host}:{s.mqtt_port}", kafka=s.kafka_bootstrap, topic=self._topics.readings
        )

    @property
    def metrics_port(self) -> int | None:
        """Where ``/metrics`` is served (the real port when configured as 0), None if disabled."""
        return self._metrics.port if self._metrics is not None else None

    async def stop(self) -> None:
        await self._disconnect(kafka=True)
        await self._guard.stop()
        if self._metrics is not None:
            await self._metrics.stop()
        _log.info("gateway stopped")

    async def run(self) -> None:
        """Forward until cancelled, riding out outages of the broker and of Kafka.

        When the broker connection drops, the messages not yet acknowledged stay with the broker
        (persistent session), which sends them again once the gateway reconnects. When Kafka
        fails a send, the gateway drops its broker connection too, so the messages it could not
        forward are not acknowledged and come back, then waits for Kafka before reconnecting.
        Either way a message may be forwarded twice (never lost); storage deduplicates."""
        while True:
            try:
                await self._forward()
            except CityopsError as exc:
                if not exc.retriable:
                    raise
                lost = "mqtt" if isinstance(exc, BrokerError) else "kafka"
                self.health.down(lost, exc)
                await self._disconnect(kafka=lost == "kafka")
                await self._connect()

    async def _connect(self) -> None:
        """Open what is not open: Kafka first (a broker connection without it would take in
        messages it cannot forward), then the broker and the subscription."""
        backoff = Backoff()
        while self._producer is None or self._mqtt is None:
            if self._producer is None:
                producer = make_producer(
                    self.settings.kafka_bootstrap,
                    client_id=self.settings.mqtt_client_id,
                    linger_ms=self.settings.kafka_linger_ms,
                )
                try:
                    await producer.start()
                except Exception as exc:
                    await close_quietly(producer.stop())
                    if not is_retriable(exc):
                        raise
                    self.health.down("kafka", exc)
                    await asyncio.sleep(backoff.next())
                    continue
                self._producer = producer
                self.health.up("kafka")
            session = MqttSession(self._mqtt_config)
            try:
                await session.start()
                await session.subscribe(MQTT_READINGS_FILTER, qos=1)
            except BrokerError as exc:
                await session.stop()
                if not exc.retriable:
                    raise
                self.health.down("mqtt", exc)
                await asyncio.sleep(backoff.next())
                continue
            self._mqtt = session
            self.health.up("mqtt")

    async def _disconnect(self, *, kafka: bool) -> None:
        # Acknowledgements belong to the connection they came on: the broker sends the messages
        # again on the next one, so the pending ones are dropped, not acknowledged.
        self._acks = asyncio.Queue(maxsize=self.settings.max_in_flight)
        metrics.IN_FLIGHT.set(0)
        if self._mqtt is not None:
            await self._mqtt.stop()
            self._mqtt = None
        if kafka and self._producer is not None:
            # Its unsent batches belong to messages that were not acknowledged: nothing to keep.
            await close_quietly(self._producer.stop(), timeout_s=self.settings.kafka_stop_timeout_s)
            self._producer = None

    async def _forward(self) -> None:
        """Until the broker connection drops (BrokerUnavailable) or Kafka fails (GatewayError)."""
        assert self._mqtt is not None, "start() first"
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._acknowledge())
                async for message in self._mqtt.messages():
                    try:
                        await self._handle(message)
                    except KafkaError as exc:  # a send refused before it was even queued
                        raise GatewayError(f"Kafka refused a send: {exc!r}", retriable=is_retriable(exc)) from exc
        except* CityopsError as group:
            raise group.exceptions[0] from None

    async def _handle(self, message: Inbound) -> None:
        assert self._producer is not None
        metrics.MESSAGES_IN.inc()
        payload, topic = message.payload, message.topic
        now = self._clock()
        sends: list[asyncio.Future[object]] = []
        device_ts = now
        key = digest(topic, payload)
        if self._guard.quarantined(key):
            reason = (
                f"quarantined: the gateway died {self._guard.strikes(key)} times while processing this "
                "message, so it was not processed again"
            )
            sends.append(await self._dead_letter(reason, topic, payload, now))
            metrics.DEAD_LETTERS.labels("quarantine").inc()
            self._guard.end(key)
            await self._acks.put((message.receipt, sends, device_ts))
            return
        self._guard.begin(key)
        try:
            outcome = validate(topic, payload, now_us=now, limits=self._limits, devices=self._registry.get)
            encoded = [(encode(r), r.device_id.encode()) for r in outcome.readings]
        except PayloadError as exc:
            self._guard.end(key)
            sends.append(await self._dead_letter(exc.reason, topic, payload, now))
            metrics.DEAD_LETTERS.labels("message").inc()
        except Exception as exc:
            self._guard.end(key)
            # Whatever a device sends ends as readings or a dead letter, never as a dead gateway
            # (which the broker's redelivery would turn into a crash loop).
            _log.exception("message not processed", topic=topic)
            reason = f"the gateway could not process this message: {type(exc).__name__}: {exc}"
            sends.append(await self._dead_letter(reason, topic, payload, now))
            metrics.DEAD_LETTERS.labels("internal").inc()
        else:
            self._guard.end(key)
            for r, (value, partition_key) in zip(outcome.readings, encoded, strict=True):
                device_ts = min(device_ts, r.ts_us)
                event, missing = self._sequences.observe(r.device_id, r.seq)
                metrics.SEQUENCE_EVENTS.labels(event.value).inc()
                if missing:
                    metrics.SEQUENCE_MISSING.inc(missing)
                sends.append(await self._producer.send(self._topics.readings, value, key=partition_key))
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
        """Ack MQTT messages in arrival order once Kafka has everything made of them. A send
        that waits longer than ``kafka_stall_s`` marks Kafka down in ``/healthz`` at once; the
        producer keeps retrying it until its request timeout, which ends the run."""
        assert self._mqtt is not None
        stall = self.settings.kafka_stall_s
        while True:
            receipt, sends, device_ts = await self._acks.get()
            try:
                for send in sends:
                    if not send.done():
                        done, _ = await asyncio.wait({send}, timeout=stall)
                        if not done:
                            self.health.down("kafka", f"no acknowledgement from Kafka for {stall:g} s")
                    await send
            except Exception as exc:
                metrics.ERRORS.inc()
                # aiokafka's errors say whether the broker may accept the send later.
                raise GatewayError(
                    f"Kafka did not accept a forwarded message: {exc!r}", retriable=is_retriable(exc)
                ) from exc
            self.health.up("kafka")
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
