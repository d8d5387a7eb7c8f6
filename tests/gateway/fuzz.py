"""Payloads a device could send, valid and hostile, from a seeded generator (fast enough for
100,000 a run): the cityops JSON format, SenML packs in JSON and CBOR, their mutations
(truncated, bytes flipped, nested deep), and the numbers that break decoders (NaN, infinities,
bignums, 2^63 and 2^64)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import cbor2

NUMBERS: list[Any] = [
    0,
    -1,
    1.5,
    400.0,
    1e308,
    -1e308,
    2**63 - 1,
    2**63,
    2**64,
    10**400,
    float("nan"),
    float("inf"),
    float("-inf"),
    True,
    None,
    "12",
    [],
    {},
]
METRICS = [
    "pressure_kpa",
    "flow_m3h",
    "temperature_c",
    "pm25_ugm3",
    "",
    "x" * 300,
    "urn:dev:cityops:other:pressure_kpa",
]
UNITS = ["kPa", "Pa", "m3/s", "Cel", "%RH", "furlong", "", None]


class PayloadFuzzer:
    def __init__(self, seed: int, now: datetime | None = None) -> None:
        self.rng = random.Random(seed)
        self.now = now or datetime.now(UTC)

    def payloads(self, n: int) -> Iterator[bytes]:
        makers = [self.json_reading, self.senml_json, self.senml_cbor, self.mutated, self.nested, self.raw]
        weights = [3, 3, 3, 4, 1, 1]
        for _ in range(n):
            yield self.rng.choices(makers, weights)[0]()

    def _number(self) -> Any:
        r = self.rng.random()
        if r < 0.5:
            return round(self.rng.uniform(0, 800), 2)
        return self.rng.choice(NUMBERS)

    def _ts(self) -> Any:
        r = self.rng.random()
        if r < 0.6:
            return (self.now - timedelta(seconds=self.rng.uniform(0, 60))).isoformat()
        return self.rng.choice(
            [
                "yesterday",
                "2026-12-07T10:00:00",  # no offset
                "9999-12-31T23:59:59+00:00",
                "1970-01-01T00:00:00+00:00",
                (self.now + timedelta(days=3)).isoformat(),
                12345,
                None,
            ]
        )

    def json_reading(self) -> bytes:
        body: dict[str, Any] = {
            "seq": self.rng.choice([self.rng.randrange(10**6), -1, 2**63 - 1, 2**63, 2**64, "1", 1.5]),
            "ts": self._ts(),
            "metrics": {self.rng.choice(METRICS): self._number() for _ in range(self.rng.randrange(0, 4))},
        }
        if self.rng.random() < 0.1:
            body["device_id"] = self.rng.choice(["someone-else", None, 7])
        if self.rng.random() < 0.05:
            body["extra"] = 1
        text = json.dumps(body, allow_nan=True)  # NaN and Infinity literals, which JSON has not
        if self.rng.random() < 0.05:
            text = text.replace("400.0", "1e999")
        return text.encode()

    def _records(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        for _ in range(self.rng.randrange(1, 6)):
            rec: dict[str, Any] = {"n": self.rng.choice(METRICS)}
            value_field = self.rng.choice(["v", "v", "v", "vb", "vs", "s", None])
            if value_field is not None:
                rec[value_field] = self._number()
            for field, chance in (("t", 0.3), ("bt", 0.1), ("u", 0.3), ("seq", 0.8), ("bn", 0.05), ("bver", 0.02)):
                if self.rng.random() < chance:
                    rec[field] = self.rng.choice(UNITS) if field == "u" else self._number()
            if "seq" in rec and self.rng.random() < 0.7:
                rec["seq"] = self.rng.randrange(10**6)
            if self.rng.random() < 0.03:
                rec["must_"] = 1
            records.append(rec)
        return records

    def senml_json(self) -> bytes:
        return json.dumps(self._records(), allow_nan=True).encode()

    def senml_cbor(self) -> bytes:
        records = self._records()
        if self.rng.random() < 0.1:
            records[0]["v"] = cbor2.CBORTag(self.rng.choice([1, 2, 3, 24, 55799]), self._number())
        labels = {"n": 0, "u": 1, "v": 2, "vs": 3, "vb": 4, "s": 5, "t": 6, "bn": -2, "bt": -3, "bver": -1}
        if self.rng.random() < 0.7:
            records = [{labels.get(k, k): v for k, v in r.items()} for r in records]
        return bytes(cbor2.dumps(records))

    def mutated(self) -> bytes:
        base = self.rng.choice([self.json_reading, self.senml_json, self.senml_cbor])()
        data = bytearray(base)
        op = self.rng.randrange(4)
        if op == 0 and data:
            del data[self.rng.randrange(len(data)) :]
        elif op == 1:
            for _ in range(self.rng.randrange(1, 8)):
                if data:
                    data[self.rng.randrange(len(data))] = self.rng.randrange(256)
        elif op == 2:
            at = self.rng.randrange(len(data) + 1)
            data[at:at] = bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(1, 16)))
        else:
            data = data * self.rng.randrange(2, 5)
        return bytes(data)

    def nested(self) -> bytes:
        depth = self.rng.choice([100, 1_000, 9_000, 30_000])
        kind = self.rng.randrange(4)
        if kind == 0:
            return b"[" * depth + b"]" * depth
        if kind == 1:
            return b'{"a":' * depth + b"1" + b"}" * depth
        if kind == 2:
            return b'[{"n":"pressure_kpa","v":1,"seq":1,"x":' + b"[" * depth + b"]" * depth + b"}]"
        return b"\x81" * min(depth * 2, 60_000) + b"\x00"

    def raw(self) -> bytes:
        first = self.rng.choice([b"{", b"[", b"\x81", b"\x9f", b""])
        return first + bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(0, 64)))
