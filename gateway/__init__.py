"""MQTT gateway: authenticates devices (through the broker), validates readings, forwards to Kafka."""

from gateway.service import Gateway
from gateway.settings import GatewaySettings

__all__ = ["Gateway", "GatewaySettings"]
