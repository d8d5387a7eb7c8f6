"""Simulator errors.

::

    CityopsError                 cityops.core.errors
    ├── SimError                 the simulator cannot go on
    │   └── ScenarioError        the scenario file cannot be read or is invalid
    └── BrokerError              from the MQTT adapter: a link retries BrokerUnavailable with
                                 exponential backoff, BrokerRefused only every backoff_max_s
"""

from cityops.core.errors import CityopsError


class SimError(CityopsError):
    """The simulator cannot go on."""


class ScenarioError(SimError):
    """The scenario file cannot be read or is invalid."""
