"""A small city: devices of every kind, with positions, districts and network relations."""

from __future__ import annotations

import random

from cityops.contracts import DeviceKind
from cityops.registry import Device

SHORT = {
    DeviceKind.LAMP_POLE: "lamp",
    DeviceKind.PIPE_NODE: "pipe",
    DeviceKind.WATER_QUALITY: "wq",
    DeviceKind.ENV_STATION: "env",
}


def small_city(
    per_kind: int,
    *,
    seed: int,
    extent: tuple[float, float, float, float],
    prefix: str = "",
    districts: int = 4,
) -> list[Device]:
    rng = random.Random(seed)
    south, west, north, east = extent
    devices = []
    for kind, short in SHORT.items():
        for i in range(1, per_kind + 1):
            lat = rng.uniform(south, north)
            lon = rng.uniform(west, east)
            # Districts are vertical bands of the extent.
            district = f"D{1 + min(districts - 1, int((lon - west) / (east - west) * districts))}"
            attrs: dict[str, str] = {}
            if kind is DeviceKind.LAMP_POLE:
                attrs = {"cabinet": f"CAB-{1 + (i - 1) // 10:02d}", "feeder": f"F-{1 + (i - 1) // 5:02d}"}
            elif kind is DeviceKind.PIPE_NODE:
                attrs = {"dma": f"DMA-{district}", "pipe": f"P-{i:04d}"}
            devices.append(Device(f"{prefix}{short}-{i:04d}", kind, round(lat, 6), round(lon, 6), district, attrs))
    return devices
