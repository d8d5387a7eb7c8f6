"""Fan-out of live events to WebSocket clients, each with its own bounded queue."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import Any

from ioc import metrics

RESYNC = {"type": "resync", "reason": "client fell too far behind; reload the snapshot"}


@dataclass(eq=False)
class Subscriber:
    # One slot more than the limit, kept for the RESYNC notice that ends an overflowed stream.
    queue: asyncio.Queue[dict[str, Any]]
    limit: int
    overflowed: bool = False


class Hub:
    def __init__(self, queue_size: int) -> None:
        self._queue_size = queue_size
        self._subscribers: set[Subscriber] = set()
        self._ids = itertools.count(1)

    def subscribe(self) -> Subscriber:
        sub = Subscriber(asyncio.Queue(self._queue_size + 1), self._queue_size)
        self._subscribers.add(sub)
        metrics.WS_CLIENTS.set(len(self._subscribers))
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)
        metrics.WS_CLIENTS.set(len(self._subscribers))

    def publish(self, event: dict[str, Any]) -> int:
        """Queue ``event`` (given an ``id``) for every subscriber; never blocks."""
        event = {"id": next(self._ids), **event}
        for sub in list(self._subscribers):
            if sub.queue.qsize() < sub.limit:
                sub.queue.put_nowait(event)
            else:
                sub.overflowed = True
                sub.queue.put_nowait(RESYNC)
                self.unsubscribe(sub)
                metrics.WS_DROPPED.inc()
        return int(event["id"])

    def __len__(self) -> int:
        return len(self._subscribers)
