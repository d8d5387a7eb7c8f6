"""Incidents and sensor faults: planning them from the scenario, and what they do to signals.

Every event becomes a :class:`~cityops.core.contracts.GroundTruth`: the devices and metrics it
changes and when, so detection can be scored against it. Events are planned an epoch at a
time from the seed; an event ends inside the epoch it starts in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from cityops.core.contracts import METRICS, DeviceKind, GroundTruth, TruthCategory
from firmware_sim import noise
from firmware_sim.errors import ScenarioError
from firmware_sim.hydraulics import HydraulicRun, Leak
from firmware_sim.layout import City
from firmware_sim.scenario import INCIDENTS, EventKind, Scenario, Scheduled
from firmware_sim.signals import SCALE, Signals

IDX = npt.NDArray[np.intp]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

L, P, W, E, D = (
    DeviceKind.LAMP_POLE,
    DeviceKind.PIPE_NODE,
    DeviceKind.WATER_QUALITY,
    DeviceKind.ENV_STATION,
    DeviceKind.DRAINAGE,
)


@dataclass(frozen=True)
class Spec:
    kinds: tuple[DeviceKind, ...]
    duration_s: float
    magnitude: float
    metrics: dict[DeviceKind, tuple[str, ...]]


SPECS: dict[EventKind, Spec] = {
    # magnitude: peak outflow in L/s
    EventKind.PIPE_LEAK: Spec((P,), 6 * 3600, 8.0, {P: ("pressure_kpa", "flow_m3h")}),
    EventKind.PIPE_BURST: Spec((P,), 2 * 3600, 50.0, {P: ("pressure_kpa", "flow_m3h")}),
    # A cabinet's feeder loses power; the controllers report on their backup cell.
    EventKind.FEEDER_OUTAGE: Spec((L,), 3600, 0.0, {L: ("voltage_v", "power_w", "current_a", "lamp_on", "dim_level")}),
    # The lamp's driver fails: no draw while it is switched on.
    EventKind.LAMP_FAILURE: Spec((L,), 12 * 3600, 0.0, {L: ("power_w", "current_a")}),
    # magnitude: extra watts drawn through the pole day and night
    EventKind.ENERGY_THEFT: Spec((L,), 12 * 3600, 400.0, {L: ("power_w", "current_a")}),
    # magnitude: peak extra factor on particulates and NO2 in one district
    EventKind.POLLUTION_EPISODE: Spec(
        (E, L),
        8 * 3600,
        3.0,
        {E: ("pm25_ugm3", "pm10_ugm3", "no2_ugm3"), L: ("pm25_ugm3", "pm10_ugm3")},
    ),
    # magnitude: fraction of free chlorine consumed
    EventKind.CONTAMINATION: Spec((W,), 2 * 3600, 0.8, {W: ("chlorine_mgl", "turbidity_ntu", "conductivity_uscm")}),
    # magnitude: peak level as a fraction of the manhole's depth
    EventKind.FLOODING: Spec((D,), 3 * 3600, 1.1, {D: ("level_cm", "cover_tilt")}),
    # Sensor faults on one metric of one device; magnitude in the metric's SCALE.
    EventKind.SPIKE: Spec((L, P, W, E, D), 0.0, 10.0, {}),
    EventKind.DRIFT: Spec((L, P, W, E, D), 6 * 3600, 8.0, {}),
    EventKind.STUCK_AT: Spec((L, P, W, E, D), 2 * 3600, 0.0, {}),
    EventKind.DROPOUT: Spec((L, P, W, E, D), 1800, 0.0, {}),
    EventKind.NOISE_BURST: Spec((L, P, W, E, D), 1800, 4.0, {}),
    # magnitude: seconds the device's clock is off (the gateway tolerates 300 s ahead)
    EventKind.CLOCK_SKEW: Spec((L, P, W, E, D), 3600, 120.0, {}),
}


@dataclass
class Event:
    event_id: str
    kind: EventKind
    targets: dict[DeviceKind, IDX]
    metrics: dict[DeviceKind, tuple[str, ...]]
    start_us: int
    end_us: int
    magnitude: float
    note: str = ""
    # False for events already in the data (labels of a replayed recording).
    effect: bool = True
    _held: dict[tuple[DeviceKind, str], F64] = field(default_factory=dict)

    @property
    def category(self) -> TruthCategory:
        return TruthCategory.INCIDENT if self.kind in INCIDENTS else TruthCategory.SENSOR_FAULT

    def truth(self, city: City) -> GroundTruth:
        ids = [city.fleets[k].ids[int(i)] for k, idx in self.targets.items() for i in idx]
        metrics = sorted({m for ms in self.metrics.values() for m in ms})
        return GroundTruth(
            event_id=self.event_id,
            kind=self.kind.value,
            category=self.category,
            device_ids=ids,
            metrics=metrics,
            start_us=self.start_us,
            end_us=self.end_us,
            magnitude=self.magnitude,
            note=self.note,
        )


@dataclass
class Plan:
    """An epoch's events and, when the city has pipes, its hydraulic run."""

    start_us: int
    end_us: int
    events: list[Event]
    hydraulics: HydraulicRun | None


