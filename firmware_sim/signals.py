"""Plausible signals per metric: a daily cycle plus sensor noise, in the catalogue's units."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime

from cityops.contracts import METRICS, DeviceKind


@dataclass(frozen=True)
class Signal:
    base: float
    daily_amplitude: float
    noise: float
    # Hour of the daily peak.
    peak_hour: float = 18.0

    def value(self, moment: datetime, rng: random.Random) -> float:
        hours = moment.hour + moment.minute / 60 + moment.second / 3600
        cycle = math.cos((hours - self.peak_hour) / 24 * 2 * math.pi)
        return self.base + self.daily_amplitude * cycle + rng.gauss(0.0, self.noise)


SIGNALS: dict[DeviceKind, dict[str, Signal]] = {
    DeviceKind.LAMP_POLE: {
        "power_w": Signal(120, 10, 1.5),
        "voltage_v": Signal(230, 2, 0.8),
        "current_a": Signal(0.52, 0.04, 0.01),
        "pm25_ugm3": Signal(14, 5, 1.0, 8),
        "noise_dba": Signal(58, 8, 1.5, 17),
        "temperature_c": Signal(11, 4, 0.2, 15),
    },
    DeviceKind.PIPE_NODE: {
        "pressure_kpa": Signal(420, -25, 2.0, 8),
        "flow_m3h": Signal(85, 30, 1.5, 8),
    },
    DeviceKind.WATER_QUALITY: {
        "chlorine_mgl": Signal(0.45, 0.03, 0.01),
        "turbidity_ntu": Signal(0.3, 0.05, 0.02),
        "ph": Signal(7.6, 0.05, 0.02),
        "conductivity_uscm": Signal(540, 10, 3.0),
        "temperature_c": Signal(12, 0.5, 0.05),
    },
    DeviceKind.ENV_STATION: {
        "pm25_ugm3": Signal(12, 6, 1.0, 8),
        "pm10_ugm3": Signal(20, 8, 1.5, 8),
        "no2_ugm3": Signal(28, 14, 2.0, 8),
        "o3_ugm3": Signal(50, 20, 2.0, 15),
        "co_mgm3": Signal(0.4, 0.15, 0.03, 8),
        "noise_dba": Signal(60, 8, 1.5, 17),
    },
}

# Every simulated metric must be one the gateway accepts.
for _kind, _signals in SIGNALS.items():
    assert set(_signals) <= set(METRICS[_kind]), (_kind, set(_signals) - set(METRICS[_kind]))


def spike_value(signal: Signal, moment: datetime, rng: random.Random, sigmas: float = 40.0) -> float:
    """A value far outside the noise (``sigmas`` noise widths above the daily cycle)."""
    return signal.value(moment, rng) + sigmas * signal.noise
