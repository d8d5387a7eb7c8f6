"""Nothing a device sends stops the gateway: every message ends as readings or a dead letter
with a reason. The payloads that used to kill it, then 100,000 fuzzed ones, through the real
broker, gateway and Kafka."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import cbor2
import pytest

from cityops.core.contracts import Topics, decode_dead_letter, decode_reading, mqtt_readings_topic, now_us
from cityops.core.registry import Device
from cityops.devstack import Stack
from gateway.errors import PayloadError
from gateway.validation import validate
from tests.gateway.conftest import RunningGateway
from tests.gateway.fuzz import PayloadFuzzer
from tests.helpers import device_client, read_topic


def _reading(seq: int, **fields: object) -> bytes:
    body = {"seq": seq, "ts": datetime.now(UTC).isoformat(), "metrics": {"pressure_kpa": 400.0}, **fields}
    return json.dumps(body, allow_nan=True).encode()


POISON = {
    "arrays nested 30,000 deep": b"[" * 30_000 + b"]" * 30_000,
    "a SenML pack with a value nested 30,000 deep": b'[{"n":"pressure_kpa","v":1,"seq":1,"x":'
    + b"[" * 30_000
    + b"]" * 30_000
    + b"}]",
    "objects nested 9,000 deep": b'{"a":' * 9_000 + b"1" + b"}" * 9_000,
    "CBOR nested 60,000 deep": b"\x81" * 60_000 + b"\x00",
    "NaN literal": _reading(1).replace(b"400.0", b"NaN"),
    "Infinity literal": _reading(1).replace(b"400.0", b"Infinity"),
    "exponent 1e999": _reading(1).replace(b"400.0", b"1e999"),
    "seq 2^64": _reading(2**64),
    "seq 2^63": _reading(2**63),
    "SenML seq 2^64": json.dumps([{"n": "pressure_kpa", "v": 400.0, "seq": 2**64}]).encode(),
    "CBOR bignum value": cbor2.dumps([{0: "pressure_kpa", 2: 10**400, "seq": 1}]),
    "CBOR infinite time": cbor2.dumps([{0: "pressure_kpa", 2: 400.0, 6: float("inf"), "seq": 1}]),
    "SenML time past the year 9999": json.dumps([{"bt": 1e303, "n": "pressure_kpa", "v": 400.0, "seq": 1}]).encode(),
    "3,000 bad records": json.dumps([{"n": f"m{i}", "v": 1.0, "seq": 1} for i in range(3_000)]).encode(),
}


async def test_the_payloads_that_killed_the_gateway_are_dead_lettered(
    stack: Stack, topics: Topics, fleet: list[Device], running_gateway: RunningGateway
) -> None:
    pipe = next(d for d in fleet if d.kind == "pipe_node")
    topic = mqtt_readings_topic(pipe.kind, pipe.device_id)
    async with device_client(stack, pipe) as client:
        for payload in POISON.values():
            await client.publish(topic, payload, qos=1)
        await client.publish(topic, _reading(7), qos=1)  # and the city goes on

    bootstrap = stack.settings.kafka_bootstrap
    letters = [decode_dead_letter(v) for v in await read_topic(bootstrap, topics.dead_letter, expect=len(POISON))]
    assert len(letters) == len(POISON)
    assert [letter.payload for letter in letters] == list(POISON.values())  # the raw bytes, in order
    assert all(letter.reason and len(letter.reason) <= 4_000 for letter in letters)
    (reading,) = [decode_reading(v) for v in await read_topic(bootstrap, topics.readings, expect=1)]
    assert reading.seq == 7
    assert not running_gateway.task.done()


@pytest.mark.slow
async def test_100_000_fuzzed_payloads_end_as_readings_or_dead_letters(
    stack: Stack, topics: Topics, fleet: list[Device], running_gateway: RunningGateway
) -> None:
    pipe = next(d for d in fleet if d.kind == "pipe_node")
    topic = mqtt_readings_topic(pipe.kind, pipe.device_id)
    payloads = list(PayloadFuzzer(seed=20261207).payloads(100_000))
    # What the gateway must make of each, judged in-process first: no other exception.
    expected_readings = expected_letters = 0
    for payload in payloads:
        try:
            outcome = validate(topic, payload, now_us=now_us())
        except PayloadError:
            expected_letters += 1
        else:
            expected_readings += len(outcome.readings)
            expected_letters += bool(outcome.rejected)
    assert expected_readings > 1_000 and expected_letters > 50_000  # the fuzzer reaches both ends

    async with device_client(stack, pipe, max_inflight_messages=1_000) as client:
        for start in range(0, len(payloads), 500):
            await asyncio.gather(*(client.publish(topic, p, qos=1) for p in payloads[start : start + 500]))

    bootstrap = stack.settings.kafka_bootstrap
    letters = await read_topic(bootstrap, topics.dead_letter, expect=expected_letters, timeout=180)
    readings = await read_topic(bootstrap, topics.readings, expect=expected_readings, timeout=60)
    assert (len(readings), len(letters)) == (expected_readings, expected_letters)
    assert not running_gateway.task.done()
