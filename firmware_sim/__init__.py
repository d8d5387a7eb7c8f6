"""Simulated city hardware for demos, tests and load tests."""

from firmware_sim.engine import Simulation
from firmware_sim.layout import City, build_city
from firmware_sim.links import Stats
from firmware_sim.scenario import EventKind, PlatformFault, Scenario, Scheduled, load, with_overrides
from firmware_sim.settings import SimSettings
from firmware_sim.simulator import Simulator

__all__ = [
    "City",
    "EventKind",
    "PlatformFault",
    "Scenario",
    "Scheduled",
    "SimSettings",
    "Simulation",
    "Simulator",
    "Stats",
    "build_city",
    "load",
    "with_overrides",
]
