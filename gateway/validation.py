"""Validation and normalisation of device messages into :class:`~cityops.contracts.Reading`."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from cityops.contracts import (
    METRICS,
    DeviceKind,
    DevicePayload,
    Reading,
    is_finite,
    parse_mqtt_readings_topic,
    to_us,
)
from gateway.errors import PayloadError

_payload_decoder = msgspec.json.Decoder(DevicePayload)


@dataclass(frozen=True)
class Limits:
    max_payload_bytes: int = 64 * 1024
    # Devices with a wrong clock: a reading from the future would corrupt windows downstream.
    max_future_skew_us: int = 300 * 1_000_000
    # Older than the storage retention: it would be dropped on arrival (or, from a clock reset
    # to 1970, open a partition decades in the past).
    max_age_us: int = 90 * 86_400 * 1_000_000


@dataclass(frozen=True)
class Outcome:
    """The reading to forward (None if nothing in the message was valid) and what was rejected."""

    reading: Reading | None
    rejected: list[str]


def validate(topic: str, payload: bytes, *, now_us: int, limits: Limits = Limits()) -> Outcome:
    """Check one MQTT message. Valid metrics are kept even when others in the same message fail.

    Raises PayloadError when the message as a whole is unusable.
    """
    try:
        kind_name, device_id = parse_mqtt_readings_topic(topic)
    except ValueError as exc:
        raise PayloadError(str(exc)) from None
    try:
        kind = DeviceKind(kind_name)
    except ValueError:
        raise PayloadError(f"unknown device kind {kind_name!r} in topic") from None
    if len(payload) > limits.max_payload_bytes:
        raise PayloadError(f"payload of {len(payload)} bytes exceeds {limits.max_payload_bytes}")
    try:
        msg = _payload_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise PayloadError(f"invalid payload: {exc}") from None
    if msg.device_id is not None and msg.device_id != device_id:
        raise PayloadError(f"payload device_id {msg.device_id!r} does not match topic device {device_id!r}")
    ts_us = to_us(msg.ts)
    if ts_us - now_us > limits.max_future_skew_us:
        raise PayloadError(f"timestamp {msg.ts.isoformat()} is {(ts_us - now_us) / 1e6:.0f} s in the future")
    if now_us - ts_us > limits.max_age_us:
        raise PayloadError(
            f"timestamp {msg.ts.isoformat()} is older than the {limits.max_age_us / 86_400e6:.0f}-day retention"
        )
    if not msg.metrics:
        raise PayloadError("no metrics in payload")

    catalogue = METRICS[kind]
    kept: dict[str, float] = {}
    rejected: list[str] = []
    for name, value in msg.metrics.items():
        spec = catalogue.get(name)
        if spec is None:
            rejected.append(f"{name}: not a metric of {kind.value}")
        elif not is_finite(value):
            rejected.append(f"{name}: not a finite number")
        elif not spec.low <= value <= spec.high:
            rejected.append(f"{name}: {value} {spec.unit} outside the possible range [{spec.low}, {spec.high}]")
        else:
            kept[name] = float(value)
    reading = None
    if kept:
        reading = Reading(
            device_id=device_id, kind=kind.value, seq=msg.seq, ts_us=ts_us, metrics=kept, gateway_us=now_us
        )
    return Outcome(reading, rejected)
