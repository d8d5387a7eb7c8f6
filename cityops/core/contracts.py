"""Contracts that cross tiers: MQTT topic layout, device payloads, Kafka topics and values, and
the incident states and KPI milestones that the IOC writes and the dashboards read.

Every tier imports this module and nothing else from another tier.

Kafka values are MessagePack encoded with msgspec structs: it is the fastest encode/decode
pair measured for these messages (``python -m benchmarks.encoding`` prints the comparison
with orjson and the standard library) and it validates types while decoding, so a bad value
fails loudly at the consumer instead of travelling on. Times on the wire are integers
(microseconds since the Unix epoch, UTC): unambiguous, cheap to turn into NumPy arrays, and
convertible to aware datetimes with :func:`to_datetime`.
"""

from __future__ import annotations

import enum
import math
from datetime import UTC, datetime, timedelta
from typing import Annotated, Final

import msgspec

CONTRACT_VERSION: Final = 1


class DeviceKind(enum.StrEnum):
    LAMP_POLE = "lamp_pole"
    PIPE_NODE = "pipe_node"
    WATER_QUALITY = "water_quality"
    ENV_STATION = "env_station"
    DRAINAGE = "drainage"


class Metric(msgspec.Struct, frozen=True):
    """A metric a device kind may report, in its canonical unit, with its physically possible range.

    Values outside ``[low, high]`` cannot come from a working sensor and are dead-lettered;
    values that are possible but abnormal are the stream tier's business.
    """

    unit: str
    low: float
    high: float


# The metric catalogue: what each kind reports, in which unit. The gateway rejects others.
METRICS: Final[dict[DeviceKind, dict[str, Metric]]] = {
    DeviceKind.LAMP_POLE: {
        "lamp_on": Metric("bool", 0, 1),
        "dim_level": Metric("%", 0, 100),
        "power_w": Metric("W", 0, 2_000),
        "voltage_v": Metric("V", 0, 300),
        "current_a": Metric("A", 0, 20),
        "pm25_ugm3": Metric("ug/m3", 0, 2_000),
        "pm10_ugm3": Metric("ug/m3", 0, 3_000),
        "noise_dba": Metric("dB(A)", 0, 150),
        "temperature_c": Metric("degC", -60, 70),
        "humidity_pct": Metric("%", 0, 100),
        # Switches: the cabinet door of the pole, and the pole's tilt sensor (knocked over).
        "door_open": Metric("bool", 0, 1),
        "tilt": Metric("bool", 0, 1),
    },
    DeviceKind.PIPE_NODE: {
        "pressure_kpa": Metric("kPa", -100, 2_500),
        "flow_m3h": Metric("m3/h", -10_000, 10_000),
    },
    DeviceKind.WATER_QUALITY: {
        "chlorine_mgl": Metric("mg/L", 0, 20),
        "turbidity_ntu": Metric("NTU", 0, 4_000),
        "ph": Metric("pH", 0, 14),
        "conductivity_uscm": Metric("uS/cm", 0, 100_000),
        "temperature_c": Metric("degC", -5, 60),
    },
    DeviceKind.ENV_STATION: {
        "pm25_ugm3": Metric("ug/m3", 0, 2_000),
        "pm10_ugm3": Metric("ug/m3", 0, 3_000),
        "no2_ugm3": Metric("ug/m3", 0, 5_000),
        "o3_ugm3": Metric("ug/m3", 0, 2_000),
        "co_mgm3": Metric("mg/m3", 0, 500),
        "noise_dba": Metric("dB(A)", 0, 150),
    },
    DeviceKind.DRAINAGE: {
        # Water level above the manhole invert; the cover lifts when it tilts.
        "level_cm": Metric("cm", 0, 1_000),
        "cover_tilt": Metric("bool", 0, 1),
    },
}

# --- MQTT ------------------------------------------------------------------------------------

MQTT_ROOT: Final = "cityops/v1"
MQTT_READINGS_FILTER: Final = f"{MQTT_ROOT}/+/+/readings"


