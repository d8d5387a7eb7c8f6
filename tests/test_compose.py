"""docker-compose.yml cannot be run here (no Docker engine); check what can be checked statically:
official images, ports matching the local stack, and settings that exist."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cityops.core import settings
from cityops.devstack import StackSettings
from firmware_sim import SimSettings
from gateway import GatewaySettings
from ioc import IocSettings
from stream import StreamSettings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_infrastructure_uses_official_images() -> None:
    images = {name: svc.get("image", "") for name, svc in SERVICES.items()}
    assert images["kafka"].startswith("apache/kafka:4.")
    assert images["mosquitto"].startswith("eclipse-mosquitto:2")
    assert images["postgres"].startswith("timescale/timescaledb")
    assert images["prometheus"].startswith("prom/prometheus")
    assert images["grafana"].startswith("grafana/grafana")


def test_published_ports_match_the_local_stack_and_bind_to_loopback() -> None:
    published = {port for svc in SERVICES.values() for port in svc.get("ports", [])}
    for host_port in (
        settings.MQTT_PORT,
        settings.KAFKA_PORT,
        settings.POSTGRES_PORT,
        settings.API_PORT,
        settings.GATEWAY_METRICS_PORT,
        settings.STREAM_METRICS_PORT,
    ):
        assert any(p.startswith(f"127.0.0.1:{host_port}:") for p in published), host_port
    assert all(p.startswith("127.0.0.1:") for p in published)


def test_every_cityops_variable_is_a_real_setting() -> None:
    known: set[str] = set()
    for cls in (GatewaySettings, StreamSettings, IocSettings, SimSettings, StackSettings):
        prefix = cls.model_config.get("env_prefix", "")
        for name, field in cls.model_fields.items():
            alias = field.validation_alias
            known.add(str(alias) if isinstance(alias, str) else f"{prefix}{name}".upper())
    env = {k for svc in SERVICES.values() for k in (svc.get("environment") or {}) if k.startswith("CITYOPS_")}
    assert env, "the services are configured through CITYOPS_* variables"
    assert env <= known, env - known


def test_services_run_cityops_commands_that_exist() -> None:
    from typer.main import get_command

    from cityops.app.cli import app

    commands = set(get_command(app).commands)  # type: ignore[attr-defined]
    for name in ("provision", "gateway", "stream", "api", "sim"):
        assert SERVICES[name]["command"][0] in commands
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {
        f"gateway:{settings.GATEWAY_METRICS_PORT}",
        f"stream:{settings.STREAM_METRICS_PORT}",
        f"api:{settings.API_PORT}",
    }


def test_grafana_starts_provisioned_with_the_generated_dashboards() -> None:
    """Grafana reads provisioning from /etc/grafana/provisioning; its dashboard provider must
    point at the folder compose mounts the generated dashboards into."""
    mounts = {}
    for volume in SERVICES["grafana"]["volumes"]:
        source, target, *_ = volume.split(":")
        assert (ROOT / source).resolve().is_dir(), source
        mounts[target] = (ROOT / source).resolve()
    provisioning = mounts["/etc/grafana/provisioning"]
    assert {p.name for p in (provisioning / "datasources").glob("*.yml")}
    (provider_file,) = (provisioning / "dashboards").glob("*.yml")
    (provider,) = yaml.safe_load(provider_file.read_text())["providers"]
    folder = mounts[provider["options"]["path"]]
    assert sorted(p.name for p in folder.glob("*.json")), f"no dashboards in {folder}"
    home = SERVICES["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (folder / Path(home).relative_to(provider["options"]["path"])).is_file(), home
    datasources = yaml.safe_load(next((provisioning / "datasources").glob("*.yml")).read_text())["datasources"]
    assert {d["url"] for d in datasources} == {"postgres:5432", "http://prometheus:9090"}
    (db,) = [d for d in datasources if d["url"] == "postgres:5432"]
    env = SERVICES["postgres"]["environment"]
    assert (db["user"], db["secureJsonData"]["password"], db["jsonData"]["database"]) == (
        env["POSTGRES_USER"],
        env["POSTGRES_PASSWORD"],
        env["POSTGRES_DB"],
    )
    assert {"postgres", "prometheus"} <= set(SERVICES["grafana"]["depends_on"])


def test_the_wall_reads_pipeline_health_from_the_compose_services(monkeypatch: pytest.MonkeyPatch) -> None:
    env = SERVICES["api"]["environment"]
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    urls = IocSettings().pipeline_urls
    assert urls == {
        "gateway": f"http://gateway:{settings.GATEWAY_METRICS_PORT}/metrics",
        "stream": f"http://stream:{settings.STREAM_METRICS_PORT}/metrics",
    }
    # The anchor's shared settings are still there (the merge key keeps them).
    assert env["CITYOPS_PG_DSN"].endswith("@postgres:5432/cityops")


def test_every_long_running_service_restarts_and_the_services_report_health() -> None:
    for name, service in SERVICES.items():
        expected = "no" if name == "provision" else "unless-stopped"
        assert service.get("restart") == expected, name
    for name, port in (("gateway", 9101), ("stream", 9102), ("api", 8080)):
        assert f"http://127.0.0.1:{port}/healthz" in " ".join(SERVICES[name]["healthcheck"]["test"]), name
