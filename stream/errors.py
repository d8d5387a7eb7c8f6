"""Stream-tier errors."""

from cityops.errors import CityopsError


class StreamError(CityopsError):
    """The stream service cannot go on."""


class ConfigError(StreamError):
    """A detector profile file is invalid: the reason names the file and the key."""
