"""Detector profiles: which detectors run on a device class's metric, and how, from a TOML file.

A file has a ``[defaults]`` table, optional ``[kinds.<kind>]`` tables that override it for a
device class, and ``[kinds.<kind>.metrics.<metric>]`` tables that override those for one
metric. Every key has a default, so an empty file is a working configuration. The profiles
compile into one float64 table (a row per profile, a column per parameter) that the Numba
kernel indexes by the series' profile id, so one kernel call serves every series of a batch
whatever their configuration, and a reload swaps the table without touching detector state.

    threshold = 0.5      # combined score in [0, 1] at which a reading alarms
    timezone = "UTC"     # local time for the time-of-day baseline

    [defaults]
    window = 60

    [kinds.water_quality.metrics.ph]
    limit_low = 6.5
    limit_high = 9.5
    limit_source = "EU Drinking Water Directive 2020/2184, Annex I Part C"
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stream.errors import ConfigError

DEFAULT_FILE = Path(__file__).with_name("profiles.toml")

# Scores are -log10(p) / DECADES, clipped to [0, 1]: a score of 0.5 is a reading that the
# series' recent behaviour gives a 1-in-100,000 chance (after correcting for the number of
# detectors that looked at it).
DECADES = 10.0

# The most time-of-day bins a profile may use: they are part of every series' state row.
MAX_TOD_BINS = 48


class Profile(BaseModel):
    """Detector parameters for one device class and metric. Windows are in readings unless
    the ``*_s`` variant is set (> 0), which makes the window a time span instead."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Alarm hygiene.
    threshold: float = Field(0.5, gt=0, le=1)
    refractory: int = Field(30, ge=0)  # readings after an alarm during which the series cannot alarm
    refractory_s: float = Field(0.0, ge=0)  # ... and seconds
    warmup: int = Field(30, ge=1)  # readings before the statistical detectors may score

    # Statistical windows.
    window: int = Field(60, ge=2)  # fast EWMA mean, robust median/MAD, rate of change
    window_s: float = Field(0.0, ge=0)
    spread_window: int = Field(200, ge=2)  # the EWMA's spread (mean absolute residual)
    spread_window_s: float = Field(0.0, ge=0)
    slow_window: int = Field(600, ge=2)  # long baseline: CUSUM reference, flatline base rate, floors
    slow_window_s: float = Field(0.0, ge=0)
    clip: float = Field(4.0, gt=0)  # outliers fold in at most this many spreads from the baseline
    resolution: float = Field(0.0, ge=0)  # the sensor's resolution: the smallest spread believed
    min_spread: float = Field(1e-3, ge=0)  # ... and relative to the level

    # Calibration. Off: a Gaussian detector's p is its z's normal tail, right for well-behaved
    # noise. On: its capped z is averaged over a few readings and judged against the long-run
    # distribution of that average in the same series (Numenta's anomaly likelihood), which
    # stays calibrated on heavy-tailed, bursty series.
    likelihood: bool = False
    likelihood_window: int = Field(6000, ge=2)  # memory of the distribution of averaged errors
    ewma_cap: float = Field(3.0, gt=0)  # z beyond this counts as this
    ewma_short: float = Field(20.0, ge=1)  # readings averaged
    tod_cap: float = Field(6.0, gt=0)
    tod_short: float = Field(30.0, ge=1)

    # Detectors.
    ewma: bool = True
    robust: bool = True
    cusum: bool = True
    cusum_drift: float = Field(0.5, gt=0)  # k, in spreads: shifts smaller than 2k are ignored
    roc: bool = True
    max_rate: float = Field(math.inf, gt=0)  # physical limit on |dx/dt| per second
    flatline: bool = True
    flatline_eps: float = Field(0.0, ge=0)  # readings closer than this are "the same"
    flatline_min_run: int = Field(10, ge=2)
    tod: bool = False
    tod_bins: int = Field(24, ge=1, le=MAX_TOD_BINS)
    tod_days: float = Field(7.0, gt=0)  # memory of the time-of-day baseline
    tod_warmup: int = Field(3, ge=1)  # readings in a bin before it judges
    tod_floor: float = Field(0.1, ge=0)  # a bin's spread is at least this share of the long spread
    spatial: bool = False  # a new extreme of the series' history (beyond its range by a margin)
    spatial_tolerance: float = Field(0.05, ge=0)  # the margin, as a share of the range
    staleness: bool = True
    stale_intervals: float = Field(5.0, gt=1)  # silent for this many usual intervals
    stale_min_s: float = Field(30.0, ge=0)

    # Limits: physical (the sensor is broken) and regulatory or operational (the world is).
    physical_low: float = -math.inf
    physical_high: float = math.inf
    limit_low: float = -math.inf
    limit_high: float = math.inf
    limit_window_s: float = Field(0.0, ge=0)  # averaging period of the limit (0: each reading)
    limit_source: str = ""  # the standard the limit comes from

    @model_validator(mode="after")
    def _ordered(self) -> Profile:
        if self.physical_low >= self.physical_high:
            raise ValueError("physical_low must be below physical_high")
        if self.limit_low >= self.limit_high:
            raise ValueError("limit_low must be below limit_high")
        return self


