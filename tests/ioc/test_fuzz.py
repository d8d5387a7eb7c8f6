"""Schemathesis fuzzes every operation of the API's OpenAPI schema as every role and as nobody:
whatever it sends, the API answers it (2xx-4xx), never with a server error."""

from __future__ import annotations

import asyncio
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from cityops.core.registry import Device
from ioc import ApiServer, maintenance
from ioc.auth import SYSTEM
from ioc.clock import ManualClock
from ioc.routes.crews import SKILLS
from ioc.transitions import State
from tests.ioc.conftest import USERS, alert, centre_of, token

pytestmark = [
    pytest.mark.slow,
    # Schemathesis draws from `random` inside its strategies; Hypothesis seeds it per example.
    pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies"),
]

# Examples per operation and identity (each its own seed, so roles sharing a permission add up to
# more cases, not the same ones): a few first; where all were refused (401, 403), that is all;
# otherwise the full budget, larger for writes, which run more of the code.
PROBE_EXAMPLES = 5
EXAMPLES = 12
WRITE_EXAMPLES = 30
# Checks that hold for every answer: no 5xx; a documented status comes with its documented
# content type and body schema (undocumented 4xx bodies are ours to shape).
CHECKS = [not_a_server_error, content_type_conformance, response_schema_conformance]


# Where the schema says less than the code and its descriptions, the fuzzer is told what clients
# send, so that its requests get past the first checks to the code behind them. A refined schema
# must list the same properties as the app's: a changed model needs its refinement reviewed.
_GEOJSON_POLYGON = {  # "a GeoJSON Polygon (lon, lat)": any coordinates, well formed or not
    "type": "object",
    "properties": {"type": {"enum": ["Polygon"]}, "coordinates": {}},
    "required": ["type", "coordinates"],
    "additionalProperties": False,
}


def _window(when: dict[str, Any], where: str, schema: dict[str, Any]) -> dict[str, Any]:
    required = [*when, where]
    return {
        "type": "object",
        "additionalProperties": False,
        "required": required,
        "properties": {**when, where: schema},
    }


def _refined(now: datetime) -> dict[str, tuple[set[str], dict[str, Any]]]:
    # Times anywhere in 0001..9999, or in this year and the next: a window must end after it
    # starts, and in the future. (Patterns, as an enum of date-times would be merged away.)
    def around(year: int) -> dict[str, Any]:
        near = {"type": "string", "pattern": rf"^{year}-0[1-9]-[12][0-8]T[01][0-9]:[0-5][0-9]:[0-5][0-9]Z$"}
        return {"anyOf": [near, {"type": "string", "format": "date-time"}]}

    when = {
        "starts_at": around(now.year),
        "ends_at": around(now.year + 1),
        "reason": {"type": "string", "minLength": 1, "maxLength": 2000},
    }
    return {
        # A window covers exactly one of a device, an asset group or an area.
        "WindowIn": (
            {"starts_at", "ends_at", "reason", "device_id", "group_key", "area"},
            {
                "oneOf": [
                    _window(when, "device_id", {"type": "string", "maxLength": 200}),
                    _window(when, "group_key", {"type": "string", "pattern": "^(cabinet|feeder|dma|district):"}),
                    _window(when, "area", _GEOJSON_POLYGON),
                ]
            },
        ),
    }


REFINED_PROPERTIES: dict[tuple[str, str], dict[str, Any]] = {
    ("CrewIn", "skills"): {"type": "array", "minItems": 1, "items": {"enum": SKILLS}},
}


def refine(raw: dict[str, Any], now: datetime) -> dict[str, Any]:
    schemas = raw["components"]["schemas"]
    for name, (properties, replacement) in _refined(now).items():
        assert set(schemas[name]["properties"]) == properties, f"{name} changed: review its refinement"
        schemas[name] = replacement
    for (name, prop), replacement in REFINED_PROPERTIES.items():
        assert prop in schemas[name]["properties"], f"{name}.{prop} is gone: review its refinement"
        schemas[name]["properties"][prop] = replacement
    return raw


@dataclass(frozen=True)
class Seeded:
    incidents: tuple[int, ...]
    window: int
    crew: str


@dataclass
class Finding:
    identity: str
    operation: str
    status: int
    request: str
    detail: str


@pytest.fixture
async def seeded(api: ApiServer, registered: list[Device], clock: ManualClock) -> Seeded:
    """Rows for path ids to hit: an open incident with a public warning, one on crew W1's phone,
    a lamp fault; a maintenance window."""
    c = centre_of(api)
    at = clock.now - timedelta(minutes=5)
    pipes = [d for d in registered if d.kind == "pipe_node"]
    lamp = next(d for d in registered if d.kind == "lamp_pole")
    await c.receive([alert(pipes[0], "pressure_kpa", at), alert(pipes[1], "pressure_kpa", at)])
    await c.receive([alert(lamp, "current_a", at)])
    async with c.events.read() as unit:
        ids = tuple(int(r["incident_id"]) for r in await unit.rows("SELECT incident_id FROM incidents ORDER BY 1"))
    assert len(ids) == 3, ids
    await c.desk.issue_cap(SYSTEM, ids[0])
    for step in (State.ACKNOWLEDGED, State.DISPATCHED):
        await c.desk.transition(SYSTEM, ids[1], step, crew_id="W1" if step is State.DISPATCHED else None)
    env = next(d for d in registered if d.kind == "env_station")
    async with c.events.unit() as unit:
        window = await maintenance.create(
            unit, SYSTEM, starts_at=at, ends_at=at + timedelta(days=1), reason="fuzz", device_id=env.device_id
        )
    return Seeded(ids, int(window["window_id"]), "W1")