def mqtt_readings_topic(kind: DeviceKind | str, device_id: str) -> str:
    """Where a device publishes its readings: ``cityops/v1/<kind>/<device_id>/readings``."""
    return f"{MQTT_ROOT}/{kind}/{device_id}/readings"


# A concentrator (a street-lighting segment controller, a LoRaWAN network server) publishes
# for many devices on one connection: ``cityops/v1/concentrator/<concentrator_id>/readings``,
# SenML packs whose records name each device. The registry says which devices it may speak for.
CONCENTRATOR: Final = "concentrator"


def mqtt_concentrator_topic(concentrator_id: str) -> str:
    return f"{MQTT_ROOT}/{CONCENTRATOR}/{concentrator_id}/readings"


def parse_mqtt_readings_topic(topic: str) -> tuple[str, str]:
    """Return ``(kind, device_id)`` of a readings topic; ValueError if it is not one.

    For a concentrator's topic the pair is ``("concentrator", concentrator_id)``.
    """
    parts = topic.split("/")
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != MQTT_ROOT or parts[4] != "readings":
        raise ValueError(f"not a readings topic: {topic!r}")
    return parts[2], parts[3]


AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]
# Every field is bounded to what every later tier holds: a sequence number to PostgreSQL's
# bigint, a time in microseconds to 1970..2262 (int64 nanoseconds, the tightest consumer).
MAX_SEQ: Final = 2**63 - 1
MAX_TIME_US: Final = 2**63 // 1000
SeqNumber = Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)]
TimeUs = Annotated[int, msgspec.Meta(ge=0, le=MAX_TIME_US)]


class DevicePayload(msgspec.Struct, forbid_unknown_fields=True):
    """What a device publishes (JSON). ``ts`` is RFC 3339 with an offset; naive times are refused."""

    seq: SeqNumber
    ts: AwareDatetime
    metrics: dict[str, float]
    device_id: str | None = None


class PayloadFormat(enum.StrEnum):
    """What a device may publish. The gateway tells them apart by the first byte."""

    JSON = "json"  # DevicePayload: one reading per message
    SENML_JSON = "senml+json"  # RFC 8428 pack, JSON
    SENML_CBOR = "senml+cbor"  # RFC 8428 pack, CBOR


def sniff_format(payload: bytes) -> PayloadFormat | None:
    head = payload.lstrip(b" \t\r\n")[:1]
    if head == b"{":
        return PayloadFormat.JSON
    if head == b"[":
        return PayloadFormat.SENML_JSON
    # CBOR major type 4 (array), definite or indefinite length.
    if head and 0x80 <= head[0] <= 0x9F:
        return PayloadFormat.SENML_CBOR
    return None


# The cityops SenML profile. A device's records share the base name
# ``urn:dev:cityops:<device_id>:`` and the record name is the metric. Each (device, time)
# group carries the device's sequence number in the ``seq`` extension field on one of its
# records. Booleans (unit "bool" in the catalogue) travel as ``vb``. A unit is optional: none
# means the catalogue's unit; SenML units below are converted to it; others are refused.
SENML_BASE_PREFIX: Final = "urn:dev:cityops:"
SENML_SEQ: Final = "seq"
SENML_UNITS: Final[dict[str, tuple[str, float]]] = {
    # SenML unit (RFC 8428, RFC 8798) -> (catalogue unit, factor)
    "Pa": ("kPa", 1e-3),
    "hPa": ("kPa", 0.1),
    "m3/s": ("m3/h", 3600.0),
    "l/s": ("m3/h", 3.6),
    "Cel": ("degC", 1.0),
    "%RH": ("%", 1.0),
    "%": ("%", 1.0),
    "S/m": ("uS/cm", 1e4),
    "kg/m3": ("mg/L", 1e3),
    "W": ("W", 1.0),
    "V": ("V", 1.0),
    "A": ("A", 1.0),
    "ug/m3": ("ug/m3", 1.0),
    "pH": ("pH", 1.0),
    "cm": ("cm", 1.0),
    "m": ("cm", 100.0),
}


