import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cityops.core.contracts import DeviceKind, to_us
from cityops.core.registry import Device
from gateway.errors import PayloadError
from gateway.validation import Limits, validate

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
TOPIC = "cityops/v1/pipe_node/pipe-0001/readings"


def payload(**overrides: object) -> bytes:
    body: dict[str, object] = {"seq": 3, "ts": NOW.isoformat(), "metrics": {"pressure_kpa": 410.5, "flow_m3h": 80}}
    body.update(overrides)
    return json.dumps(body).encode()


def check(data: bytes, topic: str = TOPIC, limits: Limits = Limits()):  # type: ignore[no-untyped-def]
    return validate(topic, data, now_us=to_us(NOW), limits=limits)


def test_a_valid_message_becomes_a_reading() -> None:
    out = check(payload())
    assert out.rejected == []
    assert out.reading is not None
    assert out.reading.device_id == "pipe-0001"
    assert out.reading.kind == "pipe_node"
    assert out.reading.seq == 3
    assert out.reading.ts_us == to_us(NOW)
    assert out.reading.metrics == {"pressure_kpa": 410.5, "flow_m3h": 80.0}


def test_invalid_metrics_are_rejected_and_valid_ones_kept() -> None:
    out = check(payload(metrics={"pressure_kpa": 410.0, "flow_m3h": 99_999.0, "chlorine_mgl": 0.5}))
    assert out.reading is not None and out.reading.metrics == {"pressure_kpa": 410.0}
    assert len(out.rejected) == 2
    assert any("flow_m3h" in r and "outside the possible range" in r for r in out.rejected)
    assert any("chlorine_mgl" in r and "not a metric of pipe_node" in r for r in out.rejected)


def test_message_with_only_invalid_metrics_forwards_nothing() -> None:
    out = check(payload(metrics={"ph": 7.0}))
    assert out.reading is None and out.rejected


@pytest.mark.parametrize(
    ("data", "topic", "reason"),
    [
        (b"{not json", TOPIC, "invalid payload"),
        (b"[1, 2]", TOPIC, "invalid SenML"),
        (b"\x00 not json", TOPIC, "neither a JSON object nor a SenML array"),
        (payload(seq=-1), TOPIC, "invalid payload"),
        (payload(seq="7"), TOPIC, "invalid payload"),
        (payload(ts="2026-11-21T12:00:00"), TOPIC, "invalid payload"),  # naive time
        (payload(extra=1), TOPIC, "invalid payload"),
        (payload(metrics={}), TOPIC, "no metrics"),
        (payload(device_id="pipe-0002"), TOPIC, "does not match topic"),
        (payload(ts=(NOW + timedelta(hours=1)).isoformat()), TOPIC, "in the future"),
        (payload(ts=(NOW - timedelta(days=91)).isoformat()), TOPIC, "older than the 90-day retention"),
        (payload(ts="0001-01-01T00:00:00+00:00"), TOPIC, "older than"),
        (payload(), "cityops/v1/toaster/t-1/readings", "unknown device kind"),
        (payload(), "cityops/v1/pipe_node/pipe-0001", "not a readings topic"),
    ],
)
def test_unusable_messages_raise_with_a_reason(data: bytes, topic: str, reason: str) -> None:
    with pytest.raises(PayloadError) as info:
        check(data, topic)
    assert reason in info.value.reason


def test_oversized_payload_is_refused_before_parsing() -> None:
    with pytest.raises(PayloadError, match="exceeds 50"):
        check(payload(), limits=Limits(max_payload_bytes=50))


# --- SenML -----------------------------------------------------------------------------------

SENML = [
    {"bn": "urn:dev:cityops:pipe-0001:", "bt": NOW.timestamp(), "seq": 7, "n": "pressure_kpa", "u": "Pa", "v": 410500},
    {"n": "flow_m3h", "u": "m3/s", "v": 0.025},
]


def _cbor(records: list[dict[str, object]]) -> bytes:
    from cityops.core import senml

    return senml.dumps_cbor(records)


@pytest.mark.parametrize("encode", [lambda r: json.dumps(r).encode(), _cbor], ids=["senml+json", "senml+cbor"])
def test_senml_packs_become_readings_in_catalogue_units(encode: Any) -> None:
    out = check(encode(SENML))
    assert out.rejected == []
    (reading,) = out.readings
    assert (reading.device_id, reading.seq, reading.ts_us) == ("pipe-0001", 7, to_us(NOW))
    assert reading.metrics == pytest.approx({"pressure_kpa": 410.5, "flow_m3h": 90.0})


