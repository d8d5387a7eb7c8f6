"""Each service's settings hold only the credentials it uses; the shared ones hold none."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from cityops.core.settings import CommonSettings
from cityops.devstack import StackSettings
from firmware_sim import SimSettings
from gateway import GatewaySettings
from ioc import IocSettings
from stream import StreamSettings

CREDENTIALS = {"fleet_secret", "mqtt_password", "gateway_mqtt_password", "pg_dsn", "jwt_secret"}


def _credentials(cls: type[CommonSettings]) -> set[str]:
    return {name for name in cls.model_fields if name in CREDENTIALS}


def test_each_service_carries_only_its_own_credentials() -> None:
    assert _credentials(CommonSettings) == set()
    assert not any(f.annotation is SecretStr for f in CommonSettings.model_fields.values())
    assert _credentials(GatewaySettings) == {"mqtt_password"}
    assert _credentials(StreamSettings) == {"pg_dsn"}
    assert _credentials(IocSettings) == {"pg_dsn", "jwt_secret"}
    assert _credentials(SimSettings) == {"fleet_secret"}
    # The stack writes the broker's password file and creates the database.
    assert _credentials(StackSettings) == {"fleet_secret", "gateway_mqtt_password", "pg_dsn"}


def test_one_variable_reaches_every_component_that_needs_the_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYOPS_FLEET_SECRET", "fleet-from-env")
    monkeypatch.setenv("CITYOPS_GATEWAY_MQTT_USER", "gw-from-env")
    monkeypatch.setenv("CITYOPS_GATEWAY_MQTT_PASSWORD", "gw-password-from-env")
    gateway, sim, stack = GatewaySettings(), SimSettings(), StackSettings()
    assert gateway.mqtt_user == stack.gateway_mqtt_user == "gw-from-env"
    assert gateway.mqtt_password.get_secret_value() == stack.gateway_mqtt_password.get_secret_value()
    assert sim.fleet_secret.get_secret_value() == stack.fleet_secret.get_secret_value() == "fleet-from-env"
    for shown in (repr(gateway), repr(sim), repr(stack)):
        assert "from-env" not in shown.replace("gw-from-env", "")
