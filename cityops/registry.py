"""The device registry: which devices exist, what they are, where they stand, and their credentials.

The registry is a JSON file (``<state_dir>/devices.json`` by default). From it come the
broker's password and ACL files (each device may publish only under its own topic), the
``devices`` table the API serves, and the simulator's fleet.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import msgspec

from cityops.contracts import DeviceKind


class Device(msgspec.Struct, frozen=True):
    device_id: str
    kind: DeviceKind
    lat: float
    lon: float
    district: str
    # Network relations operators care about (lamp -> cabinet/feeder, pipe node -> DMA, ...).
    attrs: dict[str, str] = {}


def device_password(fleet_secret: str, device_id: str) -> str:
    """The device's MQTT password, derived so that no credentials file has to be shipped around."""
    return hmac.new(fleet_secret.encode(), device_id.encode(), hashlib.sha256).hexdigest()[:32]


def load(path: Path) -> list[Device]:
    if not path.exists():
        return []
    return msgspec.json.decode(path.read_bytes(), type=list[Device])


def save(path: Path, devices: list[Device]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(devices)))
    tmp.replace(path)


def merge(existing: list[Device], new: list[Device]) -> list[Device]:
    """Devices of ``new`` replace those of ``existing`` with the same id; order is kept."""
    by_id = {d.device_id: d for d in existing}
    by_id.update({d.device_id: d for d in new})
    return list(by_id.values())
