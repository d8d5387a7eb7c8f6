from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from cityops.core.settings import DEVELOPMENT_FLEET_SECRET, CommonSettings, shared

SCENARIOS = Path(__file__).parent / "scenarios"


class SimSettings(CommonSettings):
    """Simulator settings: ``CITYOPS_SIM_<NAME>`` (shared ones: ``CITYOPS_<NAME>``).

    What the city is and does lives in the scenario file; these are how to run it.
    """

    model_config = SettingsConfigDict(env_prefix="CITYOPS_SIM_")

    scenario: Path = SCENARIOS / "demo.toml"
    # Device MQTT passwords are HMAC(fleet_secret, device_id): the broker's password file (written
    # by the stack or `cityops provision`) and the simulated devices derive the same credentials
    # without a credentials file. Read from CITYOPS_FLEET_SECRET, which the stack reads too.
    fleet_secret: SecretStr = Field(SecretStr(DEVELOPMENT_FLEET_SECRET), validation_alias=shared("fleet_secret"))
    # How often the simulated clock advances and due readings are generated.
    tick_s: float = 0.1
    # At the end of a run, how long to wait for buffered readings to be acknowledged.
    drain_timeout_s: float = 30.0
    # While catching up with real time, pause generating when this many readings wait to be sent.
    max_buffered: int = 200_000
    # Readings generated in one step at most (catching up at high speed is done in steps).
    max_step_readings: int = 20_000
