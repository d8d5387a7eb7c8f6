"""Prometheus exposition for services that are not HTTP servers themselves (gateway, stream)."""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

from cityops.core.aio import AsyncService

# Device-to-here latency, from a few ms to a minute (a backlog after an outage).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000)


class MetricsServer(AsyncService):
    """Serves ``/metrics`` from a registry (the default one) on ``host:port`` (port 0: any free port)."""

    def __init__(self, host: str, port: int, *, registry: CollectorRegistry = REGISTRY) -> None:
        self.host = host
        self.port = port
        self._registry = registry
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        self._server, self._thread = start_http_server(self.port, addr=self.host, registry=self._registry)
        self.port = self._server.server_port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
