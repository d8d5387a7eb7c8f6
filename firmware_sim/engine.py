"""The simulation without I/O: given a point in simulated time, the readings due until then.

Device ``d`` of a kind takes its ``k``-th sample at ``t0 + phase[d] + k * interval``. The
engine advances over a window of simulated time, computes every sample due in it at once
per kind (NumPy over all devices), lets the active events change them, and numbers the
readings each device sends. Nothing here depends on how the windows are cut, so a run is
the same whether it is advanced in 100 ms ticks or in one call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cityops.core.contracts import METRICS, DeviceKind, GroundTruth
from firmware_sim import events as ev
from firmware_sim.layout import City, Fleet
from firmware_sim.scenario import Scenario
from firmware_sim.signals import Signals

IDX = npt.NDArray[np.intp]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


@dataclass
class Batch:
    """Readings of one kind, in time order. ``values[i, j]`` is metric ``metrics[j]``; NaN: none."""

    fleet: Fleet
    idx: IDX
    ts_us: I64  # as the device reports it (clock skew included)
    sample_us: I64  # when it was really sampled
    seq: I64
    metrics: list[str]
    values: F64

    def __len__(self) -> int:
        return len(self.idx)


@dataclass
class Advance:
    batches: list[Batch]
    started: list[GroundTruth]


class Simulation:
    def __init__(self, scenario: Scenario, city: City, start_us: int) -> None:
        self.scenario = scenario
        self.city = city
        self.t0 = start_us
        self.signals = Signals(city, scenario)
        self.cursor = start_us - 1  # samples at exactly t0 are due in the first window
        self._epoch_us = int(scenario.epoch_s * 1e6)
        self._plans: dict[int, ev.Plan] = {}
        self._seq = {kind: np.zeros(len(f), dtype=np.int64) for kind, f in city.fleets.items()}

    def plan(self, epoch: int) -> ev.Plan:
        plan = self._plans.get(epoch)
        if plan is None:
            plan = self._plans[epoch] = ev.plan_epoch(self.city, self.scenario, self.signals, epoch, self.t0)
            self._plans.pop(epoch - 2, None)  # keep the previous one for late windows
        return plan

    def events(self, epoch: int) -> list[ev.Event]:
        return self.plan(epoch).events

    def advance(self, until_us: int) -> Advance:
        """Every reading sampled in (cursor, until_us], and the events that started in it."""
        batches: list[Batch] = []
        started: list[GroundTruth] = []
        while self.cursor < until_us:
            epoch = max(0, (self.cursor + 1 - self.t0) // self._epoch_us)
            plan = self.plan(epoch)
            lo, hi = self.cursor, min(until_us, plan.end_us - 1)
            for e in plan.events:
                if lo < e.start_us <= hi:
                    started.append(e.truth(self.city))
            for fleet in self.city.fleets.values():
                batch = self._window(fleet, plan, lo, hi)
                if batch is not None:
                    batches.append(batch)
            self.cursor = hi
        return Advance(batches, started)

    def _window(self, fleet: Fleet, plan: ev.Plan, lo: int, hi: int) -> Batch | None:
        interval = round(fleet.interval_s * 1e6)
        phase = np.round(fleet.phase_s * 1e6).astype(np.int64)
        # Sample indices k with lo < t0 + phase + k * interval <= hi.
        k_lo = np.maximum(0, (lo - self.t0 - phase) // interval + 1)
        k_hi = (hi - self.t0 - phase) // interval
        counts = np.maximum(0, k_hi - k_lo + 1)
        total = int(counts.sum())
        if total == 0:
            return None
        idx = np.repeat(np.arange(len(fleet), dtype=np.intp), counts)
        starts = np.repeat(np.cumsum(counts) - counts, counts)
        k = np.repeat(k_lo, counts) + (np.arange(total) - starts)
        t = self.t0 + phase[idx] + k * interval
        values = self.signals.sample(fleet, idx, t, k, plan.hydraulics, plan.start_us)
        keep, skew = ev.apply(plan.events, self.signals, fleet.kind, idx, t, values, plan.hydraulics, plan.start_us)
        metrics = [m for m in METRICS[fleet.kind] if m in values]
        matrix = np.column_stack([values[m] for m in metrics])
        idx, k, t, skew, matrix = idx[keep], k[keep], t[keep], skew[keep], matrix[keep]
        if len(idx) == 0:
            return None
        # Sequence numbers count what a device sent: idx is grouped by device, k ascending.
        seq_base = self._seq[fleet.kind]
        first = np.searchsorted(idx, idx, side="left")
        seq = seq_base[idx] + (np.arange(len(idx)) - first)
        np.add.at(seq_base, idx, 1)
        order = np.argsort(t, kind="stable")
        return Batch(fleet, idx[order], t[order] + skew[order], t[order], seq[order], metrics, matrix[order])

    def readings_sent(self, kind: DeviceKind) -> I64:
        return self._seq[kind]
