"""What devices put on the wire: the cityops JSON object, or SenML (RFC 8428) in JSON or CBOR."""

from __future__ import annotations

from typing import Any

import msgspec

from cityops.core import senml
from cityops.core.contracts import DeviceKind, PayloadFormat, senml_records, to_datetime

# SenML devices report in registered SenML units where one exists: (unit, factor from the
# catalogue unit). The gateway converts back (cityops.core.contracts.SENML_UNITS).
DEVICE_UNITS: dict[str, tuple[str, float]] = {
    "pressure_kpa": ("Pa", 1000.0),
    "flow_m3h": ("m3/s", 1 / 3600.0),
    "temperature_c": ("Cel", 1.0),
    "humidity_pct": ("%RH", 1.0),
    "dim_level": ("%", 1.0),
    "power_w": ("W", 1.0),
    "voltage_v": ("V", 1.0),
    "current_a": ("A", 1.0),
    "pm25_ugm3": ("ug/m3", 1.0),
    "pm10_ugm3": ("ug/m3", 1.0),
    "no2_ugm3": ("ug/m3", 1.0),
    "o3_ugm3": ("ug/m3", 1.0),
    "ph": ("pH", 1.0),
    "level_cm": ("cm", 1.0),
}


class _JsonPayload(msgspec.Struct):
    seq: int
    ts: str
    metrics: dict[str, float]


_json = msgspec.json.Encoder()


def device_payload(fmt: PayloadFormat, kind: DeviceKind, seq: int, ts_us: int, metrics: dict[str, float]) -> bytes:
    """One reading as a device publishes it on its own topic."""
    if fmt is PayloadFormat.JSON:
        ts = to_datetime(ts_us).isoformat(timespec="microseconds")
        return _json.encode(_JsonPayload(seq, ts, metrics))
    records = senml_records(kind, None, seq, ts_us, metrics, DEVICE_UNITS)
    return senml.dumps_json(records) if fmt is PayloadFormat.SENML_JSON else senml.dumps_cbor(records)


def pack_payload(fmt: PayloadFormat, records: list[dict[str, Any]]) -> bytes:
    """A concentrator's pack: records of many devices, each group named by its base name."""
    return senml.dumps_json(records) if fmt is PayloadFormat.SENML_JSON else senml.dumps_cbor(records)
