"""Simulations without I/O: a scenario, its city, and the readings of a window of time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from cityops.core.contracts import DeviceKind, GroundTruth, to_us
from firmware_sim import Scenario, Simulation, build_city
from firmware_sim.scenario import CityConfig, DeviceClass, Truth

# Midnight UTC on a winter day: lamps are on at the start, off around noon.
T0 = to_us(datetime(2026, 1, 15, 0, 0, tzinfo=UTC))
HOUR = 3_600_000_000


def scenario(**fields: Any) -> Scenario:
    base: dict[str, Any] = {
        "seed": 3,
        "city": CityConfig(lamps_per_cabinet=5),
        "devices": {
            DeviceKind.LAMP_POLE: DeviceClass(count=10, interval_s=60),
            DeviceKind.PIPE_NODE: DeviceClass(count=12, interval_s=60),
            DeviceKind.WATER_QUALITY: DeviceClass(count=3, interval_s=60),
            DeviceKind.ENV_STATION: DeviceClass(count=8, interval_s=60),
            DeviceKind.DRAINAGE: DeviceClass(count=8, interval_s=60),
        },
        "truth": Truth(file="", kafka=False),
    }
    return Scenario.model_validate({**base, **fields})


@dataclass
class Series:
    """All readings of a run, per kind, as flat arrays."""

    idx: dict[DeviceKind, npt.NDArray[np.intp]]
    ts: dict[DeviceKind, npt.NDArray[np.int64]]
    sample: dict[DeviceKind, npt.NDArray[np.int64]]
    seq: dict[DeviceKind, npt.NDArray[np.int64]]
    values: dict[DeviceKind, dict[str, npt.NDArray[np.float64]]]
    truth: list[GroundTruth]

    def metric(self, kind: DeviceKind, name: str) -> npt.NDArray[np.float64]:
        return self.values[kind][name]

    def rows(self, kind: DeviceKind, device: int) -> npt.NDArray[np.bool_]:
        return self.idx[kind] == device


def run(s: Scenario, hours: float, *, steps: int = 1) -> tuple[Simulation, Series]:
    """Simulate ``hours`` from T0, advancing in ``steps`` equal windows."""
    sim = Simulation(s, build_city(s), T0)
    end = T0 + int(hours * HOUR) - 1
    cuts = [T0 + (end - T0) * (i + 1) // steps for i in range(steps)]
    batches = []
    truth: list[GroundTruth] = []
    for cut in cuts:
        adv = sim.advance(cut)
        batches += adv.batches
        truth += adv.started
    out = Series({}, {}, {}, {}, {}, truth)
    for kind in sim.city.fleets:
        mine = [b for b in batches if b.fleet.kind is kind]
        if not mine:
            continue
        out.idx[kind] = np.concatenate([b.idx for b in mine])
        out.ts[kind] = np.concatenate([b.ts_us for b in mine])
        out.sample[kind] = np.concatenate([b.sample_us for b in mine])
        out.seq[kind] = np.concatenate([b.seq for b in mine])
        matrix = np.concatenate([b.values for b in mine])
        out.values[kind] = {m: matrix[:, j] for j, m in enumerate(mine[0].metrics)}
    return sim, out
