"""Dependency health: what a service needs (the MQTT broker, Kafka, PostgreSQL), whether it can
reach each one now, and since when.

A service does not exit when a dependency goes away: it reports it down here, backs off
(:class:`Backoff`), connects again and reports it up. One :class:`Health` per service; it is
exported as ``cityops_dependency_up{service, dependency}`` (1 or 0) with
``cityops_dependency_outages_total``, and served as ``/healthz`` (:meth:`Health.report`: 200
when every dependency is up, 503 with what is missing otherwise).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import Counter, Gauge

from cityops.core import log

_log = log.get("cityops.health")

DEPENDENCY_UP = Gauge(
    "cityops_dependency_up",
    "1 while the service can use the dependency, 0 while it waits for it",
    ["service", "dependency"],
)
OUTAGES = Counter("cityops_dependency_outages_total", "Times the service lost a dependency", ["service", "dependency"])


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class DependencyState:
    up: bool
    since: datetime
    error: str | None = None  # why it is down: the kind of failure, never an address or secret


class Health:
    """Whether each of a service's dependencies is usable. All start down ("not connected yet")."""

    def __init__(self, service: str, dependencies: Iterable[str], *, clock: Callable[[], datetime] = _now) -> None:
        self.service = service
        self._clock = clock
        self._states = {name: DependencyState(False, clock(), "not connected yet") for name in dependencies}
        for name in self._states:
            DEPENDENCY_UP.labels(service, name).set(0)

    def up(self, name: str) -> None:
        if self._states[name].up:
            return
        was = self._states[name]
        self._states[name] = DependencyState(True, self._clock())
        DEPENDENCY_UP.labels(self.service, name).set(1)
        if was.error != "not connected yet":
            _log.info("dependency back", service=self.service, dependency=name, down_s=self._down_s(was))

    def down(self, name: str, error: BaseException | str) -> None:
        reason = error if isinstance(error, str) else _reason(error)
        was = self._states[name]
        if not was.up and was.error == reason:
            return
        self._states[name] = DependencyState(False, was.since if not was.up else self._clock(), reason)
        DEPENDENCY_UP.labels(self.service, name).set(0)
        if was.up:
            OUTAGES.labels(self.service, name).inc()
            _log.warning("dependency down", service=self.service, dependency=name, error=reason)

    def is_up(self, name: str) -> bool:
        return self._states[name].up

    @property
    def healthy(self) -> bool:
        return all(s.up for s in self._states.values())

    def missing(self) -> list[str]:
        return [name for name, s in self._states.items() if not s.up]

    def report(self) -> dict[str, object]:
        """The ``/healthz`` body: ``status`` ok or degraded, and each dependency's state."""
        return {
            "status": "ok" if self.healthy else "degraded",
            "service": self.service,
            "dependencies": {
                name: {"up": s.up, "since": s.since.isoformat(), **({"error": s.error} if s.error else {})}
                for name, s in self._states.items()
            },
        }

    def _down_s(self, was: DependencyState) -> float:
        return round((self._clock() - was.since).total_seconds(), 1)


def _reason(exc: BaseException) -> str:
    # The kind and the first line: enough to tell "connection refused" from "timed out".
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


@dataclass
class Backoff:
    """Delays between attempts to reach a dependency: doubling from ``initial_s`` up to
    ``max_s``, with jitter (+-25 %) so that services do not reconnect in lockstep. A small
    ``max_s`` is what lets a service flow again within seconds of the dependency's return."""

    initial_s: float = 0.25
    max_s: float = 2.0
    attempt: int = 0

    def next(self) -> float:
        delay = min(self.max_s, self.initial_s * 2.0 ** min(self.attempt, 30))
        self.attempt += 1
        return delay * (0.75 + random.random() / 2)

    def reset(self) -> None:
        self.attempt = 0
