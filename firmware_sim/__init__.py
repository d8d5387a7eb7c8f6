"""Simulated city hardware for demos, tests and load tests."""

from firmware_sim.fleet import small_city
from firmware_sim.settings import SimSettings
from firmware_sim.simulator import Published, Simulator, Spike

__all__ = ["Published", "SimSettings", "Simulator", "Spike", "small_city"]