def plan_epoch(city: City, scenario: Scenario, signals: Signals, epoch: int, t0_us: int) -> Plan:
    """Plan epoch ``epoch`` of a run that started at ``t0_us``."""
    length_us = int(scenario.epoch_s * 1e6)
    start, end = t0_us + epoch * length_us, t0_us + (epoch + 1) * length_us
    rng = np.random.default_rng([scenario.seed & 0xFFFFFFFF, epoch, 0xE7E7])
    events: list[Event] = []
    days = scenario.epoch_s / 86_400.0

    def new_id(kind: EventKind) -> str:
        return f"{scenario.city.id_prefix}e{epoch}-{len(events):04d}-{kind.value}"

    for sched in scenario.incidents:
        at = t0_us + int(sched.at_s * 1e6)
        if start <= at < end:
            ev = _make(city, scenario, sched.kind, sched, at, min(end, _end(sched, at)), rng, new_id(sched.kind))
            if ev is not None:
                events.append(ev)
    for kind, rate in sorted(scenario.incident_rates.items()):
        for _ in range(rng.poisson(rate * days)):
            ev = _random(city, scenario, kind, start, end, rng, new_id(kind))
            if ev is not None:
                events.append(ev)
    device_count = sum(len(f) for f in city.fleets.values())
    for kind, rate in sorted(scenario.fault_rates.items()):
        for _ in range(rng.poisson(rate * days * device_count)):
            ev = _random(city, scenario, kind, start, end, rng, new_id(kind))
            if ev is not None:
                events.append(ev)

    hydraulics = None
    if city.network is not None and P in city.fleets:
        hydraulics = _hydraulics(city, scenario, events, start, end)
    events += _replay_labels(city, scenario, signals, epoch, t0_us, start, end)
    events.sort(key=lambda e: (e.start_us, e.event_id))
    return Plan(start, end, events, hydraulics)


def _end(sched: Scheduled, at: int) -> int:
    duration = sched.duration_s if sched.duration_s is not None else SPECS[sched.kind].duration_s
    return at + max(1, int(duration * 1e6))


def _random(
    city: City, scenario: Scenario, kind: EventKind, start: int, end: int, rng: np.random.Generator, event_id: str
) -> Event | None:
    spec = SPECS[kind]
    duration = int(spec.duration_s * 1e6)
    latest = max(start, end - duration - 1)
    at = int(rng.integers(start, latest + 1))
    return _make(city, scenario, kind, None, at, min(end, at + max(duration, 1)), rng, event_id)


