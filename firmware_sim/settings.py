from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from cityops.settings import CommonSettings


class SimSettings(CommonSettings):
    """Simulator settings: ``CITYOPS_SIM_<NAME>`` (shared ones: ``CITYOPS_<NAME>``)."""

    model_config = SettingsConfigDict(env_prefix="CITYOPS_SIM_")

    per_kind: int = 4
    interval_s: float = 1.0
    # 0: run until stopped.
    duration_s: float = 0.0
    seed: int = 7
    # Spikes injected at random, per device and hour, so a demo shows alerts.
    spikes_per_device_hour: float = 30.0
    # City extent (south, west, north, east); the default is a 6 x 6 km box.
    extent: tuple[float, float, float, float] = (52.34, 4.85, 52.39, 4.94)
    id_prefix: str = ""