# Column of each numeric parameter in the compiled table, in Profile's field order.
PARAMS: tuple[str, ...] = tuple(n for n in Profile.model_fields if n != "limit_source")
P = {name: i for i, name in enumerate(PARAMS)}


class _Kind(BaseModel):
    model_config = ConfigDict(extra="allow")
    metrics: dict[str, dict[str, Any]] = {}


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threshold: float | None = None
    timezone: str = "UTC"
    defaults: dict[str, Any] = {}
    kinds: dict[str, _Kind] = {}


@dataclass(frozen=True)
class DetectorConfig:
    """Compiled profiles: ``table[profile_id]`` holds the parameters in ``PARAMS`` order."""

    default: Profile = field(default_factory=Profile)
    overrides: dict[tuple[str, str], Profile] = field(default_factory=dict)  # (kind, metric or "")
    timezone: str = "UTC"
    source: str = "<defaults>"

    @classmethod
    def load(cls, path: Path | str) -> DetectorConfig:
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        return cls.parse(raw, source=str(path))

    @classmethod
    def parse(cls, raw: dict[str, Any], *, source: str = "<dict>") -> DetectorConfig:
        try:
            f = _File.model_validate(raw)
            base = dict(f.defaults)
            if f.threshold is not None:
                base.setdefault("threshold", f.threshold)
            default = Profile.model_validate(base)
            overrides: dict[tuple[str, str], Profile] = {}
            for kind, table in f.kinds.items():
                kind_keys = {**base, **(table.model_extra or {})}
                overrides[(kind, "")] = Profile.model_validate(kind_keys)
                for metric, keys in table.metrics.items():
                    overrides[(kind, metric)] = Profile.model_validate({**kind_keys, **keys})
        except ValidationError as exc:
            raise ConfigError(f"{source}: {exc}") from exc
        try:
            from zoneinfo import ZoneInfo

            ZoneInfo(f.timezone)
        except Exception as exc:
            raise ConfigError(f"{source}: unknown timezone {f.timezone!r}") from exc
        return cls(default, overrides, f.timezone, source)

    def with_threshold(self, threshold: float) -> DetectorConfig:
        """The same profiles alarming at another score (what a threshold sweep varies)."""
        return DetectorConfig(
            self.default.model_copy(update={"threshold": threshold}),
            {k: p.model_copy(update={"threshold": threshold}) for k, p in self.overrides.items()},
            self.timezone,
            self.source,
        )

    def profile(self, kind: str, metric: str) -> Profile:
        return self.overrides.get((kind, metric)) or self.overrides.get((kind, "")) or self.default

    def compile(self) -> tuple[dict[tuple[str, str], int], list[Profile], np.ndarray]:
        """(profile id per override key, the profiles, the parameter table). Id 0 is the default."""
        profiles = [self.default, *self.overrides.values()]
        ids = {key: i + 1 for i, key in enumerate(self.overrides)}
        table = np.array([[float(getattr(p, n)) for n in PARAMS] for p in profiles], np.float64)
        return ids, profiles, table

    def profile_id(self, ids: dict[tuple[str, str], int], kind: str, metric: str) -> int:
        return ids.get((kind, metric)) or ids.get((kind, "")) or 0


class ProfileFile:
    """A profile file watched for changes: ``poll`` returns the new configuration once per change."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._seen: tuple[int, int] | None = None

    def _signature(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def load(self) -> DetectorConfig:
        self._seen = self._signature()
        return DetectorConfig.load(self.path)

    def poll(self) -> DetectorConfig | None:
        """The file's configuration if it changed since the last load or poll, else None.
        Raises ConfigError (once per change) if the new content is invalid."""
        sig = self._signature()
        if sig is None or sig == self._seen:
            return None
        self._seen = sig
        return DetectorConfig.load(self.path)
