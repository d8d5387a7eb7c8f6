"""SenML (RFC 8428) packs in JSON and CBOR: parsing, resolution to absolute records, encoding.

Only the representation lives here; what cityops devices put in a pack (names, units, the
``seq`` extension) is the device profile in :mod:`cityops.core.contracts`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import cbor2
import msgspec

# RFC 8428 section 6: JSON labels and their CBOR integer labels.
CBOR_LABELS: Final = {
    "bver": -1,
    "bn": -2,
    "bt": -3,
    "bu": -4,
    "bv": -5,
    "bs": -16,
    "n": 0,
    "u": 1,
    "v": 2,
    "vs": 3,
    "vb": 4,
    "s": 5,
    "t": 6,
    "ut": 7,
    "vd": 8,
}
_JSON_LABELS: Final = {number: name for name, number in CBOR_LABELS.items()}
_VALUE_FIELDS: Final = ("v", "vs", "vb", "vd")
# Times below 2**28 are relative to "now" (RFC 8428 section 4.5.3).
_RELATIVE_LIMIT: Final = 2**28

_json_encoder = msgspec.json.Encoder()


class SenmlError(ValueError):
    """The pack is not valid SenML."""


@dataclass(frozen=True)
class Record:
    """A resolved record: full name, absolute time (s since the epoch), one value, extensions."""

    name: str
    time: float
    unit: str | None = None
    value: float | bool | str | None = None
    sum: float | None = None
    extensions: dict[str, Any] = field(default_factory=dict)


# The times a datetime can hold, in seconds since the epoch.
_EARLIEST = -62_135_596_800.0
_LATEST = 253_402_300_799.0


def loads_json(data: bytes) -> list[dict[str, Any]]:
    try:
        pack = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise SenmlError(f"not JSON: {exc}") from None
    except RecursionError:  # msgspec's own bound on nesting (the interpreter's recursion limit)
        raise SenmlError("not JSON that can be read: nested too deep") from None
    return _check_pack(pack)


def loads_cbor(data: bytes) -> list[dict[str, Any]]:
    try:
        pack = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types for malformed input
        raise SenmlError(f"not CBOR: {exc}") from None
    records = _check_pack(pack)
    return [{_JSON_LABELS.get(k, k) if isinstance(k, int) else k: v for k, v in r.items()} for r in records]


def _check_pack(pack: object) -> list[dict[str, Any]]:
    if not isinstance(pack, list) or not pack:
        raise SenmlError("a SenML pack is a non-empty array of records")
    for record in pack:
        if not isinstance(record, dict):
            raise SenmlError("every SenML record is a map")
    return pack


def resolve(pack: Sequence[Mapping[str, Any]], *, now: float) -> list[Record]:
    """Apply base fields and relative times (RFC 8428 section 4.6).

    Unknown fields ending in ``_`` must be understood, so they are an error; other unknown
    fields are extensions, kept on the record that carries them.
    """
    base_name, base_time, base_unit, base_value, base_sum = "", 0.0, None, 0.0, 0.0
    out: list[Record] = []
    for i, rec in enumerate(pack):
        extensions: dict[str, Any] = {}
        for label, raw in rec.items():
            if not isinstance(label, str):
                raise SenmlError(f"record {i}: unknown label {label!r}")
            if label not in CBOR_LABELS:
                if label.endswith("_"):
                    raise SenmlError(f"record {i}: must-understand field {label!r} is not supported")
                extensions[label] = raw
        if "bver" in rec and (not isinstance(rec["bver"], int) or rec["bver"] > 10):
            raise SenmlError(f"record {i}: unsupported base version {rec['bver']!r}")
        if "bn" in rec:
            base_name = _string(rec["bn"], "bn", i)
        if "bt" in rec:
            base_time = _number(rec["bt"], "bt", i)
        if "bu" in rec:
            base_unit = _string(rec["bu"], "bu", i)
        if "bv" in rec:
            base_value = _number(rec["bv"], "bv", i)
        if "bs" in rec:
            base_sum = _number(rec["bs"], "bs", i)
        name = base_name + _string(rec.get("n", ""), "n", i)
        if not name:
            raise SenmlError(f"record {i}: no name")
        time = base_time + _number(rec.get("t", 0.0), "t", i)
        if time < _RELATIVE_LIMIT:
            time += now
        if not _EARLIEST <= time <= _LATEST:  # two finite halves can add up to infinity, or NaN
            raise SenmlError(f"record {i}: bt + t is not a time between the years 1 and 9999")
        unit = _string(rec["u"], "u", i) if "u" in rec else base_unit
        values = [label for label in _VALUE_FIELDS if label in rec]
        if len(values) > 1:
            raise SenmlError(f"record {i}: more than one value field ({', '.join(values)})")
        value: float | bool | str | None = None
        if "v" in rec:
            value = base_value + _number(rec["v"], "v", i)
        elif "vb" in rec:
            if not isinstance(rec["vb"], bool):
                raise SenmlError(f"record {i}: vb must be a boolean")
            value = rec["vb"]
        elif "vs" in rec or "vd" in rec:
            label = "vs" if "vs" in rec else "vd"
            value = _string(rec[label], label, i)
        total = base_sum + _number(rec["s"], "s", i) if "s" in rec else None
        if value is None and total is None:
            raise SenmlError(f"record {i} ({name}): no value and no sum")
        out.append(Record(name, time, unit, value, total, extensions))
    return out


def _string(raw: object, label: str, i: int) -> str:
    if not isinstance(raw, str):
        raise SenmlError(f"record {i}: {label} must be a string")
    return raw


def _number(raw: object, label: str, i: int) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise SenmlError(f"record {i}: {label} must be a finite number")
    try:
        number = float(raw)  # a CBOR bignum may not fit
    except OverflowError:
        raise SenmlError(f"record {i}: {label} must be a finite number") from None
    if not math.isfinite(number):
        raise SenmlError(f"record {i}: {label} must be a finite number")
    return number


def dumps_json(pack: Sequence[Mapping[str, Any]]) -> bytes:
    return _json_encoder.encode(pack)


def dumps_cbor(pack: Sequence[Mapping[str, Any]]) -> bytes:
    return cbor2.dumps([{CBOR_LABELS.get(k, k): v for k, v in rec.items()} for rec in pack])
