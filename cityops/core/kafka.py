"""Kafka clients with the project's delivery guarantees. Unsafe library defaults are overridden here only.

Producer (gateway readings, stream alerts, dead letters):
- ``acks="all"`` + ``enable_idempotence=True``: a send is acknowledged only once every in-sync
  replica has it, and broker-side sequence numbers drop the duplicates that producer retries
  would otherwise write. Nothing acknowledged is lost while the log survives; a producer that
  crashes after the broker wrote a batch but before it saw the ack re-sends it after restart
  (at-least-once end to end; consumers deduplicate on natural keys).
- ``linger_ms``: a few milliseconds of batching; raising it trades latency for throughput and
  loses nothing.

Consumer (stream, ioc):
- ``enable_auto_commit=False``: aiokafka's default commits on a timer, which can mark a
  message consumed before it is stored (loss on crash). Services commit explicitly after their
  side effects are durable, so a crash replays the uncommitted tail (duplicates, never loss).
- ``auto_offset_reset="earliest"``: a new group starts at the oldest retained message instead
  of silently skipping what was produced before it joined.
- ``isolation_level="read_committed"`` is unnecessary: no producer here uses transactions.
"""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError


def make_producer(bootstrap: str, *, client_id: str, linger_ms: int = 5) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=linger_ms,
        max_batch_size=256 * 1024,
        request_timeout_ms=30_000,
    )


def make_consumer(
    bootstrap: str,
    *topics: str,
    group_id: str,
    client_id: str,
    max_poll_records: int = 5_000,
    listener: ConsumerRebalanceListener | None = None,
) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        *(() if listener else topics),
        bootstrap_servers=bootstrap,
        group_id=group_id,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=max_poll_records,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_wait_ms=100,
    )
    if listener is not None:
        consumer.subscribe(list(topics), listener=listener)
    return consumer


async def ensure_topics(bootstrap: str, topics: list[str], *, partitions: int = 6) -> list[str]:
    """Create the topics that do not exist yet; return the ones created.

    Partitions are keyed by device id, so the count bounds consumer parallelism per topic.
    Replication factor 1: the local stack is a single broker.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="cityops-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing:
            try:
                await admin.create_topics(
                    [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in missing]
                )
            except TopicAlreadyExistsError:
                pass  # another process created it between list and create
        return missing
    finally:
        await admin.close()
