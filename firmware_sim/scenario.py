"""A scenario: the city to simulate, how its devices report, and what goes wrong, from a TOML file.

Every field has a default, so an empty file is a small, quiet city. The same scenario and
seed give the same devices, the same readings and the same incidents.
"""

from __future__ import annotations

import enum
import re
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cityops.core.contracts import DeviceKind, PayloadFormat
from firmware_sim.errors import ScenarioError


class EventKind(enum.StrEnum):
    # Incidents: something happened in the city.
    PIPE_LEAK = "pipe_leak"
    PIPE_BURST = "pipe_burst"
    FEEDER_OUTAGE = "feeder_outage"
    LAMP_FAILURE = "lamp_failure"
    ENERGY_THEFT = "energy_theft"
    POLLUTION_EPISODE = "pollution_episode"
    CONTAMINATION = "contamination"
    FLOODING = "flooding"
    # Sensor faults: the sensor lies.
    SPIKE = "spike"
    DRIFT = "drift"
    STUCK_AT = "stuck_at"
    DROPOUT = "dropout"
    NOISE_BURST = "noise_burst"
    CLOCK_SKEW = "clock_skew"


INCIDENTS = frozenset(
    {
        EventKind.PIPE_LEAK,
        EventKind.PIPE_BURST,
        EventKind.FEEDER_OUTAGE,
        EventKind.LAMP_FAILURE,
        EventKind.ENERGY_THEFT,
        EventKind.POLLUTION_EPISODE,
        EventKind.CONTAMINATION,
        EventKind.FLOODING,
    }
)


class PlatformFault(enum.StrEnum):
    """Bad traffic for the platform itself, sent besides the device's valid readings."""

    MALFORMED = "malformed"  # truncated payload
    OVERSIZED = "oversized"  # larger than the gateway accepts
    DUPLICATE = "duplicate"  # the same reading (same seq) twice
    OUT_OF_ORDER = "out_of_order"  # a reading held back and sent after the next one
    WRONG_TOPIC = "wrong_topic"  # a copy published on another device's topic (the broker's ACL refuses it)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceClass(_Model):
    count: int = Field(4, ge=0)
    # Seconds between two readings of one device.
    interval_s: float = Field(10.0, gt=0)
    format: PayloadFormat = PayloadFormat.JSON
    # Water quality only: replay this CSV (GECCO 2018 layout) instead of synthetic signals.
    replay: Path | None = None


def _default_devices() -> dict[DeviceKind, DeviceClass]:
    return {
        DeviceKind.LAMP_POLE: DeviceClass(count=20, interval_s=10),
        DeviceKind.PIPE_NODE: DeviceClass(count=8, interval_s=10),
        DeviceKind.WATER_QUALITY: DeviceClass(count=3, interval_s=10),
        DeviceKind.ENV_STATION: DeviceClass(count=4, interval_s=10),
        DeviceKind.DRAINAGE: DeviceClass(count=6, interval_s=10),
    }


class CityConfig(_Model):
    name: str = "Sim City"
    # (south, west, north, east) in degrees; the default is a 6 x 6 km box.
    extent: tuple[float, float, float, float] = (52.34, 4.85, 52.39, 4.94)
    districts: list[str] = ["Centrum", "Noord", "Oost", "Zuid"]
    lamps_per_cabinet: int = Field(10, ge=1)
    # A network model shipped with WNTR (Net1, Net3, ky4, ...) or a path to an EPANET .inp file.
    water_network: str = "Net3"
    id_prefix: str = ""


class Scheduled(_Model):
    """One event at a fixed time: ``at_s`` seconds after the scenario's start."""

    kind: EventKind
    at_s: float = Field(ge=0)
    duration_s: float | None = Field(None, gt=0)
    # A device id, cabinet, district or DMA; empty picks one from the seed.
    target: str = ""
    metric: str = ""
    magnitude: float | None = None


class Firmware(_Model):
    qos: Literal[0, 1] = 1
    # Readings kept while the broker is unreachable; the oldest are dropped beyond this.
    buffer_readings: int = Field(10_000, ge=1)
    backoff_initial_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(30.0, gt=0)


class Concentrator(_Model):
    devices_per_concentrator: int = Field(1_000, ge=1)
    # Readings per SenML pack (one MQTT message).
    pack_readings: int = Field(100, ge=1)
    format: Literal[PayloadFormat.SENML_JSON, PayloadFormat.SENML_CBOR] = PayloadFormat.SENML_JSON


class Truth(_Model):
    # JSON lines of GroundTruth, relative to the state directory unless absolute; empty: none.
    file: str = "ground_truth.jsonl"
    kafka: bool = True


