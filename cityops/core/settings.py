"""Settings shared by every service: where the stack is, never a secret.

Each service has one settings class (``gateway.GatewaySettings`` and so on) that extends
:class:`CommonSettings` (addresses, logging), or :class:`DatabaseSettings` when it uses the
database. Shared values are read from ``CITYOPS_<NAME>`` and service values from
``CITYOPS_<SERVICE>_<NAME>``, so one exported ``CITYOPS_KAFKA_BOOTSTRAP`` reaches every service.

Credentials live in the settings of the components that use them, each read from one
variable: the gateway's MQTT account in ``GatewaySettings`` (``CITYOPS_GATEWAY_MQTT_USER``,
``CITYOPS_GATEWAY_MQTT_PASSWORD``), which the local stack also reads to write the broker's
password file; the fleet secret (``CITYOPS_FLEET_SECRET``) in the simulator's and the stack's.
The defaults below are for development only.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from cityops.core.contracts import Topics
from cityops.core.schema import StorageMode

# Ports are not the protocols' usual ones so that the project's stack never collides with a
# broker or database a developer already runs; docker-compose.yml publishes the same ones.
MQTT_PORT = 11883
KAFKA_PORT = 19092
KAFKA_CONTROLLER_PORT = 19093
POSTGRES_PORT = 15432
API_PORT = 8080
GATEWAY_METRICS_PORT = 9101
STREAM_METRICS_PORT = 9102

# Development-only credentials: the defaults of the components that must agree on them (the
# broker's password file written by the stack, the gateway, the simulated devices).
DEVELOPMENT_FLEET_SECRET = "cityops-development-fleet-secret"
DEVELOPMENT_GATEWAY_USER = "gateway"
DEVELOPMENT_GATEWAY_PASSWORD = "gateway-development-password"


def default_state_dir() -> Path:
    # PostgreSQL runs as its own user, so as root the state must live where that user can reach.
    if os.geteuid() == 0:
        return Path("/var/lib/cityops")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "cityops"


def shared(name: str) -> str:
    """The variable a setting is read from when it is not the service's own: ``CITYOPS_<NAME>``."""
    return f"CITYOPS_{name.upper()}"


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(populate_by_name=True, extra="ignore")

    mqtt_host: str = Field("127.0.0.1", validation_alias=shared("mqtt_host"))
    mqtt_port: int = Field(MQTT_PORT, validation_alias=shared("mqtt_port"))
    kafka_bootstrap: str = Field(f"127.0.0.1:{KAFKA_PORT}", validation_alias=shared("kafka_bootstrap"))
    topic_prefix: str = Field("cityops.", validation_alias=shared("topic_prefix"))
    state_dir: Path = Field(default_factory=default_state_dir, validation_alias=shared("state_dir"))
    log_format: str = Field("console", validation_alias=shared("log_format"))
    log_level: str = Field("INFO", validation_alias=shared("log_level"))

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)


class DatabaseSettings(CommonSettings):
    """For services that use the database: its DSN (which carries the database password)."""

    pg_dsn: str = Field(
        f"postgresql://cityops:cityops@127.0.0.1:{POSTGRES_PORT}/cityops",
        validation_alias=shared("pg_dsn"),
    )
    # Which storage path a new database gets; every service that may create the schema passes it.
    storage_mode: StorageMode = Field(StorageMode.AUTO, validation_alias=shared("storage_mode"))
