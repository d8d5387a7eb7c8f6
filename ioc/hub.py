"""Fan-out of live events to WebSocket clients, each with its own bounded queue.

Events arrive numbered (their ``ioc_events`` id) and tagged with a channel: ``wall``,
``supervisor`` or ``crew:<crew id>``. A client gets the channels it subscribed to. One that
falls ``queue_size`` events behind gets a final RESYNC notice and is dropped, so a slow
client never holds up the others or the publisher.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from ioc import metrics

RESYNC = {"type": "resync", "reason": "client fell too far behind; reconnect with your last event id"}


@dataclass(eq=False)
class Subscriber:
    channels: frozenset[str]
    # One slot more than the limit, kept for the RESYNC notice that ends an overflowed stream.
    queue: asyncio.Queue[dict[str, Any]]
    limit: int
    overflowed: bool = False


class Hub:
    def __init__(self, queue_size: int) -> None:
        self._queue_size = queue_size
        self._subscribers: set[Subscriber] = set()

    def subscribe(self, channels: set[str] | frozenset[str]) -> Subscriber:
        sub = Subscriber(frozenset(channels), asyncio.Queue(self._queue_size + 1), self._queue_size)
        self._subscribers.add(sub)
        metrics.WS_CLIENTS.set(len(self._subscribers))
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)
        metrics.WS_CLIENTS.set(len(self._subscribers))

    def publish(self, channel: str, event: dict[str, Any]) -> None:
        """Queue ``event`` (which carries its ``id``) for every subscriber of ``channel``; never blocks."""
        for sub in list(self._subscribers):
            if channel not in sub.channels:
                continue
            if sub.queue.qsize() < sub.limit:
                sub.queue.put_nowait(event)
            else:
                sub.overflowed = True
                sub.queue.put_nowait(RESYNC)
                self.unsubscribe(sub)
                metrics.WS_DROPPED.inc()

    def pulse(self, channel: str, message: dict[str, Any]) -> None:
        """Queue an unnumbered message (no ``id``: not stored, not resumed) where there is room.
        A pulse restates the whole truth, so a full queue just skips it; it never drops a client."""
        for sub in list(self._subscribers):
            if channel in sub.channels and sub.queue.qsize() < sub.limit:
                sub.queue.put_nowait(message)

    def __len__(self) -> int:
        return len(self._subscribers)
