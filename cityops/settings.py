"""Settings shared by every service: where the stack is.

Each service has one settings class (``gateway.GatewaySettings`` and so on) that extends
:class:`CommonSettings`. Shared values are read from ``CITYOPS_<NAME>`` and service values from
``CITYOPS_<SERVICE>_<NAME>``, so one exported ``CITYOPS_KAFKA_BOOTSTRAP`` reaches every service.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from cityops.contracts import Topics
from cityops.schema import StorageMode

# Ports are not the protocols' usual ones so that the project's stack never collides with a
# broker or database a developer already runs; docker-compose.yml publishes the same ones.
MQTT_PORT = 11883
KAFKA_PORT = 19092
KAFKA_CONTROLLER_PORT = 19093
POSTGRES_PORT = 15432
API_PORT = 8080
GATEWAY_METRICS_PORT = 9101
STREAM_METRICS_PORT = 9102

DEVELOPMENT_FLEET_SECRET = "cityops-development-fleet-secret"


def default_state_dir() -> Path:
    # PostgreSQL runs as its own user, so as root the state must live where that user can reach.
    if os.geteuid() == 0:
        return Path("/var/lib/cityops")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "cityops"


def _shared(name: str) -> str:
    return f"CITYOPS_{name.upper()}"


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(populate_by_name=True, extra="ignore")

    mqtt_host: str = Field("127.0.0.1", validation_alias=_shared("mqtt_host"))
    mqtt_port: int = Field(MQTT_PORT, validation_alias=_shared("mqtt_port"))
    kafka_bootstrap: str = Field(f"127.0.0.1:{KAFKA_PORT}", validation_alias=_shared("kafka_bootstrap"))
    pg_dsn: str = Field(
        f"postgresql://cityops:cityops@127.0.0.1:{POSTGRES_PORT}/cityops",
        validation_alias=_shared("pg_dsn"),
    )
    topic_prefix: str = Field("cityops.", validation_alias=_shared("topic_prefix"))
    # Which storage path a new database gets; every service that may create the schema passes it.
    storage_mode: StorageMode = Field(StorageMode.AUTO, validation_alias=_shared("storage_mode"))
    state_dir: Path = Field(default_factory=default_state_dir, validation_alias=_shared("state_dir"))
    # Device MQTT passwords are HMAC(fleet_secret, device_id): the broker's password file and
    # the simulator derive the same credentials without a shared credentials file.
    fleet_secret: str = Field(DEVELOPMENT_FLEET_SECRET, validation_alias=_shared("fleet_secret"))
    gateway_mqtt_user: str = Field("gateway", validation_alias=_shared("gateway_mqtt_user"))
    gateway_mqtt_password: str = Field(
        "gateway-development-password", validation_alias=_shared("gateway_mqtt_password")
    )
    log_format: str = Field("console", validation_alias=_shared("log_format"))
    log_level: str = Field("INFO", validation_alias=_shared("log_level"))

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)
