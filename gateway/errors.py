"""Gateway errors."""

from cityops.errors import CityopsError


class GatewayError(CityopsError):
    """The gateway cannot go on (for example Kafka refused a send after all retries)."""


class PayloadError(ValueError):
    """A device message that cannot be accepted; ``reason`` goes with it to the dead-letter topic."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
