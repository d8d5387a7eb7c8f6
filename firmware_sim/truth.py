"""Where ground truth goes: a JSON-lines file and the Kafka truth topic, as events start."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import msgspec
from aiokafka import AIOKafkaProducer

from cityops.core.aio import AsyncService
from cityops.core.contracts import GroundTruth, encode
from cityops.core.kafka import make_producer

_json = msgspec.json.Encoder()


def read_file(path: Path) -> list[GroundTruth]:
    decoder = msgspec.json.Decoder(GroundTruth)
    return [decoder.decode(line) for line in path.read_bytes().splitlines() if line.strip()]


class TruthSink(AsyncService):
    """Appends to ``path`` (flushed per event, so a crash keeps what was injected) and sends to ``topic``."""

    def __init__(self, path: Path | None, *, kafka_bootstrap: str | None, topic: str) -> None:
        self.path = path
        self._bootstrap = kafka_bootstrap
        self._topic = topic
        self._fh: BinaryIO | None = None
        self._producer: AIOKafkaProducer | None = None
        self.events: list[GroundTruth] = []

    async def start(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("ab")
        if self._bootstrap is not None:
            self._producer = make_producer(self._bootstrap, client_id="cityops-sim-truth")
            await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()  # flushes what is pending
            self._producer = None
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    async def emit(self, truths: list[GroundTruth]) -> None:
        if not truths:
            return
        self.events.extend(truths)
        if self._fh is not None:
            self._fh.write(b"".join(_json.encode(t) + b"\n" for t in truths))
            self._fh.flush()
        if self._producer is not None:
            for t in truths:
                await self._producer.send(self._topic, encode(t), key=t.event_id.encode())