def _make(
    city: City,
    scenario: Scenario,
    kind: EventKind,
    sched: Scheduled | None,
    at: int,
    end: int,
    rng: np.random.Generator,
    event_id: str,
) -> Event | None:
    """Resolve the event's target (given or drawn) into devices; None if the city has none."""
    spec = SPECS[kind]
    kinds = [k for k in spec.kinds if k in city.fleets]
    if not kinds:
        return None
    target = sched.target if sched else ""
    magnitude = sched.magnitude if sched and sched.magnitude is not None else spec.magnitude
    targets: dict[DeviceKind, IDX] = {}
    metrics: dict[DeviceKind, tuple[str, ...]] = {}
    note = ""
    if kind in (EventKind.POLLUTION_EPISODE, EventKind.FLOODING):
        district = _district_index(city, target, rng)
        for k in kinds:
            idx = np.flatnonzero(city.fleets[k].district == district)
            if len(idx):
                targets[k], metrics[k] = idx, spec.metrics[k]
        if not targets:
            if target:
                raise ScenarioError(f"{kind}: no devices in district {city.districts[district]!r}")
            return None
        note = f"district {city.districts[district]}"
    elif kind is EventKind.FEEDER_OUTAGE:
        fleet = city.fleets[L]
        cab = _group_index(fleet.group_names, target, fleet.ids, fleet.group, rng)
        targets[L], metrics[L] = np.flatnonzero(fleet.group == cab), spec.metrics[L]
        note = f"cabinet {fleet.group_names[cab]}"
    elif kind in INCIDENTS:
        k = kinds[0]
        fleet = city.fleets[k]
        i = _device_index(fleet.ids, fleet.index, target, rng)
        targets[k], metrics[k] = np.array([i], dtype=np.intp), spec.metrics[k]
    else:
        # A sensor fault: one device, one metric.
        if target:
            found = next((f for f in city.fleets if target in city.fleets[f].index), None)
            if found is None:
                raise ScenarioError(f"{kind}: no device {target!r}")
            k = found
        else:
            sizes = np.array([len(city.fleets[k]) for k in kinds], dtype=float)
            k = kinds[int(rng.choice(len(kinds), p=sizes / sizes.sum()))]
        fleet = city.fleets[k]
        i = _device_index(fleet.ids, fleet.index, target, rng)
        targets[k] = np.array([i], dtype=np.intp)
        if kind in (EventKind.DROPOUT, EventKind.CLOCK_SKEW):
            metrics[k] = ()
        else:
            choices = sorted(SCALE[k])
            metric = sched.metric if sched and sched.metric else choices[int(rng.integers(len(choices)))]
            if metric not in SCALE[k]:
                raise ScenarioError(f"{kind}: {metric!r} is not a faultable metric of {k.value}")
            metrics[k] = (metric,)
        if kind is EventKind.SPIKE:
            # One reading: the window covers exactly one sample of the device.
            end = at + int(fleet.interval_s * 1e6)
        if kind is EventKind.CLOCK_SKEW:
            note = f"clock {magnitude:+.0f} s"
    return Event(event_id, kind, targets, metrics, at, max(end, at + 1), float(magnitude), note)


def _district_index(city: City, target: str, rng: np.random.Generator) -> int:
    if not target:
        return int(rng.integers(len(city.districts)))
    if target not in city.districts:
        raise ScenarioError(f"no district {target!r} (districts: {', '.join(city.districts)})")
    return city.districts.index(target)


def _group_index(names: list[str], target: str, ids: list[str], group: IDX, rng: np.random.Generator) -> int:
    if not target:
        return int(rng.integers(len(names)))
    if target in names:
        return names.index(target)
    if target in ids:
        return int(group[ids.index(target)])
    raise ScenarioError(f"no cabinet or lamp {target!r}")


def _device_index(ids: list[str], index: dict[str, int], target: str, rng: np.random.Generator) -> int:
    if not target:
        return int(rng.integers(len(ids)))
    if target not in index:
        raise ScenarioError(f"no device {target!r}")
    return index[target]


# What a pipe node's sensors can tell from noise: kPa, and a fraction of the flow (+1 m3/h).
FELT_KPA = 2.0
FELT_FLOW = 0.05


