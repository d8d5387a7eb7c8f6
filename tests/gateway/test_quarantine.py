"""A message that kills the gateway process (not an exception: a native crash) is quarantined
after ``crash_quarantine_after`` deaths, through the real broker, Kafka and gateway processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cityops.core import contracts
from cityops.core.contracts import Topics, mqtt_readings_topic
from cityops.core.registry import Device
from cityops.devstack import Stack
from gateway import Gateway, GatewaySettings
from gateway.quarantine import CrashGuard, digest
from tests.helpers import all_up, device_client, eventually, free_port, read_topic

# The gateway as `cityops gateway` runs it, with one fault injected: a payload carrying the
# marker aborts the process inside validation, as a crash in a native decoder would.
CRASHING_GATEWAY = """
import os
import gateway.service as service

real = service.validate

def validate(topic, payload, **kwargs):
    if b"KILL-THE-GATEWAY" in payload:
        os.abort()
    return real(topic, payload, **kwargs)

service.validate = validate
from cityops.app.cli import app
app(["gateway"])
"""


class GatewayProcess:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CRASHING_GATEWAY],
            env={**os.environ, **self.env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return self.proc

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
async def gateway_process(stack: Stack, topics: Topics, uid: str, tmp_path: Path) -> AsyncIterator[GatewayProcess]:
    port = free_port()
    client_id = f"gw-crash-{uid}"
    process = GatewayProcess(
        {
            "CITYOPS_TOPIC_PREFIX": topics.prefix,
            "CITYOPS_STATE_DIR": str(tmp_path),
            "CITYOPS_GATEWAY_MQTT_CLIENT_ID": client_id,
            "CITYOPS_GATEWAY_METRICS_PORT": str(port),
            "CITYOPS_GATEWAY_CRASH_QUARANTINE_AFTER": "2",
        }
    )
    process.env["port"] = str(port)
    try:
        yield process
    finally:
        process.stop()
        # End the persistent session, or the broker queues every later test's messages for it.
        cleanup = GatewaySettings(
            mqtt_client_id=client_id, mqtt_clean_session=True, metrics_port=-1, state_dir=tmp_path
        )
        async with Gateway(cleanup):
            pass


def _body(seq: int) -> bytes:
    return json.dumps({"seq": seq, "ts": datetime.now(UTC).isoformat(), "metrics": {"pm25_ugm3": 10.0}}).encode()


async def _exited(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is not None


@pytest.mark.fault
async def test_a_message_that_kills_the_gateway_twice_is_quarantined(
    stack: Stack, topics: Topics, fleet: list[Device], gateway_process: GatewayProcess
) -> None:
    env = next(d for d in fleet if d.kind == "env_station")
    topic = mqtt_readings_topic(env.kind, env.device_id)
    port = int(gateway_process.env["port"])
    poison = b'{"seq": 1, "KILL-THE-GATEWAY": true}'

    first = gateway_process.start()
    await eventually(lambda: all_up(port), timeout=60)
    async with device_client(stack, env) as client:
        await client.publish(topic, poison, qos=1)
    await eventually(lambda: _exited(first), timeout=30)
    assert first.returncode == -signal.SIGABRT

    # Restarted, as a supervisor does: the broker sends the message again and it kills again.
    second = gateway_process.start()
    await eventually(lambda: _exited(second), timeout=60)
    assert second.returncode == -signal.SIGABRT

    # Two deaths: the third process dead-letters it unprocessed, and ingest goes on.
    third = gateway_process.start()
    await eventually(lambda: all_up(port), timeout=60)
    async with device_client(stack, env) as client:
        await client.publish(topic, _body(2), qos=1)
    bootstrap = stack.settings.kafka_bootstrap
    letters = [contracts.decode_dead_letter(v) for v in await read_topic(bootstrap, topics.dead_letter, expect=1)]
    readings = [contracts.decode_reading(v) for v in await read_topic(bootstrap, topics.readings, expect=1)]
    assert [letter.payload for letter in letters] == [poison]
    assert letters[0].reason.startswith("quarantined: the gateway died 2 times")
    assert [r.seq for r in readings] == [2]
    assert third.poll() is None

    third.send_signal(signal.SIGTERM)  # and it stops cleanly, within seconds
    await eventually(lambda: _exited(third), timeout=15)
    assert third.returncode == 0


async def test_a_strike_is_counted_only_for_a_message_in_progress_at_death(tmp_path: Path) -> None:
    key = digest("cityops/v1/readings/env_station/e-1", b"{}")
    async with CrashGuard(tmp_path, after=2) as guard:
        guard.begin(key)
        guard.end(key)
        guard.begin(key)  # and the process "dies" here: nothing clears the marker
    async with CrashGuard(tmp_path, after=2) as guard:
        assert guard.strikes(key) == 1 and not guard.quarantined(key)
        guard.begin(key)
    async with CrashGuard(tmp_path, after=2) as guard:
        assert guard.quarantined(key)
        guard.end(key)  # dead-lettered: forgotten
    async with CrashGuard(tmp_path, after=2) as guard:
        assert guard.strikes(key) == 0
