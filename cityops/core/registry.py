"""The device registry: which devices exist, what they are, where they stand, and their credentials.

The registry is a JSON file (``<state_dir>/devices.json`` by default). From it come the
broker's password and ACL files (each device may publish only under its own topic), the
``devices`` table the API serves, and the simulator's fleet.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from cityops.core.contracts import DeviceKind


class Device(msgspec.Struct, frozen=True):
    device_id: str
    kind: DeviceKind
    lat: float
    lon: float
    district: str
    # Network relations operators care about (lamp -> cabinet/feeder, pipe node -> DMA, ...).
    # ``concentrator``: the device has no MQTT account of its own; that concentrator speaks for it.
    attrs: dict[str, str] = {}

    @property
    def concentrator(self) -> str | None:
        return self.attrs.get("concentrator")


def concentrators(devices: list[Device]) -> list[str]:
    return sorted({d.concentrator for d in devices if d.concentrator is not None})


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


class RegistryFile:
    """The registry as a service reads it: looked up by id, re-read when the file changes.

    The file's modification time is checked at most every ``check_s`` seconds, so a device
    registered while the service runs is known within that delay.
    """

    def __init__(self, path: Path, *, check_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._check_s = check_s
        self._clock = clock
        self._checked = -float("inf")
        self._mtime: float | None = None
        self._devices: dict[str, Device] = {}

    def get(self, device_id: str) -> Device | None:
        now = self._clock()
        if now - self._checked >= self._check_s:
            self._checked = now
            try:
                mtime: float | None = self.path.stat().st_mtime
            except FileNotFoundError:
                mtime = None
            if mtime != self._mtime:
                self._mtime = mtime
                self._devices = {d.device_id: d for d in load(self.path)}
        return self._devices.get(device_id)
