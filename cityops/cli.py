"""The `cityops` command."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from cityops import registry
from cityops.registry import Device
from cityops.runner import serve
from cityops.settings import CommonSettings
from cityops.stack import Stack, StackSettings

app = typer.Typer(no_args_is_help=True, help="City operations backend.")
stack_app = typer.Typer(no_args_is_help=True, help="The local stack: Mosquitto, Kafka, PostgreSQL.")
app.add_typer(stack_app, name="stack")
console = Console(stderr=True)


@stack_app.command("up")
def stack_up() -> None:
    """Install (first time), configure and start Mosquitto, Kafka and PostgreSQL. Idempotent."""
    stack = Stack(StackSettings())
    started = time.monotonic()
    with console.status("starting the stack") as status:
        timings = stack.up(progress=lambda step: status.update(f"stack up: {step}"))
    for step, seconds in timings.items():
        console.print(f"  {step:<12} {seconds:6.1f} s")
    console.print(f"stack up: {time.monotonic() - started:.1f} s (state in {stack.settings.state_dir})")


@stack_app.command("down")
def stack_down() -> None:
    """Stop exactly the processes `stack up` started."""
    for name, stopped in Stack(StackSettings()).down().items():
        console.print(f"  {name:<10} {'stopped' if stopped else 'was not running'}")


@stack_app.command("status")
def stack_status() -> None:
    """Show what runs, where, and whether it answers."""
    table = Table("component", "pid", "address", "reachable")
    for c in Stack(StackSettings()).status():
        table.add_row(c.name, str(c.pid or "-"), c.address, "yes" if c.reachable else "no")
    Console().print(table)


def _logging(level: str, fmt: str) -> None:
    from cityops import log

    log.configure(level, fmt)


@app.command()
def gateway() -> None:
    """Run the MQTT -> Kafka gateway (settings: CITYOPS_GATEWAY_*)."""
    from gateway import Gateway, GatewaySettings

    settings = GatewaySettings()
    _logging(settings.log_level, settings.log_format)

    async def main() -> None:
        async with Gateway(settings) as service:
            await service.run()

    serve(main)


@app.command()
def stream() -> None:
    """Run the stream service: Kafka -> PostgreSQL, detectors -> alerts (settings: CITYOPS_STREAM_*)."""
    from stream import StreamService, StreamSettings

    settings = StreamSettings()
    _logging(settings.log_level, settings.log_format)

    async def main() -> None:
        async with StreamService(settings) as service:
            await service.run()

    serve(main)


@app.command()
def api() -> None:
    """Run the IOC API and WebSocket server (settings: CITYOPS_API_*)."""
    from ioc import ApiServer, IocSettings

    settings = IocSettings()
    _logging(settings.log_level, settings.log_format)

    async def main() -> None:
        async with ApiServer(settings) as server:
            await server.wait()

    serve(main)


@app.command()
def sim(
    per_kind: int | None = typer.Option(None, help="Devices of each kind (CITYOPS_SIM_PER_KIND)."),
    interval: float | None = typer.Option(None, help="Seconds between a device's readings."),
    duration: float | None = typer.Option(None, help="Seconds to run; 0 runs until Ctrl-C."),
    seed: int | None = typer.Option(None, help="Random seed; the same seed gives the same city."),
    provision_city: bool = typer.Option(
        True, "--provision/--no-provision", help="Register the city first, or use the registry as it is."
    ),
) -> None:
    """Run a simulated city: registers its devices, then publishes their readings over MQTT."""
    from firmware_sim import SimSettings, Simulator

    overrides: dict[str, Any] = {
        k: v
        for k, v in {"per_kind": per_kind, "interval_s": interval, "duration_s": duration, "seed": seed}.items()
        if v is not None
    }
    settings = SimSettings(**overrides)
    _logging(settings.log_level, settings.log_format)
    if provision_city:
        devices = _provision(settings)
    else:
        devices = registry.load(settings.state_dir / "devices.json")
        if not devices:
            raise typer.BadParameter(f"no devices registered in {settings.state_dir / 'devices.json'}")

    async def main() -> None:
        from rich.live import Live

        async with Simulator(settings, devices) as simulator:
            with Live(console=console, refresh_per_second=2, transient=False) as live:

                def tick(p: object) -> None:
                    live.update(
                        f"devices {len(devices)}  sent {simulator.published.sent}  "
                        f"acknowledged {simulator.published.acked}  "
                        f"spikes {len(simulator.published.spikes)}"
                    )

                await simulator.run(duration_s=settings.duration_s or None, on_tick=tick)

    serve(main)


@app.command()
def provision(
    per_kind: int | None = typer.Option(None, help="Devices of each kind (CITYOPS_SIM_PER_KIND)."),
    seed: int | None = typer.Option(None, help="Random seed; the same seed gives the same city."),
    broker_dir: Path | None = typer.Option(
        None,
        help="Write mosquitto.conf, passwd (plain, for mosquitto_passwd -U) and acl here for a broker "
        "container, instead of updating the local stack's broker.",
    ),
) -> None:
    """Register the simulated city: registry file, broker credentials and ACL, and the devices table."""
    from firmware_sim import SimSettings

    overrides: dict[str, Any] = {k: v for k, v in {"per_kind": per_kind, "seed": seed}.items() if v is not None}
    settings = SimSettings(**overrides)
    devices = _provision(settings, broker_dir=broker_dir)
    console.print(f"provisioned {len(devices)} devices (registry: {settings.state_dir / 'devices.json'})")


def _provision(settings: CommonSettings, *, broker_dir: Path | None = None) -> list[Device]:
    import asyncio

    import psycopg

    from cityops import schema
    from cityops.kafka import ensure_topics
    from cityops.stack.mosquitto import render_config, write_credentials
    from firmware_sim import SimSettings, small_city

    assert isinstance(settings, SimSettings)
    devices = small_city(settings.per_kind, seed=settings.seed, extent=settings.extent, prefix=settings.id_prefix)
    if broker_dir is None:
        Stack(StackSettings(install_packages=False)).register(devices)
    else:
        path = settings.state_dir / "devices.json"
        registry.save(path, registry.merge(registry.load(path), devices))
        write_credentials(
            broker_dir,
            registry.load(path),
            fleet_secret=settings.fleet_secret,
            gateway_user=settings.gateway_mqtt_user,
            gateway_password=settings.gateway_mqtt_password,
            hashed=False,
        )
        (broker_dir / "mosquitto.conf").write_text(
            render_config(
                host="0.0.0.0", port=1883, conf_dir="/mosquitto/config", data_dir="/mosquitto/data", user="mosquitto"
            )
        )

    async def db_and_topics() -> None:
        async with await psycopg.AsyncConnection.connect(settings.pg_dsn, autocommit=True) as conn:
            await schema.apply(conn, mode=settings.storage_mode)
            await schema.upsert_devices(conn, devices)
        await ensure_topics(settings.kafka_bootstrap, settings.topics.all())

    asyncio.run(db_and_topics())
    return devices


@app.command()
def run(
    per_kind: int = typer.Option(4, help="Devices of each kind in the simulated city."),
    interval: float = typer.Option(1.0, help="Seconds between a device's readings."),
) -> None:
    """Everything: the stack, the three services and a simulated city, until Ctrl-C."""
    from cityops.supervisor import run_city

    run_city(per_kind=per_kind, interval_s=interval, console=console)