def test_a_senml_pack_may_carry_several_readings_and_booleans() -> None:
    pack = [
        {"bt": NOW.timestamp(), "seq": 1, "n": "lamp_on", "vb": True},
        {"n": "power_w", "v": 60.5},
        {"t": 10, "seq": 2, "n": "lamp_on", "vb": False},  # t is relative to bt
        {"t": 10, "n": "door_open", "vb": True},
    ]
    out = check(json.dumps(pack).encode(), "cityops/v1/lamp_pole/lamp-0001/readings")
    assert [(r.seq, r.ts_us, r.metrics) for r in out.readings] == [
        (1, to_us(NOW), {"lamp_on": 1.0, "power_w": 60.5}),
        (2, to_us(NOW) + 10_000_000, {"lamp_on": 0.0, "door_open": 1.0}),
    ]


def test_senml_problems_are_rejected_per_reading_or_metric() -> None:
    pack = [
        {"bt": NOW.timestamp(), "seq": 1, "n": "pressure_kpa", "u": "bar", "v": 4.1},  # unit we cannot convert
        {"n": "flow_m3h", "v": 80.0},
        {"bt": NOW.timestamp() + 60, "n": "flow_m3h", "v": 81.0},  # no seq: refused
        {"bt": NOW.timestamp() + 120, "seq": 3, "n": "flow_m3h", "vs": "high"},  # text value
        {"n": "pressure_kpa", "v": 401.0},
    ]
    out = check(json.dumps(pack).encode())
    assert [(r.seq, r.metrics) for r in out.readings] == [(1, {"flow_m3h": 80.0}), (3, {"pressure_kpa": 401.0})]
    assert any("unit 'bar' cannot be converted to 'kPa'" in r for r in out.rejected)
    assert any("no 'seq' field" in r for r in out.rejected)
    assert any("flow_m3h: not a numeric or boolean value" in r for r in out.rejected)


@pytest.mark.parametrize(
    ("pack", "reason"),
    [
        (
            [{"bn": "urn:dev:cityops:pipe-0002:", "bt": NOW.timestamp(), "seq": 1, "n": "flow_m3h", "v": 1.0}],
            "names device 'pipe-0002'",
        ),
        ([{"bt": NOW.timestamp(), "seq": 1, "n": "flow_m3h", "v": 1.0, "crit_": 1}], "must-understand"),
        ([{"bt": NOW.timestamp(), "seq": 1, "n": "flow_m3h"}], "no value"),
        ([{"bt": NOW.timestamp(), "seq": 1, "n": "flow_m3h", "v": "1"}], "finite number"),
        ([{"bt": NOW.timestamp() + 3600, "seq": 1, "n": "flow_m3h", "v": 1.0}], "in the future"),
        ([], "non-empty array"),
    ],
)
def test_unusable_senml_raises_with_a_reason(pack: list[dict[str, object]], reason: str) -> None:
    with pytest.raises(PayloadError) as info:
        check(json.dumps(pack).encode())
    assert reason in info.value.reason


def test_a_concentrator_speaks_only_for_its_own_registered_devices() -> None:
    registry = {
        "lamp-0001": Device("lamp-0001", DeviceKind.LAMP_POLE, 52.3, 4.9, "Noord", {"concentrator": "conc-1"}),
        "env-0001": Device("env-0001", DeviceKind.ENV_STATION, 52.3, 4.9, "Noord", {"concentrator": "conc-2"}),
    }
    t = NOW.timestamp()
    pack = [
        {"bn": "urn:dev:cityops:lamp-0001:", "bt": t, "seq": 4, "n": "power_w", "v": 60.0},
        {"bn": "urn:dev:cityops:env-0001:", "bt": t, "seq": 9, "n": "no2_ugm3", "v": 20.0},
        {"bn": "urn:dev:cityops:ghost-1:", "bt": t, "seq": 1, "n": "no2_ugm3", "v": 20.0},
        {"bn": "", "n": "no2_ugm3", "v": 20.0},
    ]
    out = validate(
        "cityops/v1/concentrator/conc-1/readings",
        _cbor(pack),
        now_us=to_us(NOW),
        devices=registry.get,
    )
    assert [(r.device_id, r.kind, r.seq, r.metrics) for r in out.readings] == [
        ("lamp-0001", "lamp_pole", 4, {"power_w": 60.0})
    ]
    assert "env-0001: not behind concentrator 'conc-1'" in out.rejected
    assert "ghost-1: not a registered device" in out.rejected
    assert any("names no device" in r for r in out.rejected)
    with pytest.raises(PayloadError, match="publishes SenML packs"):
        validate("cityops/v1/concentrator/conc-1/readings", payload(), now_us=to_us(NOW), devices=registry.get)
