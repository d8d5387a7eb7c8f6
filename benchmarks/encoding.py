"""Kafka value encodings for the cross-tier messages, side by side.

Compares msgspec MessagePack with typed structs (the project's choice), msgspec JSON with
typed structs, orjson with dicts, and the standard library's json with dicts, on a typical
Reading (a lamp pole's ten metrics) and an Alert. Decoding includes building the typed
object, since that is what a consumer needs.

    python -m benchmarks.encoding [--number N]
"""

from __future__ import annotations

import argparse
import json
import timeit
from collections.abc import Callable
from typing import Any

import msgspec
import orjson
from rich.progress import track

from cityops.core import contracts
from cityops.core.contracts import Alert, Reading

READING = Reading(
    device_id="lamp-0042",
    kind="lamp_pole",
    seq=123_456,
    ts_us=1_795_273_311_569_123,
    metrics={
        "lamp_on": 1.0,
        "dim_level": 80.0,
        "power_w": 118.25,
        "voltage_v": 229.8,
        "current_a": 0.514,
        "pm25_ugm3": 13.2,
        "pm10_ugm3": 21.7,
        "noise_dba": 57.9,
        "temperature_c": 11.4,
        "humidity_pct": 81.0,
    },
    gateway_us=1_795_273_311_571_004,
)
ALERT = Alert(
    alert_id="pipe-0003/pressure_kpa/1795273311569123/ewma",
    device_id="pipe-0003",
    kind="pipe_node",
    metric="pressure_kpa",
    ts_us=1_795_273_311_569_123,
    value=508.14,
    score=1.0,
    detector="ewma",
    baseline=428.03,
    spread=2.52,
    window=60,
    seq=45,
    gateway_us=1_795_273_311_571_004,
    emitted_us=1_795_273_311_590_000,
    detectors=["ewma", "robust", "roc"],
    explanation="pressure_kpa = 508.1 kPa, expected 428 +- 2.5 kPa by ewma over 60 readings; p < 1e-10.0",
)

Codec = tuple[Callable[[Any], bytes], Callable[[bytes], Any]]


def codecs(kind: type[msgspec.Struct]) -> dict[str, Codec]:
    mp_dec = msgspec.msgpack.Decoder(kind)
    js_enc, js_dec = msgspec.json.Encoder(), msgspec.json.Decoder(kind)
    return {
        "msgspec_msgpack": (contracts.encode, mp_dec.decode),
        "msgspec_json": (js_enc.encode, js_dec.decode),
        "orjson": (
            lambda m: orjson.dumps(msgspec.structs.asdict(m)),
            lambda b: kind(**orjson.loads(b)),
        ),
        "stdlib_json": (
            lambda m: json.dumps(msgspec.structs.asdict(m)).encode(),
            lambda b: kind(**json.loads(b)),
        ),
    }


def best_us(fn: Callable[[], object], number: int, repeat: int = 5) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20_000, help="calls per timing")
    args = parser.parse_args()
    figures: list[str] = []
    cases = [(name, msg) for name, msg in (("reading", READING), ("alert", ALERT))]
    jobs = [(label, msg, codec_name, codec) for label, msg in cases for codec_name, codec in codecs(type(msg)).items()]
    for label, msg, codec_name, (enc, dec) in track(jobs, description="timing encodings"):
        data = enc(msg)
        assert dec(data) == msg, f"{codec_name} does not round-trip"
        encode_us = best_us(lambda enc=enc, msg=msg: enc(msg), args.number)  # type: ignore[misc]
        decode_us = best_us(lambda dec=dec, data=data: dec(data), args.number)  # type: ignore[misc]
        figures.append(f"{label}_{codec_name}_encode: {encode_us:.3f} us")
        figures.append(f"{label}_{codec_name}_decode: {decode_us:.3f} us")
        figures.append(f"{label}_{codec_name}_size: {len(data)} bytes")
    print("\n".join(figures))


if __name__ == "__main__":
    main()
