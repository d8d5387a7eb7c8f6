"""Prometheus exposition and ``/healthz`` for services that are not HTTP servers themselves
(gateway, stream)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app

from cityops.core.aio import AsyncService
from cityops.core.health import Health

# Device-to-here latency, from a few ms to a minute (a backlog after an outage).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000)

Environ = dict[str, Any]
StartResponse = Callable[..., Any]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper never holds the service's shutdown


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not worth a log line each."""


class MetricsServer(AsyncService):
    """Serves ``/metrics`` from a registry (the default one) and, given a :class:`Health`,
    ``/healthz`` (200 when every dependency is up, 503 otherwise; JSON either way), on
    ``host:port`` (port 0: any free port)."""

    def __init__(
        self, host: str, port: int, *, registry: CollectorRegistry = REGISTRY, health: Health | None = None
    ) -> None:
        self.host = host
        self.port = port
        self._metrics = make_wsgi_app(registry)
        self._health = health
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def _app(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz" and self._health is not None:
            body = json.dumps(self._health.report()).encode()
            status = "200 OK" if self._health.healthy else "503 Service Unavailable"
            start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        return self._metrics(environ, start_response)  # type: ignore[no-any-return]

    async def start(self) -> None:
        self._server = make_server(self.host, self.port, self._app, _Server, handler_class=_Quiet)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
