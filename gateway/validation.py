"""Validation and normalisation of device messages into :class:`~cityops.core.contracts.Reading`.

Three payload formats are accepted (:class:`~cityops.core.contracts.PayloadFormat`): the cityops
JSON object (one reading), and SenML packs in JSON or CBOR (any number of readings, of one
device on a device topic, of many on a concentrator's topic). Whatever is valid in a message
is kept; what is not is listed in ``Outcome.rejected`` and goes to the dead-letter topic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from cityops.core import senml
from cityops.core.contracts import (
    CONCENTRATOR,
    MAX_SEQ,
    METRICS,
    SENML_BASE_PREFIX,
    SENML_SEQ,
    SENML_UNITS,
    DeviceKind,
    DevicePayload,
    PayloadFormat,
    Reading,
    is_finite,
    parse_mqtt_readings_topic,
    sniff_format,
    to_datetime,
    to_us,
)
from cityops.core.registry import Device
from gateway.errors import PayloadError

_payload_decoder = msgspec.json.Decoder(DevicePayload)

DeviceLookup = Callable[[str], Device | None]


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
    """The readings to forward (empty if nothing in the message was valid) and what was rejected."""

    readings: list[Reading]
    rejected: list[str]

    @property
    def reading(self) -> Reading | None:
        """The single reading of a one-reading message (the JSON format)."""
        return self.readings[0] if len(self.readings) == 1 else None


@dataclass
class _Candidate:
    device_id: str
    kind: DeviceKind
    ts_us: int
    seq: int | None = None
    values: dict[str, tuple[float, str | None]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def validate(
    topic: str,
    payload: bytes,
    *,
    now_us: int,
    limits: Limits = Limits(),
    devices: DeviceLookup | None = None,
) -> Outcome:
    """Check one MQTT message. Valid metrics are kept even when others in the same message fail.

    ``devices`` looks devices up in the registry; it is needed for concentrators' topics.
    Raises PayloadError when the message as a whole is unusable.
    """
    try:
        kind_name, source_id = parse_mqtt_readings_topic(topic)
    except ValueError as exc:
        raise PayloadError(str(exc)) from None
    concentrator = kind_name == CONCENTRATOR
    kind: DeviceKind | None = None
    if not concentrator:
        try:
            kind = DeviceKind(kind_name)
        except ValueError:
            raise PayloadError(f"unknown device kind {kind_name!r} in topic") from None
    if len(payload) > limits.max_payload_bytes:
        raise PayloadError(f"payload of {len(payload)} bytes exceeds {limits.max_payload_bytes}")

    fmt = sniff_format(payload)
    if fmt is None:
        raise PayloadError("invalid payload: neither a JSON object nor a SenML array (JSON or CBOR)")
    if fmt is PayloadFormat.JSON:
        if concentrator or kind is None:
            raise PayloadError("invalid payload: a concentrator publishes SenML packs")
        candidate = _from_json(payload, kind, source_id)
        problem = _time_problem(candidate.ts_us, now_us, limits)
        if problem:
            raise PayloadError(problem)
        return _finish([candidate], now_us)

    try:
        pack = senml.loads_json(payload) if fmt is PayloadFormat.SENML_JSON else senml.loads_cbor(payload)
        records = senml.resolve(pack, now=now_us / 1e6)
    except senml.SenmlError as exc:
        raise PayloadError(f"invalid SenML: {exc}") from None
    if concentrator:
        if devices is None:
            raise PayloadError("concentrator topics need the device registry")
        candidates, rejected = _group_concentrator(records, source_id, devices)
    else:
        assert kind is not None
        candidates, rejected = _group_device(records, kind, source_id)
    usable = []
    for c in candidates:
        problem = c.problems[0] if c.problems else _time_problem(c.ts_us, now_us, limits)
        if problem is None and c.seq is None:
            problem = f"no {SENML_SEQ!r} field"
        if problem:
            rejected.append(f"{c.device_id} at {c.ts_us / 1e6:.6f}: {problem}")
        else:
            usable.append(c)
    if not usable:
        raise PayloadError("; ".join(rejected) or "no readings in pack")
    outcome = _finish(usable, now_us)
    return Outcome(outcome.readings, rejected + outcome.rejected)


def _from_json(payload: bytes, kind: DeviceKind, device_id: str) -> _Candidate:
    try:
        msg = _payload_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise PayloadError(f"invalid payload: {exc}") from None
    except RecursionError:
        raise PayloadError("invalid payload: nested too deep") from None
    if msg.device_id is not None and msg.device_id != device_id:
        raise PayloadError(f"payload device_id {msg.device_id!r} does not match topic device {device_id!r}")
    if not msg.metrics:
        raise PayloadError("no metrics in payload")
    values: dict[str, tuple[float, str | None]] = {name: (value, None) for name, value in msg.metrics.items()}
    return _Candidate(device_id, kind, to_us(msg.ts), msg.seq, values)


def _split_name(name: str) -> tuple[str | None, str]:
    """``urn:dev:cityops:<device>:<metric>`` -> (device, metric); a bare name -> (None, name)."""
    if not name.startswith(SENML_BASE_PREFIX):
        return None, name
    device, _, metric = name[len(SENML_BASE_PREFIX) :].partition(":")
    return device, metric


def _group_device(records: list[senml.Record], kind: DeviceKind, device_id: str) -> tuple[list[_Candidate], list[str]]:
    groups: dict[int, _Candidate] = {}
    for rec in records:
        named, metric = _split_name(rec.name)
        if named is not None and named != device_id:
            raise PayloadError(f"record names device {named!r} but was published on {device_id!r}'s topic")
        ts = round(rec.time * 1e6)
        group = groups.get(ts)
        if group is None:
            group = groups[ts] = _Candidate(device_id, kind, ts)
        _add(group, metric, rec)
    return list(groups.values()), []


def _group_concentrator(
    records: list[senml.Record], concentrator_id: str, devices: DeviceLookup
) -> tuple[list[_Candidate], list[str]]:
    groups: dict[tuple[str, int], _Candidate] = {}
    refused: dict[str, str] = {}
    for rec in records:
        device_id, metric = _split_name(rec.name)
        if device_id is None:
            refused.setdefault(rec.name, f"record {rec.name!r} names no device ({SENML_BASE_PREFIX}<device>:)")
            continue
        if device_id in refused:
            continue
        device = devices(device_id)
        if device is None:
            refused[device_id] = f"{device_id}: not a registered device"
            continue
        if device.concentrator != concentrator_id:
            refused[device_id] = f"{device_id}: not behind concentrator {concentrator_id!r}"
            continue
        ts = round(rec.time * 1e6)
        group = groups.get((device_id, ts))
        if group is None:
            group = groups[(device_id, ts)] = _Candidate(device_id, device.kind, ts)
        _add(group, metric, rec)
    return list(groups.values()), list(refused.values())


def _add(group: _Candidate, metric: str, rec: senml.Record) -> None:
    if SENML_SEQ in rec.extensions:
        seq = rec.extensions[SENML_SEQ]
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ:
            group.problems.append(f"{SENML_SEQ!r} must be an integer in [0, 2^63 - 1], not {seq!r}")
        elif group.seq is not None and group.seq != seq:
            group.problems.append(f"two sequence numbers ({group.seq}, {seq}) for one reading")
        else:
            group.seq = seq
    value = rec.value
    if isinstance(value, bool):
        number = 1.0 if value else 0.0
    elif isinstance(value, float):
        number = value
    else:
        number = float("nan")
    if metric in group.values:
        group.problems.append(f"{metric} given twice for one time")
    # A non-numeric value is carried as NaN with a marker unit, and refused per metric below.
    group.values[metric] = (number, rec.unit if value is not None and not isinstance(value, str) else "<text>")


def _time_problem(ts_us: int, now_us: int, limits: Limits) -> str | None:
    if ts_us - now_us > limits.max_future_skew_us:
        return f"timestamp {_iso(ts_us)} is {(ts_us - now_us) / 1e6:.0f} s in the future"
    if now_us - ts_us > limits.max_age_us:
        return f"timestamp {_iso(ts_us)} is older than the {limits.max_age_us / 86_400e6:.0f}-day retention"
    return None


def _iso(ts_us: int) -> str:
    try:
        return to_datetime(ts_us).isoformat()
    except OverflowError:
        return f"{ts_us} us"


def _finish(candidates: list[_Candidate], now_us: int) -> Outcome:
    readings: list[Reading] = []
    rejected: list[str] = []
    for c in candidates:
        catalogue = METRICS[c.kind]
        kept: dict[str, float] = {}
        prefix = f"{c.device_id}: " if len(candidates) > 1 else ""
        for name, (value, unit) in c.values.items():
            spec = catalogue.get(name)
            if spec is None:
                rejected.append(f"{prefix}{name}: not a metric of {c.kind.value}")
                continue
            if unit == "<text>":
                rejected.append(f"{prefix}{name}: not a numeric or boolean value")
                continue
            if unit is not None and unit != spec.unit:
                conversion = SENML_UNITS.get(unit)
                if conversion is None or conversion[0] != spec.unit:
                    rejected.append(f"{prefix}{name}: unit {unit!r} cannot be converted to {spec.unit!r}")
                    continue
                value = value * conversion[1]
            if not is_finite(value):
                rejected.append(f"{prefix}{name}: not a finite number")
            elif not spec.low <= value <= spec.high:
                rejected.append(
                    f"{prefix}{name}: {value} {spec.unit} outside the possible range [{spec.low}, {spec.high}]"
                )
            else:
                kept[name] = float(value)
        if kept:
            assert c.seq is not None
            readings.append(
                Reading(
                    device_id=c.device_id, kind=c.kind.value, seq=c.seq, ts_us=c.ts_us, metrics=kept, gateway_us=now_us
                )
            )
    return Outcome(readings, rejected)
