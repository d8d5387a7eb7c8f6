from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from cityops.core.settings import (
    DEVELOPMENT_GATEWAY_PASSWORD,
    DEVELOPMENT_GATEWAY_USER,
    GATEWAY_METRICS_PORT,
    CommonSettings,
)


class GatewaySettings(CommonSettings):
    """Gateway settings: ``CITYOPS_GATEWAY_<NAME>`` (shared ones: ``CITYOPS_<NAME>``)."""

    model_config = SettingsConfigDict(env_prefix="CITYOPS_GATEWAY_")

    # A fixed client id with a persistent session: while the gateway is down the broker keeps
    # its subscription and queues QoS 1 messages for it (up to max_queued_messages).
    mqtt_client_id: str = "cityops-gateway-1"
    # The gateway's own broker account (the broker's ACL lets it read every device's topic).
    mqtt_user: str = DEVELOPMENT_GATEWAY_USER
    mqtt_password: SecretStr = SecretStr(DEVELOPMENT_GATEWAY_PASSWORD)
    mqtt_clean_session: bool = False
    # Messages forwarded to Kafka but not yet acknowledged by it; MQTT acks wait for Kafka.
    max_in_flight: int = 1_000
    max_payload_bytes: int = 64 * 1024
    max_future_skew_s: float = 300.0
    max_age_s: float = 90 * 86_400.0
    kafka_linger_ms: int = 5
    # A send unacknowledged this long marks Kafka down in /healthz (the producer keeps trying
    # until its request timeout, 30 s; then the gateway reconnects, and loses nothing: the
    # messages were not acknowledged to the broker, which sends them again).
    kafka_stall_s: float = 5.0
    # Closing a producer whose broker is gone: its unsent batches are not worth waiting for.
    kafka_stop_timeout_s: float = 5.0
    # A message the gateway died on (a native crash, the OOM killer) this many times is
    # dead-lettered unprocessed when the broker sends it again (gateway/quarantine.py).
    crash_quarantine_after: int = Field(2, ge=1)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = GATEWAY_METRICS_PORT
