"""IOC errors."""

from cityops.errors import CityopsError


class IocError(CityopsError):
    """The IOC service cannot go on."""