def senml_base_name(device_id: str) -> str:
    return f"{SENML_BASE_PREFIX}{device_id}:"


def senml_records(
    kind: DeviceKind,
    device_id: str | None,
    seq: int,
    ts_us: int,
    metrics: dict[str, float],
    units: dict[str, tuple[str, float]] | None = None,
) -> list[dict[str, object]]:
    """One reading as SenML records (JSON labels). ``device_id=None`` leaves the name to the topic.

    ``units`` maps a metric to (SenML unit, factor from the catalogue unit) to send it in.
    """
    catalogue = METRICS[kind]
    records: list[dict[str, object]] = []
    for name, value in metrics.items():
        rec: dict[str, object] = {"n": name}
        spec = catalogue.get(name)
        if spec is not None and spec.unit == "bool":
            rec["vb"] = value >= 0.5
        elif units and name in units:
            unit, factor = units[name]
            rec["u"] = unit
            rec["v"] = value * factor
        else:
            rec["v"] = value
        records.append(rec)
    head = records[0] if records else {}
    if device_id is not None:
        head["bn"] = senml_base_name(device_id)
    head["bt"] = ts_us / 1e6
    head[SENML_SEQ] = seq
    return records


# --- Kafka -----------------------------------------------------------------------------------


class Topics(msgspec.Struct, frozen=True):
    """Kafka topic names. A prefix keeps deployments (and tests) apart on one cluster."""

    prefix: str = "cityops."

    @property
    def readings(self) -> str:
        return f"{self.prefix}readings"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}readings.dlq"

    @property
    def alerts(self) -> str:
        return f"{self.prefix}alerts"

    @property
    def ground_truth(self) -> str:
        return f"{self.prefix}truth"

    def all(self) -> list[str]:
        return [self.readings, self.dead_letter, self.alerts, self.ground_truth]


class Reading(msgspec.Struct, frozen=True):
    """One validated device message: several metrics sampled at one instant.

    Kafka key: the device id (UTF-8), so a device's readings stay ordered in one partition.
    """

    device_id: str
    kind: str
    seq: SeqNumber
    ts_us: TimeUs
    metrics: dict[str, float]
    gateway_us: TimeUs

    def __post_init__(self) -> None:
        # Checked on decode too (msgspec turns this into a ValidationError), so a consumer never
        # takes in a reading that would fail it later: a foreign producer's, or an older gateway's.
        catalogue = METRICS.get(self.kind)  # type: ignore[call-overload]
        if catalogue is None:
            raise ValueError(f"unknown device kind {self.kind!r}")
        for name, value in self.metrics.items():
            spec = catalogue.get(name)
            if spec is None:
                raise ValueError(f"{name} is not a metric of {self.kind}")
            if not spec.low <= value <= spec.high:  # NaN fails too
                raise ValueError(f"{name} = {value} is outside [{spec.low}, {spec.high}]")


class TruthCategory(enum.StrEnum):
    INCIDENT = "incident"  # something happened in the city: operators must see it
    SENSOR_FAULT = "sensor_fault"  # the sensor lies: detectors should flag it, crews fix sensors
    PLATFORM = "platform"  # the message itself is bad: the gateway must dead-letter or absorb it
    # (for an alert: the pipeline upstream of the detectors stopped, not the devices)