class Scenario(_Model):
    seed: int = 7
    # "now", an RFC 3339 time, or an offset into the past such as "-6h" / "-30m".
    start: str = "now"
    # Simulated seconds per wall-clock second while the simulated clock is behind real time.
    speed: float = Field(1.0, gt=0)
    # Wall-clock seconds to run; 0 runs until stopped.
    duration_s: float = Field(0.0, ge=0)
    mode: Literal["realistic", "concentrator"] = "realistic"
    # Incidents and hydraulics are planned an epoch at a time.
    epoch_s: float = Field(86_400.0, ge=600)
    city: CityConfig = CityConfig()
    devices: dict[DeviceKind, DeviceClass] = Field(default_factory=_default_devices)
    # Expected incidents per simulated day, for the whole city.
    incident_rates: dict[EventKind, float] = {}
    # Expected sensor faults per device and simulated day.
    fault_rates: dict[EventKind, float] = {}
    # Expected platform faults per device and simulated hour.
    platform_rates: dict[PlatformFault, float] = {}
    incidents: list[Scheduled] = []
    firmware: Firmware = Firmware()
    concentrator: Concentrator = Concentrator()
    truth: Truth = Truth()

    @field_validator("start")
    @classmethod
    def _check_start(cls, value: str) -> str:
        resolve_start(value, datetime.now(UTC))
        return value

    @field_validator("incident_rates")
    @classmethod
    def _incidents_only(cls, value: dict[EventKind, float]) -> dict[EventKind, float]:
        wrong = [k.value for k in value if k not in INCIDENTS]
        if wrong:
            raise ValueError(f"not incidents (put sensor faults in fault_rates): {wrong}")
        return value

    @field_validator("fault_rates")
    @classmethod
    def _faults_only(cls, value: dict[EventKind, float]) -> dict[EventKind, float]:
        wrong = [k.value for k in value if k in INCIDENTS]
        if wrong:
            raise ValueError(f"not sensor faults (put incidents in incident_rates): {wrong}")
        return value

    def device_class(self, kind: DeviceKind) -> DeviceClass:
        return self.devices.get(kind, DeviceClass(count=0))

    def start_time(self, now: datetime) -> datetime:
        return resolve_start(self.start, now)


_OFFSET = re.compile(r"^-(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def resolve_start(value: str, now: datetime) -> datetime:
    if value == "now":
        return now
    match = _OFFSET.match(value)
    if match:
        return now - timedelta(seconds=float(match[1]) * _UNIT_S[match[2]])
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f'start must be "now", "-<n>[smhd]" or an RFC 3339 time, not {value!r}') from None
    if moment.tzinfo is None:
        raise ValueError(f"start {value!r} has no UTC offset")
    return moment


def load(path: Path) -> Scenario:
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc}") from None
    try:
        scenario = Scenario.model_validate(raw)
    except ValueError as exc:
        raise ScenarioError(f"invalid scenario {path}: {exc}") from None
    # Paths in the file are relative to the file.
    devices = {
        kind: c.model_copy(update={"replay": path.parent / c.replay}) if c.replay and not c.replay.is_absolute() else c
        for kind, c in scenario.devices.items()
    }
    return scenario.model_copy(update={"devices": devices})


def with_overrides(
    scenario: Scenario,
    *,
    devices: int | None = None,
    rate: float | None = None,
    duration_s: float | None = None,
    seed: int | None = None,
    mode: str | None = None,
) -> Scenario:
    """Apply the command line: ``devices`` in total (split as the scenario's counts are),
    ``rate`` readings per second for the whole fleet (every device reports every devices/rate s)."""
    classes = {k: c for k, c in scenario.devices.items() if c.count > 0} or _default_devices()
    if devices is not None:
        if devices < 1:
            raise ScenarioError("--devices must be at least 1")
        total = sum(c.count for c in classes.values())
        shares = {k: devices * c.count / total for k, c in classes.items()}
        counts = {k: int(v) for k, v in shares.items()}
        # Largest remainders get the devices left over, so the counts add up to `devices`.
        for k in sorted(shares, key=lambda k: counts[k] - shares[k])[: devices - sum(counts.values())]:
            counts[k] += 1
        classes = {k: c.model_copy(update={"count": counts[k]}) for k, c in classes.items()}
    if rate is not None:
        if rate <= 0:
            raise ScenarioError("--rate must be positive")
        interval = sum(c.count for c in classes.values()) / rate
        classes = {k: c.model_copy(update={"interval_s": interval}) for k, c in classes.items()}
    update: dict[str, object] = {"devices": classes}
    if duration_s is not None:
        update["duration_s"] = duration_s
    if seed is not None:
        update["seed"] = seed
    if mode is not None:
        update["mode"] = mode
    return Scenario.model_validate({**scenario.model_dump(), **update})
