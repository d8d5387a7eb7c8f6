"""Stream-tier errors.

::

    CityopsError                 cityops.core.errors
    └── StreamError              the stream service cannot go on
        └── ConfigError          a detector profile file is invalid (not retriable: at start the
                                 service exits; on a reload it keeps the profiles in force)

A database or Kafka that went away ends the run with psycopg's or aiokafka's own error, which
``cityops.core.errors.is_retriable`` judges (the process exits 75: restart it).
"""

from cityops.core.errors import CityopsError


class StreamError(CityopsError):
    """The stream service cannot go on."""


class ConfigError(StreamError):
    """A detector profile file is invalid: the reason names the file and the key."""
