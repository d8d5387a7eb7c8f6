"""Stream-tier errors."""

from cityops.errors import CityopsError


class StreamError(CityopsError):
    """The stream service cannot go on."""
