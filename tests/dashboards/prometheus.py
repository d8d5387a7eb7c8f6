"""A real Prometheus server for tests: Debian's ``prometheus`` package (``make prometheus``
installs it), run in a temporary directory on a free port, scraping the services' endpoints
with deploy/prometheus.yml's jobs pointed at the in-process services."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_CONFIG = ROOT / "deploy" / "prometheus.yml"


class PrometheusError(AssertionError):
    """Prometheus refused a query (a PromQL syntax error is one) or could not start."""


def binary() -> str:
    found = os.environ.get("CITYOPS_PROMETHEUS") or shutil.which("prometheus")
    if not found:
        raise PrometheusError("no `prometheus` binary: run `make prometheus` (Debian package prometheus)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    """``Prometheus(dir, {"gateway": "127.0.0.1:40001", ...})``; ``start()``, queries, ``stop()``."""

    def __init__(self, directory: Path, targets: dict[str, str], *, scrape_interval: str = "1s") -> None:
        self.directory = directory
        self.targets = targets
        self.scrape_interval = scrape_interval
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        """deploy/prometheus.yml with the compose service names replaced by the given targets, so
        the job names (which dashboards select on) are the ones compose scrapes under."""
        config: dict[str, Any] = yaml.safe_load(COMPOSE_CONFIG.read_text())
        # A timeout longer than the interval is a configuration error.
        config["global"] = {"scrape_interval": self.scrape_interval, "scrape_timeout": self.scrape_interval}
        for job in config["scrape_configs"]:
            job["static_configs"] = [{"targets": [self.targets[job["job_name"]]]}]
        return config

    def start(self, timeout: float = 30.0) -> None:
        config = self.directory / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config()))
        self.port = _free_port()
        log = (self.directory / "prometheus.log").open("wb")
        self._process = subprocess.Popen(
            [
                binary(),
                f"--config.file={config}",
                f"--storage.tsdb.path={self.directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise PrometheusError(f"prometheus did not become ready:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def log(self) -> str:
        path = self.directory / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def _get(self, path: str, params: dict[str, Any] | list[tuple[str, Any]]) -> Any:
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as http:
            resp = await http.get(path, params=params)
        body = resp.json()
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    async def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        data = await self._get("/api/v1/query", params)
        result: list[dict[str, Any]] = data["result"]
        return result

    async def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        data = await self._get("/api/v1/query_range", {"query": expr, "start": start, "end": end, "step": step})
        result: list[dict[str, Any]] = data["result"]
        return result

    async def label_values(self, label: str, match: str, start: float, end: float) -> list[str]:
        """What Grafana asks for ``label_values(match, label)``."""
        data = await self._get(f"/api/v1/label/{label}/values", [("match[]", match), ("start", start), ("end", end)])
        return [str(v) for v in data]
