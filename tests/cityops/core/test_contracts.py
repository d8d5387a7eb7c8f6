from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest

from cityops.core import contracts
from cityops.core.contracts import Alert, DeadLetter, Reading


def test_reading_round_trips_through_msgpack() -> None:
    r = Reading("lamp-0001", "lamp_pole", 7, 1_795_000_000_123_456, {"power_w": 120.5, "voltage_v": 231.0}, 1)
    assert contracts.decode_reading(contracts.encode(r)) == r


def test_alert_and_dead_letter_round_trip() -> None:
    a = Alert("x", "d", "pipe_node", "flow_m3h", 1, 2.0, 9.5, "ewma_z", 1.0, 0.1, 39, 3, 4, 5)
    assert contracts.decode_alert(contracts.encode(a)) == a
    d = DeadLetter("bad", "mqtt:t", b"\xff\x00", 42, "dev")
    assert contracts.decode_dead_letter(contracts.encode(d)) == d


def test_decoding_a_reading_with_a_wrong_type_fails_loudly() -> None:
    bad = msgspec.msgpack.encode(
        {"device_id": "d", "kind": "k", "seq": "seven", "ts_us": 1, "metrics": {}, "gateway_us": 1}
    )
    with pytest.raises(msgspec.ValidationError, match="seq"):
        contracts.decode_reading(bad)


def test_microsecond_times_are_exact_both_ways() -> None:
    moment = datetime(2026, 11, 21, 13, 45, 12, 987_654, tzinfo=timezone(timedelta(hours=2)))
    us = contracts.to_us(moment)
    assert contracts.to_datetime(us) == moment
    assert contracts.to_datetime(us).tzinfo is UTC
    with pytest.raises(ValueError, match="timezone"):
        contracts.to_us(datetime(2026, 1, 1))


def test_mqtt_topic_layout() -> None:
    topic = contracts.mqtt_readings_topic(contracts.DeviceKind.PIPE_NODE, "pipe-0001")
    assert topic == "cityops/v1/pipe_node/pipe-0001/readings"
    assert contracts.parse_mqtt_readings_topic(topic) == ("pipe_node", "pipe-0001")
    for bad in ("cityops/v1/pipe_node/pipe-0001", "other/v1/a/b/readings", "cityops/v1/a/b/c/readings"):
        with pytest.raises(ValueError):
            contracts.parse_mqtt_readings_topic(bad)


def test_topics_carry_their_prefix() -> None:
    t = contracts.Topics("x.")
    assert t.all() == ["x.readings", "x.readings.dlq", "x.alerts", "x.truth"]