def _real_ids(path: str, seeded: Seeded) -> list[dict[str, Any]]:
    """Path parameters naming seeded rows, one set per row, for an operation's path."""
    names = set(re.findall(r"{(\w+)}", path))
    if names == {"incident_id"}:
        return [{"incident_id": i} for i in seeded.incidents]
    if names == {"window_id"}:
        return [{"window_id": seeded.window}]
    if names == {"crew_id"}:
        return [{"crew_id": seeded.crew}]
    if names == {"site_id"}:
        return [{"site_id": "H1"}]  # a demo city's hospital
    assert not names, f"no seeded rows for the path parameters of {path}: add them"
    return []


def fuzz_operation(
    strategy: st.SearchStrategy[schemathesis.Case[Any]], examples: int, key: str, check: Callable[[Any], None]
) -> None:
    """Run ``check`` on ``examples`` cases, unshrunk, seeded by ``key``: the same cases every run,
    different ones for each identity and operation."""

    @seed(zlib.crc32(key.encode()))
    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        phases=[Phase.generate],  # no shrinking: each failing request is reported as sent
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(case=strategy)
    def run(case: schemathesis.Case[Any]) -> None:
        check(case)

    run()


@dataclass
class Fuzzer:
    """Blocking: runs in a worker thread, since the server runs on the test's event loop."""

    base_url: str
    seeded: Seeded
    findings: list[Finding] = field(default_factory=list)
    statuses: dict[tuple[str, str], list[int]] = field(default_factory=dict)

    def run(self, raw_schema: dict[str, Any], identities: dict[str, str | None]) -> None:
        schema = schemathesis.openapi.from_dict(raw_schema)
        results = list(schema.get_all_operations())
        operations = [result.ok() for result in results if isinstance(result, Ok)]
        assert len(operations) == len(results), [r.err() for r in results if not isinstance(r, Ok)]
        for identity, bearer in identities.items():
            with requests.Session() as session:
                for op in operations:
                    self.operation(op, identity, bearer, session)

    def operation(
        self,
        op: schemathesis.APIOperation[Any, Any, Any, Any],
        identity: str,
        bearer: str | None,
        session: requests.Session,
    ) -> None:
        strategy = st.one_of(
            op.as_strategy(schemathesis.GenerationMode.POSITIVE),
            op.as_strategy(schemathesis.GenerationMode.NEGATIVE),
            *(op.as_strategy(path_parameters=ids) for ids in _real_ids(op.path, self.seeded)),
        )
        seen = self.statuses.setdefault((identity, op.label), [])

        def check(case: schemathesis.Case[Any]) -> None:
            headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
            response = case.call(base_url=self.base_url, session=session, headers=headers, timeout=30)
            seen.append(response.status_code)
            try:
                case.validate_response(response, checks=CHECKS, headers=headers)
            except BaseExceptionGroup as failed:
                curl = case.as_curl_command(headers=headers)  # the token shows as [Filtered]
                what = str(failed).split("Reproduce with:")[0].strip()
                self.findings.append(Finding(identity, op.label, response.status_code, curl, what))

        key = f"{identity} {op.label}"
        fuzz_operation(strategy, PROBE_EXAMPLES, f"{key} probe", check)
        if set(seen) <= {401, 403}:
            return  # refused whatever was sent: this identity may not use it
        fuzz_operation(strategy, WRITE_EXAMPLES if op.method.upper() in ("POST", "PUT") else EXAMPLES, key, check)


async def test_no_request_makes_the_api_fail(api: ApiServer, seeded: Seeded) -> None:
    async with httpx.AsyncClient(base_url=api.url) as http:
        raw = refine((await http.get("/openapi.json")).json(), centre_of(api).clock())
    identities: dict[str, str | None] = {"anonymous": None}
    for role in USERS:
        identities[role] = await token(api, role)
    fuzzer = Fuzzer(api.url, seeded)
    await asyncio.to_thread(fuzzer.run, raw, identities)

    # The fuzzing reached the handlers: every operation was tried, each user got past the token
    # check everywhere (a lost token would make every answer a harmless 401) and was served somewhere.
    assert {op for _, op in fuzzer.statuses} >= {f"{m} {p}" for m, p in _operations(raw)}
    for role in USERS:
        mine = {op: codes for (who, op), codes in fuzzer.statuses.items() if who == role}
        assert not [op for op, codes in mine.items() if 401 in codes and op != "POST /token"], role
        assert sum(1 for codes in mine.values() if any(200 <= c < 300 for c in codes)) >= 3, (role, mine)

    first: dict[tuple[str, int], Finding] = {}  # the first request that showed each failure
    for f in fuzzer.findings:
        first.setdefault((f.operation, f.status), f)
    if first:
        report = "\n\n".join(
            f"{f.operation} as {f.identity} -> {f.status}\n{f.detail}\n{f.request}" for f in first.values()
        )
        pytest.fail(f"{len(fuzzer.findings)} failing requests; the first of each kind:\n\n{report}", pytrace=False)


def _operations(raw: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in raw["paths"].items() for method in item}
