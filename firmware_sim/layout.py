"""The simulated city: its districts, devices, their positions and network relations.

Districts are a grid over the city's extent. Pipe nodes sit on the junctions of the water
network model, laid over the extent; their district metered area (DMA) is the district
they fall in. Lamps are wired in groups to a cabinet (and its feeder); drainage sensors sit
in manholes of known depth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import numpy.typing as npt

from cityops.core.contracts import DeviceKind, PayloadFormat
from cityops.core.registry import Device
from firmware_sim import noise
from firmware_sim.hydraulics import WaterNetwork
from firmware_sim.scenario import Scenario

SHORT = {
    DeviceKind.LAMP_POLE: "lamp",
    DeviceKind.PIPE_NODE: "pipe",
    DeviceKind.WATER_QUALITY: "wq",
    DeviceKind.ENV_STATION: "env",
    DeviceKind.DRAINAGE: "drain",
}
_RATED_W = np.array([40.0, 60.0, 90.0, 120.0, 150.0])


@dataclass
class Fleet:
    """The devices of one kind, as arrays indexed by the device's position in ``ids``."""

    kind: DeviceKind
    ids: list[str]
    interval_s: float
    format: PayloadFormat
    lat: npt.NDArray[np.float64]
    lon: npt.NDArray[np.float64]
    district: npt.NDArray[np.intp]
    # The group that fails together: cabinet (lamps), DMA (pipes), district (others).
    group: npt.NDArray[np.intp]
    group_names: list[str]
    # Offset of each device's reporting schedule within its interval, so devices don't publish in lockstep.
    phase_s: npt.NDArray[np.float64]
    # Per-kind properties: rated_w, voltage_offset, traffic (lamps); junction, pipe (pipe nodes);
    # depth_cm, dry_cm (drainage); base_cl (water quality); traffic (env stations).
    props: dict[str, npt.NDArray[np.float64]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @cached_property
    def index(self) -> dict[str, int]:
        return {d: i for i, d in enumerate(self.ids)}


@dataclass
class City:
    name: str
    extent: tuple[float, float, float, float]
    districts: list[str]
    fleets: dict[DeviceKind, Fleet]
    devices: list[Device]
    network: WaterNetwork | None
    # Degrees east: local solar time is UTC + lon / 15 h.
    lon: float
    lat: float

    def district_of(self, lat: float, lon: float) -> int:
        return int(_district(self.extent, len(self.districts), np.array([lat]), np.array([lon]))[0])

    def district_polygon(self, i: int) -> list[tuple[float, float]]:
        """(lat, lon) corners of district ``i``'s cell."""
        south, west, north, east = self.extent
        cols, rows = _grid(len(self.districts))
        c, r = i % cols, i // cols
        w, e = west + (east - west) * c / cols, west + (east - west) * (c + 1) / cols
        s, n = south + (north - south) * r / rows, south + (north - south) * (r + 1) / rows
        return [(s, w), (s, e), (n, e), (n, w)]

    def outlines(self) -> dict[str, list[tuple[float, float]]]:
        """Every district's outline, by name, for maps without tiles."""
        return {name: self.district_polygon(i) for i, name in enumerate(self.districts)}


def _grid(n: int) -> tuple[int, int]:
    cols = math.ceil(math.sqrt(n))
    return cols, math.ceil(n / cols)


def _district(
    extent: tuple[float, float, float, float], n: int, lat: npt.NDArray[np.float64], lon: npt.NDArray[np.float64]
) -> npt.NDArray[np.intp]:
    south, west, north, east = extent
    cols, rows = _grid(n)
    c = np.clip(((lon - west) / (east - west) * cols).astype(np.intp), 0, cols - 1)
    r = np.clip(((lat - south) / (north - south) * rows).astype(np.intp), 0, rows - 1)
    district: npt.NDArray[np.intp] = np.minimum(r * cols + c, n - 1)
    return district


def build_city(scenario: Scenario, *, concentrated: bool | None = None) -> City:
    """The scenario's city. ``concentrated`` (default: the scenario's mode) puts devices behind concentrators."""
    cfg = scenario.city
    seed = scenario.seed
    south, west, north, east = cfg.extent
    if concentrated is None:
        concentrated = scenario.mode == "concentrator"
    network = None
    if scenario.device_class(DeviceKind.PIPE_NODE).count:
        network = WaterNetwork(cfg.water_network)
    fleets: dict[DeviceKind, Fleet] = {}
    devices: list[Device] = []
    n_districts = len(cfg.districts)
    for kind, short in SHORT.items():
        spec = scenario.device_class(kind)
        n = spec.count
        if n == 0:
            continue
        i = np.arange(n)
        sid = noise.stream_id("city", kind)
        lat = south + (north - south) * noise.uniform(seed, sid, i, 1)
        lon = west + (east - west) * noise.uniform(seed, sid, i, 2)
        props: dict[str, npt.NDArray[np.float64]] = {}
        if kind is DeviceKind.PIPE_NODE:
            assert network is not None
            junction = i % len(network.junctions)
            xy = network.coordinates
            lo, hi = xy.min(axis=0), xy.max(axis=0)
            span = np.where(hi > lo, hi - lo, 1.0)
            # 5 % margins; the network's x is east, y is north.
            rel = 0.05 + 0.9 * (xy[junction] - lo) / span
            lon, lat = west + (east - west) * rel[:, 0], south + (north - south) * rel[:, 1]
            props["junction"] = junction.astype(np.float64)
            props["pipe"] = network.junction_pipe[junction].astype(np.float64)
        elif kind is DeviceKind.LAMP_POLE:
            # Lamps of one cabinet stand along one street: near the cabinet's first lamp.
            cabinet = i // cfg.lamps_per_cabinet
            first = cabinet * cfg.lamps_per_cabinet
            step = noise.gauss(seed, sid, i, 3) * 0.0012
            lat = lat[first] + step
            lon = lon[first] + noise.gauss(seed, sid, i, 4) * 0.0012
            props["rated_w"] = _RATED_W[(noise.uniform(seed, sid, cabinet, 5) * len(_RATED_W)).astype(int)]
            props["voltage_offset"] = noise.gauss(seed, sid, cabinet, 6) * 2.0
            props["traffic"] = 0.5 + noise.uniform(seed, sid, i, 7)
        elif kind is DeviceKind.ENV_STATION:
            props["traffic"] = 0.5 + noise.uniform(seed, sid, i, 7)
        elif kind is DeviceKind.DRAINAGE:
            props["depth_cm"] = 150.0 + 150.0 * noise.uniform(seed, sid, i, 8)
            props["dry_cm"] = 4.0 + 10.0 * noise.uniform(seed, sid, i, 9)
        elif kind is DeviceKind.WATER_QUALITY:
            props["base_cl"] = 0.35 + 0.3 * noise.uniform(seed, sid, i, 10)
        lat = np.clip(lat, south, north)
        lon = np.clip(lon, west, east)
        district = _district(cfg.extent, n_districts, lat, lon)
        if kind is DeviceKind.LAMP_POLE:
            group = i // cfg.lamps_per_cabinet
            group_names = [f"{cfg.id_prefix}CAB-{g + 1:03d}" for g in range(int(group.max()) + 1)]
        elif kind is DeviceKind.PIPE_NODE:
            group = district
            group_names = [f"{cfg.id_prefix}DMA-{d}" for d in cfg.districts]
        else:
            group = district
            group_names = list(cfg.districts)
        ids = [f"{cfg.id_prefix}{short}-{k + 1:04d}" for k in range(n)]
        phase = spec.interval_s * noise.uniform(seed, sid, i, 11)
        fleet = Fleet(kind, ids, spec.interval_s, spec.format, lat, lon, district, group, group_names, phase, props)
        fleets[kind] = fleet
        per_conc = scenario.concentrator.devices_per_concentrator
        for k, device_id in enumerate(ids):
            attrs: dict[str, str] = {}
            if kind is DeviceKind.LAMP_POLE:
                cab = int(group[k])
                attrs = {"cabinet": group_names[cab], "feeder": f"{cfg.id_prefix}F-{cab // 2 + 1:03d}"}
            elif kind is DeviceKind.PIPE_NODE:
                assert network is not None
                attrs = {
                    "dma": group_names[int(group[k])],
                    "junction": network.junctions[int(props["junction"][k])],
                    "pipe": network.links[int(props["pipe"][k])],
                }
            elif kind is DeviceKind.DRAINAGE:
                attrs = {"depth_cm": f"{props['depth_cm'][k]:.0f}"}
            if concentrated:
                attrs["concentrator"] = f"{cfg.id_prefix}conc-{short}-{k // per_conc + 1:03d}"
            devices.append(
                Device(
                    device_id,
                    kind,
                    round(float(lat[k]), 6),
                    round(float(lon[k]), 6),
                    cfg.districts[int(district[k])],
                    attrs,
                )
            )
    return City(
        name=cfg.name,
        extent=cfg.extent,
        districts=list(cfg.districts),
        fleets=fleets,
        devices=devices,
        network=network,
        lat=(south + north) / 2,
        lon=(west + east) / 2,
    )