class Alert(msgspec.Struct, frozen=True):
    """An anomaly the stream tier found in one series (device x metric).

    ``alert_id`` is derived from the series and the reading's time, so a replayed batch
    produces the same id and consumers deduplicate on it. Kafka key: the device id.
    """

    alert_id: str
    device_id: str
    kind: str
    metric: str
    ts_us: TimeUs
    value: float
    score: float
    detector: str
    baseline: float
    spread: float
    window: int
    seq: Annotated[int, msgspec.Meta(ge=-1, le=MAX_SEQ)]  # -1: no reading (a staleness alert)
    gateway_us: TimeUs
    emitted_us: TimeUs
    # Every detector that alone reached the threshold (``detector`` is the strongest), and a
    # sentence for the operator: what was seen, what was expected, over which window.
    detectors: list[str] = []
    explanation: str = ""
    # What the alert most likely is, as far as the stream tier can tell: a device that fell
    # silent is an ``incident`` (a power loss looks like that), one metric that stopped while
    # its device reports is a ``sensor_fault``, most of the feed at once is ``platform``.
    alert_class: TruthCategory = TruthCategory.INCIDENT

    @staticmethod
    def make_id(device_id: str, metric: str, ts_us: int, detector: str) -> str:
        return f"{device_id}/{metric}/{ts_us}/{detector}"


class DeadLetter(msgspec.Struct, frozen=True):
    """A message that could not be accepted, with the reason, the raw bytes and where it came from."""

    reason: str
    source: str
    payload: bytes
    received_us: int
    device_id: str | None = None


class GroundTruth(msgspec.Struct, frozen=True):
    """What the simulator injected, for scoring detection: which devices and metrics, when.

    ``end_us`` is exclusive. ``metrics`` lists the metrics the event changes (empty when it
    silences the devices, as a dropout does). Kafka key: the event id.
    """

    event_id: str
    kind: str
    category: TruthCategory
    device_ids: list[str]
    metrics: list[str]
    start_us: int
    end_us: int
    magnitude: float = 0.0
    note: str = ""


_reading_encoder = msgspec.msgpack.Encoder()
_reading_decoder = msgspec.msgpack.Decoder(Reading)
_alert_decoder = msgspec.msgpack.Decoder(Alert)
_dead_letter_decoder = msgspec.msgpack.Decoder(DeadLetter)


_truth_decoder = msgspec.msgpack.Decoder(GroundTruth)


class IncidentState(enum.StrEnum):
    """An incident's state in the ``incidents`` table, which the IOC writes and Grafana reads.
    Which state may follow which is the IOC's business (``ioc.transitions``)."""

    NEW = "new"
    ACKNOWLEDGED = "acknowledged"
    DISPATCHED = "dispatched"
    EN_ROUTE = "en_route"
    ON_SITE = "on_site"
    RESOLVED = "resolved"
    CLOSED = "closed"
    CANCELLED = "cancelled"


# Open: new to on site. Resolved, closed and cancelled are not (a resolved or closed one may be reopened).
OPEN_INCIDENT_STATES: Final = frozenset(IncidentState) - {
    IncidentState.RESOLVED,
    IncidentState.CLOSED,
    IncidentState.CANCELLED,
}

# The operations KPIs' milestones: each one's time is ``<column> - detected_at`` in
# ``incidents``; the IOC's KPIs and the Grafana dashboards compute them the same way.
KPI_MILESTONES: Final = {
    "detect": "opened_at",
    "acknowledge": "acknowledged_at",
    "dispatch": "dispatched_at",
    "arrive": "arrived_at",
    "resolve": "resolved_at",
}


def encode(message: Reading | Alert | DeadLetter | GroundTruth) -> bytes:
    return _reading_encoder.encode(message)


def decode_reading(data: bytes) -> Reading:
    return _reading_decoder.decode(data)


def decode_alert(data: bytes) -> Alert:
    return _alert_decoder.decode(data)


def decode_dead_letter(data: bytes) -> DeadLetter:
    return _dead_letter_decoder.decode(data)


def decode_ground_truth(data: bytes) -> GroundTruth:
    return _truth_decoder.decode(data)


# --- time ------------------------------------------------------------------------------------

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def now_us() -> int:
    return int(datetime.now(UTC).timestamp() * 1_000_000)


def to_us(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("naive datetime: a timezone is required")
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def to_datetime(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def is_finite(value: float) -> bool:
    return not (math.isnan(value) or math.isinf(value))
