import json
from datetime import UTC, datetime, timedelta

import pytest

from cityops.contracts import to_us
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
