"""Healthy signals per device kind, vectorised over many readings at once.

Each model is a function of the device, the sample time (local solar time drives the daily
cycles) and the sample's index (which keys the sensor noise, see :mod:`firmware_sim.noise`).
Units are the catalogue's. A NaN means the sensor had no value (the metric is left out).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from pathlib import Path

import numpy as np
import numpy.typing as npt

from cityops.core.contracts import METRICS, DeviceKind
from firmware_sim import noise
from firmware_sim.hydraulics import HydraulicRun
from firmware_sim.layout import City, Fleet
from firmware_sim.scenario import Scenario

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
IDX = npt.NDArray[np.intp]

# A typical size of each metric's normal variation, in its unit: what sensor faults are
# scaled by (a spike is several of these, a drift grows to several of these).
SCALE: dict[DeviceKind, dict[str, float]] = {
    DeviceKind.LAMP_POLE: {
        "power_w": 20.0,
        "voltage_v": 3.0,
        "current_a": 0.1,
        "pm25_ugm3": 5.0,
        "pm10_ugm3": 8.0,
        "noise_dba": 4.0,
        "temperature_c": 3.0,
        "humidity_pct": 8.0,
    },
    DeviceKind.PIPE_NODE: {"pressure_kpa": 20.0, "flow_m3h": 20.0},
    DeviceKind.WATER_QUALITY: {
        "chlorine_mgl": 0.08,
        "turbidity_ntu": 0.1,
        "ph": 0.15,
        "conductivity_uscm": 20.0,
        "temperature_c": 0.5,
    },
    DeviceKind.ENV_STATION: {
        "pm25_ugm3": 5.0,
        "pm10_ugm3": 8.0,
        "no2_ugm3": 10.0,
        "o3_ugm3": 10.0,
        "co_mgm3": 0.2,
        "noise_dba": 4.0,
    },
    DeviceKind.DRAINAGE: {"level_cm": 5.0},
}

# GECCO 2018 columns -> catalogue metrics of a water-quality station.
GECCO_COLUMNS = {
    "Tp": "temperature_c",
    "Cl": "chlorine_mgl",
    "pH": "ph",
    "Leit": "conductivity_uscm",
    "Trueb": "turbidity_ntu",
}


def local_hours(t_us: I64, lon: float) -> F64:
    """Local solar time of day in hours (UTC shifted by the longitude)."""
    seconds = t_us / 1e6 + lon * 240.0
    return np.mod(seconds, 86_400.0) / 3600.0


def local_day(t_us: I64, lon: float) -> I64:
    return np.floor((t_us / 1e6 + lon * 240.0) / 86_400.0).astype(np.int64)


@lru_cache(maxsize=4096)
def sun_hours(lat: float, lon: float, day: int) -> tuple[float, float]:
    """(sunrise, sunset) in local solar hours on local day ``day`` (days since 1970-01-01)."""
    from astral import Observer
    from astral.sun import sunrise, sunset

    observer = Observer(latitude=lat, longitude=lon)
    when = date(1970, 1, 1) + timedelta(days=day)
    try:
        rise = sunrise(observer, when, tzinfo=UTC)
        down = sunset(observer, when, tzinfo=UTC)
    except ValueError:
        # Polar day or night: astral says the sun does not cross the horizon.
        noon = datetime(when.year, when.month, when.day, 12, tzinfo=UTC)
        from astral.sun import elevation

        up = elevation(observer, noon - timedelta(seconds=lon * 240.0)) > 0
        return (0.0, 24.0) if up else (12.0, 12.0)

    def hours(moment: datetime) -> float:
        return ((moment.timestamp() + lon * 240.0) % 86_400.0) / 3600.0

    return hours(rise), hours(down)


class Replay:
    """A recorded series (GECCO 2018 layout: one row a minute), one row per reading."""

    def __init__(self, path: Path) -> None:
        columns: dict[str, list[float]] = {m: [] for m in GECCO_COLUMNS.values()}
        events: list[bool] = []
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                for src, metric in GECCO_COLUMNS.items():
                    raw = row.get(src, "")
                    columns[metric].append(float(raw) if raw not in ("", "NA", "NaN") else math.nan)
                events.append(row.get("EVENT", "").strip().lower() in ("true", "1"))
        self.values = {m: np.array(v, dtype=np.float64) for m, v in columns.items()}
        self.event = np.array(events, dtype=bool)
        self.rows = len(events)

    def rows_for(self, device: IDX, k: I64, devices: int) -> I64:
        # Devices start at different places in the recording.
        offset = (device.astype(np.int64) * self.rows) // max(1, devices)
        return (offset + k) % self.rows


class Signals:
    def __init__(self, city: City, scenario: Scenario) -> None:
        self.city = city
        self.seed = scenario.seed
        replay = scenario.device_class(DeviceKind.WATER_QUALITY).replay
        self.replay = Replay(replay) if replay is not None else None
        self._models: dict[DeviceKind, Callable[[Fleet, IDX, I64, I64, HydraulicRun | None, int], dict[str, F64]]] = {
            DeviceKind.LAMP_POLE: self._lamp,
            DeviceKind.PIPE_NODE: self._pipe,
            DeviceKind.WATER_QUALITY: self._water,
            DeviceKind.ENV_STATION: self._env,
            DeviceKind.DRAINAGE: self._drainage,
        }

    def sample(
        self, fleet: Fleet, idx: IDX, t_us: I64, k: I64, hydraulics: HydraulicRun | None = None, run_start_us: int = 0
    ) -> dict[str, F64]:
        """Healthy values of every metric the kind reports, for devices ``idx`` at times ``t_us``."""
        return self._models[fleet.kind](fleet, idx, t_us, k, hydraulics, run_start_us)

    def _noise(self, fleet: Fleet, metric: str, idx: IDX, k: I64) -> F64:
        stream = noise.stream_id("signal", fleet.kind, metric)
        return noise.gauss(self.seed, stream, idx, k)

    # --- lamp poles ------------------------------------------------------------------------

    def lamp_schedule(self, t_us: I64) -> tuple[F64, F64]:
        """(lamp on 0/1, dimming level %) from the photocell and a part-night dimming plan."""
        city = self.city
        h = local_hours(t_us, city.lon)
        days = local_day(t_us, city.lon)
        rise = np.empty(len(t_us))
        down = np.empty(len(t_us))
        for day in np.unique(days):
            r, d = sun_hours(round(city.lat, 3), round(city.lon, 3), int(day))
            rise[days == day] = r
            down[days == day] = d
        # The photocell switches on a few minutes before sunset and off after sunrise.
        on = (h < rise + 0.1) | (h > down - 0.1)
        # Part-night dimming: half power from 23:00 to 05:00 local time.
        dim = np.where((h >= 23.0) | (h < 5.0), 50.0, 100.0)
        return on.astype(np.float64), np.where(on, dim, 0.0)

    def _lamp(self, fleet: Fleet, idx: IDX, t_us: I64, k: I64, _h: HydraulicRun | None, _s: int) -> dict[str, F64]:
        on, dim = self.lamp_schedule(t_us)
        rated = fleet.props["rated_w"][idx]
        cabinet = fleet.group[idx]
        # Drivers draw ~10 % at the lowest dimming step; the controller itself ~1 W.
        power = on * rated * (0.1 + 0.9 * dim / 100.0) + 1.0
        power = power + self._noise(fleet, "power_w", idx, k) * (0.005 * power + 0.02)
        h = local_hours(t_us, self.city.lon)
        # The feeder's voltage sags a little in the evening peak of the local grid.
        voltage = (
            230.0
            + fleet.props["voltage_offset"][idx]
            - 2.0 * np.exp(-(((h - 19.0) / 2.0) ** 2))
            + 0.4 * self._noise(fleet, "voltage_v", cabinet.astype(np.intp), k)
            + 0.2 * self._noise(fleet, "voltage_v", idx, k)
        )
        current = power / (voltage * 0.95)
        air = self._air(fleet, idx, t_us, k)
        values = {
            "lamp_on": on,
            "dim_level": dim,
            "power_w": np.maximum(power, 0.0),
            "voltage_v": voltage,
            "current_a": np.maximum(current, 0.0),
            "pm25_ugm3": air["pm25_ugm3"],
            "pm10_ugm3": air["pm10_ugm3"],
            "noise_dba": air["noise_dba"],
            "temperature_c": air["temperature_c"],
            "humidity_pct": air["humidity_pct"],
            "door_open": np.zeros(len(idx)),
            "tilt": np.zeros(len(idx)),
        }
        return values

    # --- air: lamp-pole sensors and environmental stations ----------------------------------

    def _air(self, fleet: Fleet, idx: IDX, t_us: I64, k: I64) -> dict[str, F64]:
        h = local_hours(t_us, self.city.lon)
        tf = fleet.props["traffic"][idx]
        # Rush hours at 08:00 and 17:30.
        traffic = 0.15 + 0.85 * (np.exp(-(((h - 8.0) / 1.5) ** 2)) + 0.9 * np.exp(-(((h - 17.5) / 2.0) ** 2)))
        load = tf * traffic
        pm25 = 9.0 + 2.0 * np.cos(2 * np.pi * (h - 5.0) / 24) + 8.0 * load + 0.8 * self._noise(fleet, "pm25", idx, k)
        pm10 = 1.5 * pm25 + 4.0 + 1.5 * self._noise(fleet, "pm10", idx, k)
        no2 = 12.0 + 40.0 * load + 2.0 * self._noise(fleet, "no2", idx, k)
        sun = np.clip(np.sin(np.pi * (h - 6.0) / 14.0), 0.0, None)
        o3 = 55.0 + 35.0 * sun - 0.4 * (no2 - 12.0) + 3.0 * self._noise(fleet, "o3", idx, k)
        co = 0.2 + 0.8 * load + 0.03 * self._noise(fleet, "co", idx, k)
        sound = 42.0 + 10.0 * np.log10(1.0 + 40.0 * load) + 1.2 * self._noise(fleet, "noise", idx, k)
        doy = (t_us / 86_400e6) % 365.25
        temperature = (
            10.0
            + 8.0 * np.cos(2 * np.pi * (doy - 200.0) / 365.25)
            + 5.0 * np.cos(2 * np.pi * (h - 15.0) / 24)
            + 0.15 * self._noise(fleet, "temperature", idx, k)
        )
        humidity = 78.0 - 2.2 * 5.0 * np.cos(2 * np.pi * (h - 15.0) / 24) + 1.0 * self._noise(fleet, "humidity", idx, k)
        return {
            "pm25_ugm3": np.maximum(pm25, 0.5),
            "pm10_ugm3": np.maximum(pm10, 1.0),
            "no2_ugm3": np.maximum(no2, 0.5),
            "o3_ugm3": np.maximum(o3, 0.5),
            "co_mgm3": np.maximum(co, 0.01),
            "noise_dba": sound,
            "temperature_c": temperature,
            "humidity_pct": np.clip(humidity, 5.0, 100.0),
        }

    def _env(self, fleet: Fleet, idx: IDX, t_us: I64, k: I64, _h: HydraulicRun | None, _s: int) -> dict[str, F64]:
        air = self._air(fleet, idx, t_us, k)
        return {m: air[m] for m in METRICS[DeviceKind.ENV_STATION]}

    # --- water -----------------------------------------------------------------------------

    def _pipe(
        self, fleet: Fleet, idx: IDX, t_us: I64, k: I64, hyd: HydraulicRun | None, run_start: int
    ) -> dict[str, F64]:
        assert hyd is not None, "pipe nodes need a hydraulic run"
        t_rel = (t_us - run_start) / 1e6
        junction = fleet.props["junction"][idx].astype(np.intp)
        pipe = fleet.props["pipe"][idx].astype(np.intp)
        pressure = hyd.pressure(t_rel, junction) + 0.4 * self._noise(fleet, "pressure_kpa", idx, k)
        flow = hyd.flow(t_rel, pipe)
        flow = flow + (0.005 * np.abs(flow) + 0.05) * self._noise(fleet, "flow_m3h", idx, k)
        return {"pressure_kpa": pressure, "flow_m3h": flow}

    def _water(self, fleet: Fleet, idx: IDX, t_us: I64, k: I64, _h: HydraulicRun | None, _s: int) -> dict[str, F64]:
        if self.replay is not None:
            rows = self.replay.rows_for(idx, k, len(fleet))
            return {m: v[rows] for m, v in self.replay.values.items()}
        h = local_hours(t_us, self.city.lon)
        base = fleet.props["base_cl"][idx]
        # Chlorine decays with water age: lowest after the night, when water sat longest.
        chlorine = base * (1.0 - 0.08 * np.cos(2 * np.pi * (h - 6.0) / 24)) + 0.01 * self._noise(fleet, "cl", idx, k)
        turbidity = 0.15 + 0.02 * self._noise(fleet, "turbidity", idx, k)
        ph = 7.6 + 0.04 * self._noise(fleet, "ph", idx, k)
        conductivity = 480.0 + 8.0 * np.cos(2 * np.pi * (h - 14.0) / 24) + 2.0 * self._noise(fleet, "cond", idx, k)
        temperature = 12.0 + 0.6 * np.cos(2 * np.pi * (h - 16.0) / 24) + 0.05 * self._noise(fleet, "temp", idx, k)
        return {
            "chlorine_mgl": np.maximum(chlorine, 0.0),
            "turbidity_ntu": np.maximum(turbidity, 0.01),
            "ph": ph,
            "conductivity_uscm": conductivity,
            "temperature_c": temperature,
        }

    # --- drainage --------------------------------------------------------------------------

    def _drainage(self, fleet: Fleet, idx: IDX, t_us: I64, k: I64, _h: HydraulicRun | None, _s: int) -> dict[str, F64]:
        h = local_hours(t_us, self.city.lon)
        dry = fleet.props["dry_cm"][idx]
        # Dry-weather flow follows water use: a morning and an evening peak.
        level = dry * (1.0 + 0.3 * np.cos(2 * np.pi * (h - 8.0) / 24)) + 0.3 * self._noise(fleet, "level", idx, k)
        return {"level_cm": np.maximum(level, 0.0), "cover_tilt": np.zeros(len(idx))}
