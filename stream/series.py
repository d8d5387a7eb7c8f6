"""Series ids: a dense integer per (device, metric), the index into detector state arrays;
and a dense integer per device, so silence can be judged per device."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


class SeriesIndex:
    def __init__(self) -> None:
        self._ids: dict[tuple[str, str], int] = {}
        self._keys: list[tuple[str, str]] = []
        self._devices: dict[str, int] = {}
        self._series_of: list[list[int]] = []  # per device: its series ids
        self._device_of = np.zeros(0, np.int64)  # per series: its device (grown in steps)

    def id(self, device_id: str, metric: str) -> int:
        key = (device_id, metric)
        sid = self._ids.get(key)
        if sid is None:
            sid = len(self._keys)
            self._ids[key] = sid
            self._keys.append(key)
            dev = self._devices.setdefault(device_id, len(self._devices))
            if dev == len(self._series_of):
                self._series_of.append([])
            self._series_of[dev].append(sid)
            if sid == self._device_of.shape[0]:
                self._device_of = np.concatenate([self._device_of, np.zeros(max(sid, 1024), np.int64)])
            self._device_of[sid] = dev
        return sid

    def find(self, device_id: str, metric: str) -> int | None:
        """The series' id if it has one (``id`` gives one)."""
        return self._ids.get((device_id, metric))

    def key(self, sid: int) -> tuple[str, str]:
        return self._keys[sid]

    def device(self, sid: int) -> int:
        """The dense id of the series' device."""
        return int(self._device_of[sid])

    def siblings(self, sid: int) -> list[int]:
        """Every series of the series' device (itself included)."""
        return self._series_of[int(self._device_of[sid])]

    def devices(self) -> npt.NDArray[np.int64]:
        """Per series id: its device's dense id."""
        return self._device_of[: len(self._keys)]

    def __len__(self) -> int:
        return len(self._keys)
