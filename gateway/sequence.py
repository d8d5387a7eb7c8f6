"""Per-device sequence numbers: what they say about the link from device to gateway.

Nothing is dropped on their account: a duplicate (an MQTT redelivery) is absorbed downstream by
the (device, metric, ts) key, and an out-of-order reading is still a valid reading. What they
tell operators is whether readings went missing before they reached us.
"""

from __future__ import annotations

import enum


class SeqEvent(enum.StrEnum):
    FIRST = "first"  # first reading from this device since the gateway started
    NEXT = "next"  # last + 1
    GAP = "gap"  # readings between the last one and this one never arrived (so far)
    DUPLICATE = "duplicate"  # the same number again: a redelivery
    OUT_OF_ORDER = "out_of_order"  # older than the last one: a late arrival
    RESET = "reset"  # back to 0: the device restarted its counter


class SequenceTracker:
    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def observe(self, device_id: str, seq: int) -> tuple[SeqEvent, int]:
        """Classify ``seq``; the int is how many readings are missing (GAP only, else 0)."""
        last = self._last.get(device_id)
        if last is None:
            self._last[device_id] = seq
            return SeqEvent.FIRST, 0
        if seq == last + 1:
            self._last[device_id] = seq
            return SeqEvent.NEXT, 0
        if seq > last + 1:
            self._last[device_id] = seq
            return SeqEvent.GAP, seq - last - 1
        if seq == last:
            return SeqEvent.DUPLICATE, 0
        if seq == 0:
            self._last[device_id] = 0
            return SeqEvent.RESET, 0
        return SeqEvent.OUT_OF_ORDER, 0
