"""A service process says by its exit code whether restarting it can help, and the supervisor
of ``cityops run`` acts on it. Real gateway processes against the real stack."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from cityops.app.supervisor import MAX_RESTARTS, restart_delay
from cityops.core.errors import EXIT_FATAL, EXIT_RETRIABLE
from cityops.devstack import Stack
from tests.helpers import dependency_down, eventually, free_port


def _service(name: str, uid: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cityops", name],
        env={
            **os.environ,
            "CITYOPS_TOPIC_PREFIX": f"test.{uid}.",
            "CITYOPS_GATEWAY_MQTT_CLIENT_ID": f"gw-{uid}",
            "CITYOPS_GATEWAY_METRICS_PORT": "0",
            "CITYOPS_STREAM_GROUP_ID": f"s-{uid}",
            "CITYOPS_STREAM_METRICS_PORT": "-1",
            "CITYOPS_LOG_FORMAT": "json",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_refused_password_is_fatal(stack: Stack, uid: str) -> None:
    result = _service("gateway", uid, CITYOPS_GATEWAY_MQTT_PASSWORD="not-the-password")
    assert result.returncode == EXIT_FATAL, result.stderr
    assert '"retriable": false' in result.stderr and "BrokerRefused" in result.stderr
    assert restart_delay(result.returncode, 0) is None


async def test_an_absent_broker_is_waited_for_and_sigterm_still_stops_at_once(
    stack: Stack, uid: str, tmp_path: Path
) -> None:
    """Not an exit: the gateway waits for its broker (reporting it in /healthz) however long
    it is away, and a SIGTERM while it waits ends it cleanly within seconds."""
    port = free_port()
    proc = _spawn(
        uid, CITYOPS_GATEWAY_METRICS_PORT=str(port), CITYOPS_MQTT_PORT=str(free_port()), CITYOPS_STATE_DIR=str(tmp_path)
    )
    try:
        await eventually(lambda: _mqtt_down(port), timeout=60)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        await eventually(lambda: _true(proc.poll() is not None), timeout=10)
        assert proc.returncode == 0
    finally:
        proc.kill()
        proc.wait()


def _spawn(uid: str, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "cityops", "gateway"],
        env={
            **os.environ,
            "CITYOPS_TOPIC_PREFIX": f"test.{uid}.",
            "CITYOPS_GATEWAY_MQTT_CLIENT_ID": f"gw-{uid}",
            **env,
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _mqtt_down(port: int) -> bool:
    try:
        return await dependency_down(port, "mqtt")
    except httpx.TransportError:
        return False


async def _true(value: bool) -> bool:
    return value


def test_a_refused_database_password_and_invalid_settings_are_fatal(stack: Stack, uid: str) -> None:
    wrong = stack.settings.pg_dsn.replace("cityops:cityops@", "cityops:not-the-password@")
    assert wrong != stack.settings.pg_dsn
    result = _service("stream", uid, CITYOPS_PG_DSN=wrong)
    assert result.returncode == EXIT_FATAL, result.stderr
    assert "password authentication failed" in result.stderr
    invalid = _service("gateway", uid, CITYOPS_GATEWAY_MAX_IN_FLIGHT="many")
    assert invalid.returncode == EXIT_FATAL and "max_in_flight" in invalid.stderr, invalid.stderr


def test_the_supervisor_backs_off_and_gives_up_after_its_budget() -> None:
    assert [restart_delay(EXIT_RETRIABLE, n) for n in range(MAX_RESTARTS)] == [2.0**n for n in range(MAX_RESTARTS)]
    assert restart_delay(1, MAX_RESTARTS) is None
    assert restart_delay(EXIT_FATAL, 0) is None
