"""The local stack: Mosquitto, Kafka and PostgreSQL installed and run by the project itself.

``cityops stack up`` is idempotent: it installs what is missing, starts what is not running,
and (re)writes configuration. Everything lives under the state directory; ``stack down``
stops exactly the processes recorded there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from cityops.core import registry
from cityops.core.kafka import ensure_topics
from cityops.core.settings import (
    DEVELOPMENT_FLEET_SECRET,
    DEVELOPMENT_GATEWAY_PASSWORD,
    DEVELOPMENT_GATEWAY_USER,
    KAFKA_CONTROLLER_PORT,
    DatabaseSettings,
    shared,
)
from cityops.devstack.errors import StackError
from cityops.devstack.kafka import Kafka
from cityops.devstack.mosquitto import Mosquitto, Persistence
from cityops.devstack.packages import ensure_packages
from cityops.devstack.postgres import Postgres
from cityops.devstack.process import port_open

__all__ = ["ComponentStatus", "Stack", "StackSettings"]


class StackSettings(DatabaseSettings):
    """The local stack: ``CITYOPS_STACK_<NAME>``. It writes the broker's password file, so it
    reads the credentials the broker must accept from the variables their owners read: the
    fleet secret (``CITYOPS_FLEET_SECRET``, as the simulator) and the gateway's account
    (``CITYOPS_GATEWAY_MQTT_USER`` / ``_PASSWORD``, as the gateway)."""

    model_config = SettingsConfigDict(env_prefix="CITYOPS_STACK_")

    kafka_controller_port: int = KAFKA_CONTROLLER_PORT
    kafka_heap: str = "512m"
    # Durability of the one-machine stack (README, "What each fault costs", measures both):
    # - the broker saves queued messages every ``mqtt_autosave_interval`` seconds, or that many
    #   changes with ``mqtt_autosave_on_changes``; a broker crash loses what it acknowledged to
    #   devices since and had not handed to the gateway. ``true`` with interval 1 loses nothing.
    # - Kafka fsyncs every ``kafka_flush_messages`` messages (unset: the OS decides); a killed
    #   broker loses nothing either way, a machine losing power loses the unflushed tail.
    mqtt_autosave_interval: int = Field(5, ge=1)
    mqtt_autosave_on_changes: bool = False
    kafka_flush_messages: int | None = Field(None, ge=1)
    topic_partitions: int = 6
    install_packages: bool = True
    fleet_secret: SecretStr = Field(SecretStr(DEVELOPMENT_FLEET_SECRET), validation_alias=shared("fleet_secret"))
    gateway_mqtt_user: str = Field(DEVELOPMENT_GATEWAY_USER, validation_alias="CITYOPS_GATEWAY_MQTT_USER")
    gateway_mqtt_password: SecretStr = Field(
        SecretStr(DEVELOPMENT_GATEWAY_PASSWORD), validation_alias="CITYOPS_GATEWAY_MQTT_PASSWORD"
    )


@dataclass
class ComponentStatus:
    name: str
    pid: int | None
    address: str
    reachable: bool


class Stack:
    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        state = settings.state_dir
        kafka_host, kafka_port = settings.kafka_bootstrap.split(",")[0].rsplit(":", 1)
        dsn = urlsplit(settings.pg_dsn)
        self.mosquitto = Mosquitto(
            state,
            settings.mqtt_host,
            settings.mqtt_port,
            persistence=Persistence(settings.mqtt_autosave_interval, settings.mqtt_autosave_on_changes),
        )
        self.kafka = Kafka(
            state,
            kafka_host,
            int(kafka_port),
            settings.kafka_controller_port,
            heap=settings.kafka_heap,
            flush_messages=settings.kafka_flush_messages,
        )
        self.postgres = Postgres(
            state,
            dsn.hostname or "127.0.0.1",
            dsn.port or 5432,
            user=dsn.username or "cityops",
            password=dsn.password or "cityops",
            database=dsn.path.lstrip("/") or "cityops",
        )

    @property
    def registry_path(self) -> Path:
        return self.settings.state_dir / "devices.json"

    def up(self, progress: Callable[[str], None] = lambda _: None) -> dict[str, float]:
        """Install, configure and start everything; return seconds spent per step."""
        timings: dict[str, float] = {}

        def step(name: str, fn: Callable[[], object]) -> None:
            progress(name)
            started = time.monotonic()
            fn()
            timings[name] = time.monotonic() - started

        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.settings.state_dir.chmod(0o755)
        if self.settings.install_packages:
            step("packages", ensure_packages)
        step("kafka jars", self.kafka.fetch_jars)
        step("postgres", self.postgres.start)
        step("mosquitto", self._start_mosquitto)
        step("kafka", self.kafka.start)
        step("topics", self._create_topics)
        return timings

    def _start_mosquitto(self) -> None:
        self.provision_mqtt(registry.load(self.registry_path))
        self.mosquitto.start()

    def provision_mqtt(self, devices: list[registry.Device]) -> None:
        """Write broker credentials for ``devices`` and make a running broker reload them."""
        s = self.settings
        self.mosquitto.write_credentials(
            devices,
            fleet_secret=s.fleet_secret.get_secret_value(),
            gateway_user=s.gateway_mqtt_user,
            gateway_password=s.gateway_mqtt_password.get_secret_value(),
        )
        self.mosquitto.reload()

    def register(self, devices: list[registry.Device]) -> list[registry.Device]:
        """Add devices to the registry and the broker's credentials; returns the whole registry."""
        merged = registry.merge(registry.load(self.registry_path), devices)
        registry.save(self.registry_path, merged)
        self.provision_mqtt(merged)
        # The broker reloads on SIGHUP in its own time: wait until it knows the newcomers.
        accounts = [d.device_id for d in devices if d.concentrator is None] + registry.concentrators(devices)
        if accounts and self.mosquitto.daemon.pid() is not None:
            name = accounts[-1]
            password = registry.device_password(self.settings.fleet_secret.get_secret_value(), name)
            if not self.mosquitto.wait_accepts(name, password):
                raise StackError(f"the broker did not accept {name!r} after reloading its password file")
        return merged

    def unregister(self, device_ids: list[str]) -> None:
        """Remove devices from the registry and revoke their broker credentials."""
        gone = set(device_ids)
        kept = [d for d in registry.load(self.registry_path) if d.device_id not in gone]
        registry.save(self.registry_path, kept)
        self.provision_mqtt(kept)

    def _create_topics(self) -> None:
        asyncio.run(
            ensure_topics(
                self.settings.kafka_bootstrap,
                self.settings.topics.all(),
                partitions=self.settings.topic_partitions,
            )
        )

    def down(self) -> dict[str, bool]:
        return {
            "kafka": self.kafka.stop(),
            "mosquitto": self.mosquitto.stop(),
            "postgres": self.postgres.stop(),
        }

    def status(self) -> list[ComponentStatus]:
        s = self.settings
        return [
            ComponentStatus(
                "postgres",
                self.postgres.pid() if self.postgres.running() else None,
                f"{self.postgres.host}:{self.postgres.port}",
                port_open(self.postgres.host, self.postgres.port),
            ),
            ComponentStatus(
                "mosquitto",
                self.mosquitto.daemon.pid(),
                f"{s.mqtt_host}:{s.mqtt_port}",
                port_open(s.mqtt_host, s.mqtt_port),
            ),
            ComponentStatus(
                "kafka",
                self.kafka.daemon.pid(),
                f"{self.kafka.host}:{self.kafka.port}",
                port_open(self.kafka.host, self.kafka.port),
            ),
        ]