def _hydraulics(city: City, scenario: Scenario, events: list[Event], start: int, end: int) -> HydraulicRun:
    """Run the network for the epoch with its leaks and bursts; record which nodes felt them."""
    from firmware_sim.signals import local_hours

    network = city.network
    assert network is not None
    fleet = city.fleets[P]
    step = 300.0
    horizon = (end - start) / 1e6
    day_offset = float(local_hours(np.array([start], dtype=np.int64), city.lon)[0]) * 3600.0
    leaks = []
    hydraulic = [e for e in events if e.kind in (EventKind.PIPE_LEAK, EventKind.PIPE_BURST)]
    steps = int(horizon // step)
    for ev in hydraulic:
        i = int(ev.targets[P][0])
        junction = network.junctions[int(fleet.props["junction"][i])]
        # Readings interpolate between solver steps, so an outflow that starts at step S shows
        # from step S - 1 on: start on the grid, one step after the requested time.
        first = min(steps, int(-(-(ev.start_us - start) // int(step * 1e6))) + 1)
        s, e = first * step, max(first * step + step, (ev.end_us - start) / 1e6)
        ramp = (e - s) * 0.8 if ev.kind is EventKind.PIPE_LEAK else 0.0
        leaks.append(Leak(junction, s, e, ev.magnitude, ramp))
        ev.note = f"junction {junction}, {ev.magnitude:g} L/s"
        ev.start_us = start + int((s - step) * 1e6)
    run = network.simulate(horizon_s=horizon, step_s=step, day_offset_s=day_offset, leaks=leaks)
    if hydraulic:
        # What each one did: the network with it alone against the network without any. The
        # truth names every pipe node whose pressure or flow moved beyond its sensor noise
        # while the water ran out. It does not cover the recovery afterwards: tanks refill for
        # hours and level-controlled pumps switch at shifted times, which is normal operation.
        base = network.simulate(horizon_s=horizon, step_s=step, day_offset_s=day_offset, leaks=[])
        nodes = fleet.props["junction"].astype(np.intp)
        pipe = fleet.props["pipe"].astype(np.intp)
        for ev, leak in zip(hydraulic, leaks, strict=True):
            alone = (
                run
                if len(leaks) == 1
                else network.simulate(horizon_s=horizon, step_s=step, day_offset_s=day_offset, leaks=[leak])
            )
            dp = np.abs(alone.pressure_kpa[:, nodes] - base.pressure_kpa[:, nodes])
            q = base.flow_m3h[:, pipe]
            dq = np.abs(alone.flow_m3h[:, pipe] - q)
            felt = (dp > FELT_KPA) | (dq > FELT_FLOW * np.abs(q) + 1.0)
            # Interpolation carries the last step's outflow into the next step.
            last = min(len(felt), int(leak.end_s // step) + 1)
            seen: npt.NDArray[np.bool_] = np.asarray(felt[: last + 1].any(axis=0))
            seen[ev.targets[P]] = True
            ev.targets[P] = np.flatnonzero(seen)
            ev.end_us = min(end, start + int(last * step * 1e6))
            moved = np.flatnonzero(felt.any(axis=1))
            if len(moved) and moved[-1] > last:
                ev.note += f"; the network settles {(moved[-1] - last) * step / 60:.0f} min after"
            ev.effect = False  # already in the hydraulics
    return run


def _replay_labels(
    city: City, scenario: Scenario, signals: Signals, epoch: int, t0: int, start: int, end: int
) -> list[Event]:
    """Labelled events of a replayed recording, where they fall in this epoch."""
    replay = signals.replay
    if replay is None or W not in city.fleets:
        return []
    fleet = city.fleets[W]
    interval = int(fleet.interval_s * 1e6)
    out = []
    for i in range(len(fleet)):
        phase = int(fleet.phase_s[i] * 1e6)
        k0 = max(0, -(-(start - t0 - phase) // interval))
        k1 = (end - t0 - phase) // interval
        if k1 < k0:
            continue
        k = np.arange(k0, k1 + 1, dtype=np.int64)
        labels = replay.event[replay.rows_for(np.full(len(k), i, dtype=np.intp), k, len(fleet))]
        edges = np.diff(np.concatenate([[0], labels.astype(np.int8), [0]]))
        for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
            out.append(
                Event(
                    f"{scenario.city.id_prefix}e{epoch}-replay-{fleet.ids[i]}-{a}",
                    EventKind.CONTAMINATION,
                    {W: np.array([i], dtype=np.intp)},
                    {W: ("chlorine_mgl", "turbidity_ntu", "ph", "conductivity_uscm")},
                    t0 + phase + int(k[a]) * interval,
                    t0 + phase + int(k[b - 1]) * interval + 1,
                    0.0,
                    note="labelled event in the replayed GECCO 2018 recording",
                    effect=False,
                )
            )
    return out


def apply(
    events: list[Event],
    signals: Signals,
    kind: DeviceKind,
    idx: IDX,
    t_us: I64,
    values: dict[str, F64],
    hydraulics: HydraulicRun | None,
    run_start_us: int,
) -> tuple[npt.NDArray[np.bool_], I64]:
    """Change ``values`` in place as the active events say.

    Returns which readings are still sent (a dropout silences the device) and the offset of
    each reading's reported timestamp (clock skew), in microseconds.
    """
    keep = np.ones(len(idx), dtype=bool)
    skew = np.zeros(len(idx), dtype=np.int64)
    if len(idx) == 0:
        return keep, skew
    lo, hi = int(t_us.min()), int(t_us.max())
    fleet = signals.city.fleets[kind]
    for ev in events:
        if not ev.effect or ev.end_us <= lo or ev.start_us > hi or kind not in ev.targets:
            continue
        rows = np.flatnonzero(np.isin(idx, ev.targets[kind]) & (t_us >= ev.start_us) & (t_us < ev.end_us))
        if len(rows) == 0:
            continue
        t = t_us[rows]
        progress = (t - ev.start_us) / max(1, ev.end_us - ev.start_us)
        # Most incidents build up and ease off: a trapezoid over the event's span.
        shape = np.clip(np.minimum(progress / 0.25, (1.0 - progress) / 0.25), 0.0, 1.0)
        m = ev.magnitude
        match ev.kind:
            case EventKind.FEEDER_OUTAGE:
                for name in ("voltage_v", "power_w", "current_a", "lamp_on", "dim_level"):
                    values[name][rows] = 0.0
            case EventKind.LAMP_FAILURE:
                lit = values["lamp_on"][rows] > 0.5
                values["power_w"][rows] = np.where(lit, 1.0, values["power_w"][rows])
                values["current_a"][rows] = _current(values["power_w"][rows], values["voltage_v"][rows])
            case EventKind.ENERGY_THEFT:
                values["power_w"][rows] += m
                values["current_a"][rows] = _current(values["power_w"][rows], values["voltage_v"][rows])
            case EventKind.POLLUTION_EPISODE:
                for name in ev.metrics[kind]:
                    values[name][rows] *= 1.0 + m * shape
            case EventKind.CONTAMINATION:
                values["chlorine_mgl"][rows] *= 1.0 - m * shape
                values["turbidity_ntu"][rows] += 2.5 * shape
                values["conductivity_uscm"][rows] *= 1.0 + 0.15 * shape
            case EventKind.FLOODING:
                depth = fleet.props["depth_cm"][idx[rows]]
                dry = values["level_cm"][rows]
                level = dry + (m * depth - dry) * shape
                values["level_cm"][rows] = level
                values["cover_tilt"][rows] = (level >= depth).astype(np.float64)
            case EventKind.DROPOUT:
                keep[rows] = False
            case EventKind.CLOCK_SKEW:
                skew[rows] = int(m * 1e6)
            case _:
                _sensor_fault(ev, signals, fleet.kind, idx, rows, t, progress, values, hydraulics, run_start_us)
    _saturate(kind, values)
    return keep, skew


def _sensor_fault(
    ev: Event,
    signals: Signals,
    kind: DeviceKind,
    idx: IDX,
    rows: IDX,
    t: I64,
    progress: F64,
    values: dict[str, F64],
    hydraulics: HydraulicRun | None,
    run_start_us: int,
) -> None:
    (metric,) = ev.metrics[kind]
    scale = SCALE[kind][metric]
    sign = 1.0 if noise.stream_id(ev.event_id) & 1 == 0 else -1.0
    match ev.kind:
        case EventKind.SPIKE:
            values[metric][rows] += ev.magnitude * scale
        case EventKind.DRIFT:
            values[metric][rows] += sign * ev.magnitude * scale * progress
        case EventKind.NOISE_BURST:
            jitter = noise.gauss(signals.seed, noise.stream_id("burst", ev.event_id), t, 0)
            values[metric][rows] += ev.magnitude * scale * jitter
        case EventKind.STUCK_AT:
            key = (kind, metric)
            held = ev._held.get(key)
            if held is None:
                fleet = signals.city.fleets[kind]
                device = ev.targets[kind]
                start = np.full(len(device), ev.start_us, dtype=np.int64)
                first = signals.sample(
                    fleet, device, start, np.full(len(device), -1, dtype=np.int64), hydraulics, run_start_us
                )
                held = ev._held[key] = first[metric]
            pos = np.searchsorted(ev.targets[kind], idx[rows])
            values[metric][rows] = held[pos]


def _saturate(kind: DeviceKind, values: dict[str, F64]) -> None:
    """A sensor reads no further than its range: clip to the catalogue's possible values."""
    for name, spec in METRICS[kind].items():
        v = values.get(name)
        if v is not None:
            np.clip(v, spec.low, spec.high, out=v)


def _current(power_w: F64, voltage_v: F64) -> F64:
    """Current at power factor 0.95; none on a dead feeder (an outage overlapping the event)."""
    out = np.zeros_like(power_w)
    np.divide(power_w, voltage_v * 0.95, out=out, where=voltage_v > 0)
    return out
