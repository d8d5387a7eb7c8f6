"""Simulator errors."""

from cityops.errors import CityopsError


class SimError(CityopsError):
    """The simulator cannot go on."""


class ScenarioError(SimError):
    """The scenario file cannot be read or is invalid."""
