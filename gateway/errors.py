"""Gateway errors.

::

    CityopsError                 cityops.core.errors
    ├── GatewayError             the gateway cannot go on; retriable as its cause is (a Kafka send
    │                            that failed after the producer's own retries: retriable when
    │                            aiokafka says so)
    └── BrokerError              from the MQTT adapter (cityops.core.mqtt): BrokerUnavailable
                                 (retriable), BrokerRefused (the gateway's account: not retriable)
    ValueError
    └── PayloadError             a device message that cannot be accepted: not the gateway's
                                 failure, its reason goes to the dead-letter topic
"""

from cityops.core.errors import CityopsError


class GatewayError(CityopsError):
    """The gateway cannot go on (for example Kafka refused a send after all retries)."""


class PayloadError(ValueError):
    """A device message that cannot be accepted; ``reason`` goes with it to the dead-letter topic."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
