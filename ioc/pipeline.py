"""The pipeline's health, read from the services' own Prometheus endpoints.

The wall screen shows whether readings flow: is each service up, how far the stream tier's
consumer lags behind Kafka, how long a reading takes from the device to the database
(the stream's ``cityops_stream_latency_seconds`` histogram, over the last check's interval)
and how many messages the gateway takes in per second. A Prometheus server is not needed
for this; Grafana's pipeline dashboard shows the same series over time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from cityops.core import log
from cityops.core.aio import AsyncService

_log = log.get("ioc")

Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse(text: str) -> Samples:
    """Sample name -> [(labels, value)] of a Prometheus text exposition."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def total(samples: Samples, name: str) -> float | None:
    values = samples.get(name)
    return sum(v for _, v in values) if values else None


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """``histogram_quantile`` over cumulative (upper bound, count) buckets, as PromQL does it:
    linear within the bucket; the +Inf bucket answers with the highest finite bound."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def _buckets(samples: Samples, name: str) -> dict[float, float]:
    out: dict[float, float] = {}
    for labels, value in samples.get(f"{name}_bucket", []):
        bound = float(labels["le"])
        out[bound] = out.get(bound, 0.0) + value
    return out


def _restarted(before: Samples, after: Samples) -> bool:
    """The service restarted between two scrapes: its process start time moved (counters can
    pass their old values before the next scrape, so a fall in a count does not tell)."""
    name = "process_start_time_seconds"
    return total(before, name) != total(after, name)


class Pipeline(AsyncService):
    """Reads each service's ``/metrics``; ``check()`` gives the health since the previous check."""

    def __init__(
        self, urls: Mapping[str, str], *, timeout_s: float = 2.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._urls = dict(urls)
        self._timeout_s = timeout_s
        self._clock = clock
        self._client: httpx.AsyncClient | None = None
        self._previous: dict[str, tuple[float, Samples]] = {}
        self.latest: dict[str, Any] = {"services": {}}

    async def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=self._timeout_s)

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _scrape(self, url: str) -> Samples:
        assert self._client is not None, "start() first"
        response = await self._client.get(url)
        response.raise_for_status()
        return parse(response.text)

    async def check(self) -> dict[str, Any]:
        now = self._clock()
        services: dict[str, Any] = {}
        health: dict[str, Any] = {
            "services": services,
            "stream_lag": None,
            "latency_p50_s": None,
            "latency_p95_s": None,
            "gateway_messages_per_s": None,
        }
        for name, url in self._urls.items():
            try:
                samples = await self._scrape(url)
            except (httpx.HTTPError, ValueError) as exc:
                # The kind of failure only: readers of the wall need not see internal addresses.
                services[name] = {"up": False, "error": type(exc).__name__}
                _log.debug("metrics not read", service=name, url=url, error=str(exc))
                self._previous.pop(name, None)
                continue
            services[name] = {"up": True}
            before = self._previous.get(name)
            self._previous[name] = (now, samples)
            if before is not None and _restarted(before[1], samples):
                before = None  # its counters started again from zero: no difference to take
            if name == "stream":
                health["stream_lag"] = total(samples, "cityops_stream_consumer_lag")
                if before is not None:
                    health.update(self._latency(before[1], samples))
            if name == "gateway" and before is not None and now > before[0]:
                new, old = (total(s, "cityops_gateway_messages_in_total") for s in (samples, before[1]))
                if new is not None and old is not None and new >= old:
                    health["gateway_messages_per_s"] = (new - old) / (now - before[0])
        self.latest = health
        return health

    @staticmethod
    def _latency(before: Samples, after: Samples) -> dict[str, float | None]:
        """Quantiles of the readings stored between two scrapes of one process (counters only
        grow; should one fall all the same, the newer counts are taken as they are)."""
        name = "cityops_stream_latency_seconds"
        old, new = _buckets(before, name), _buckets(after, name)
        delta = [(bound, count - old.get(bound, 0.0)) for bound, count in new.items()]
        if any(count < 0 for _, count in delta):
            delta = list(new.items())
        return {"latency_p50_s": quantile(0.5, delta), "latency_p95_s": quantile(0.95, delta)}
