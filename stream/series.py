"""Series ids: a dense integer per (device, metric), the index into detector state arrays."""

from __future__ import annotations


class SeriesIndex:
    def __init__(self) -> None:
        self._ids: dict[tuple[str, str], int] = {}
        self._keys: list[tuple[str, str]] = []

    def id(self, device_id: str, metric: str) -> int:
        key = (device_id, metric)
        sid = self._ids.get(key)
        if sid is None:
            sid = len(self._keys)
            self._ids[key] = sid
            self._keys.append(key)
        return sid

    def find(self, device_id: str, metric: str) -> int | None:
        """The series' id if it has one (``id`` gives one)."""
        return self._ids.get((device_id, metric))

    def key(self, sid: int) -> tuple[str, str]:
        return self._keys[sid]

    def __len__(self) -> int:
        return len(self._keys)
