"""The `cityops` command."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, TypeVar

import typer
from pydantic import ValidationError
from pydantic_settings import BaseSettings
from rich.console import Console
from rich.table import Table

from cityops.app.runner import serve
from cityops.core import registry
from cityops.core.errors import EXIT_FATAL
from cityops.core.registry import Device
from cityops.core.settings import DatabaseSettings
from cityops.core.version import VERSION
from cityops.devstack import Stack, StackSettings

_S = TypeVar("_S", bound=BaseSettings)

app = typer.Typer(no_args_is_help=True, help="City operations backend.")
stack_app = typer.Typer(no_args_is_help=True, help="The local stack: Mosquitto, Kafka, PostgreSQL.")
app.add_typer(stack_app, name="stack")
console = Console(stderr=True)


def _version(show: bool) -> None:
    if show:
        print(f"cityops {VERSION}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """City operations backend."""


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


def _settings(cls: type[_S], **values: Any) -> _S:
    """A service's settings; invalid ones end the process with EXIT_FATAL (restarting cannot help)."""
    try:
        return cls(**values)
    except ValidationError as exc:
        console.print(f"[red]invalid settings for {cls.__name__}:[/red] {exc}")
        raise typer.Exit(EXIT_FATAL) from None


def _logging(level: str, fmt: str) -> None:
    from cityops.core import log

    log.configure(level, fmt)


@app.command()
def gateway() -> None:
    """Run the MQTT -> Kafka gateway (settings: CITYOPS_GATEWAY_*)."""
    from gateway import Gateway, GatewaySettings

    settings = _settings(GatewaySettings)
    _logging(settings.log_level, settings.log_format)

    async def main() -> None:
        async with Gateway(settings) as service:
            await service.run()

    serve(main)


@app.command()
def stream() -> None:
    """Run the stream service: Kafka -> PostgreSQL, detectors -> alerts (settings: CITYOPS_STREAM_*)."""
    from stream import StreamService, StreamSettings

    settings = _settings(StreamSettings)
    _logging(settings.log_level, settings.log_format)

    async def main() -> None:
        async with StreamService(settings) as service:
            await service.run()

    serve(main)


@app.command()
def api() -> None:
    """Run the IOC API and WebSocket server (settings: CITYOPS_API_*)."""
    from ioc import ApiServer, IocSettings

    settings = _settings(IocSettings)
    _logging(settings.log_level, settings.log_format)

    async def main() -> None:
        async with ApiServer(settings) as server:
            await server.wait()

    serve(main)


users_app = typer.Typer(no_args_is_help=True, help="IOC users (roles: viewer, operator, dispatcher, crew, admin).")
app.add_typer(users_app, name="users")


@users_app.command("add")
def users_add(
    username: str,
    role: str = typer.Option(..., help="viewer, operator, dispatcher, crew or admin"),
    crew: str | None = typer.Option(None, help="The crew a crew member belongs to."),
    replace: bool = typer.Option(False, help="Change an existing user's password and role."),
) -> None:
    """Add an IOC user; the password is asked for (or read from CITYOPS_USER_PASSWORD)."""
    import asyncio
    import os

    import psycopg

    from cityops.core import schema
    from ioc import IocSettings, db
    from ioc.auth import Role, add_user
    from ioc.errors import RequestError

    settings = IocSettings()
    password = os.environ.get("CITYOPS_USER_PASSWORD") or typer.prompt(
        "password", hide_input=True, confirmation_prompt=True
    )

    async def main() -> None:
        async with await psycopg.AsyncConnection.connect(settings.pg_dsn, autocommit=True) as conn:
            await schema.apply(conn, mode=settings.storage_mode)
            await db.apply(conn)
            await add_user(conn, username, password, Role(role), crew, replace=replace)

    try:
        asyncio.run(main())
    except (RequestError, ValueError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    console.print(f"user {username} ({role}) saved")


@app.command()
def sim(
    scenario: Path | None = typer.Option(
        None, help="Scenario file (TOML); default: the demo city (CITYOPS_SIM_SCENARIO)."
    ),
    devices: int | None = typer.Option(None, help="Devices in total, split as the scenario's counts are."),
    rate: float | None = typer.Option(None, help="Readings per second for the whole fleet."),
    duration: float | None = typer.Option(None, help="Seconds to run; 0 runs until Ctrl-C."),
    seed: int | None = typer.Option(None, help="Random seed; the same seed gives the same run."),
    mode: str | None = typer.Option(None, help="realistic (a session per device) or concentrator."),
    provision_city: bool = typer.Option(
        True, "--provision/--no-provision", help="Register the city first, or trust the registry as it is."
    ),
) -> None:
    """Run a simulated city: registers its devices, then publishes their readings over MQTT.

    Shows devices connected, readings sent and acknowledged per second, the offline buffer
    and incidents injected; at the end prints what was sent and acknowledged, for load tests
    to compare with what was stored.
    """

    from firmware_sim import SimSettings, Simulator, build_city, load, with_overrides
    from firmware_sim.errors import ScenarioError

    settings = _settings(SimSettings, **({"scenario": scenario} if scenario else {}))
    _logging(settings.log_level, settings.log_format)
    try:
        plan = with_overrides(
            load(settings.scenario), devices=devices, rate=rate, duration_s=duration, seed=seed, mode=mode
        )
    except ScenarioError as exc:
        raise typer.BadParameter(str(exc)) from None
    with console.status("building the city (water network, devices)"):
        city = build_city(plan)
    if provision_city:
        with console.status(f"registering {len(city.devices)} devices"):
            _provision(StackSettings(), city.devices, city.outlines())

    async def main() -> None:
        from firmware_sim.progress import Progress

        async with Simulator(settings, plan, city=city) as simulator:
            with Progress(simulator, console) as progress:
                stats = await simulator.run(on_tick=progress.update)
            progress.report(stats)

    serve(main)


@app.command()
def score(
    truth: Path | None = typer.Option(None, help="Ground truth (JSON lines); default: <state dir>/ground_truth.jsonl."),
    scenario: Path | None = typer.Option(None, help="The run's scenario (for its devices); default: the demo."),
    since: str = typer.Option("-1h", help='Start of the scored span: "-<n>[smhd]" or an RFC 3339 time.'),
    until: str = typer.Option("now", help='End of the scored span: "now" or an RFC 3339 time.'),
) -> None:
    """Compare a simulated run's ground truth with the alerts the operations centre stored.

    Prints recall, false alarms per 1,000 device-hours and the median detection delay.
    """
    import asyncio
    from datetime import UTC, datetime

    from cityops.core.contracts import to_us
    from firmware_sim import SimSettings, build_city, load
    from firmware_sim.scenario import resolve_start
    from firmware_sim.scoring import alerts_from_database
    from firmware_sim.scoring import score as score_run
    from firmware_sim.truth import read_file

    settings = SimSettings(scenario=scenario) if scenario else SimSettings()
    path = truth or settings.state_dir / "ground_truth.jsonl"
    if not path.exists():
        raise typer.BadParameter(f"no ground truth at {path}")
    now = datetime.now(UTC)
    span = (to_us(resolve_start(since, now)), to_us(resolve_start(until, now)))
    city = build_city(load(settings.scenario))
    intervals = {d: f.interval_s for f in city.fleets.values() for d in f.ids}
    alerts = asyncio.run(alerts_from_database(DatabaseSettings().pg_dsn, span))
    result = score_run(read_file(path), alerts, intervals_s=intervals, span_us=span)
    print("\n".join(result.lines()))


@app.command()
def provision(
    scenario: Path | None = typer.Option(None, help="Scenario file (TOML); default: the demo city."),
    devices: int | None = typer.Option(None, help="Devices in total, split as the scenario's counts are."),
    seed: int | None = typer.Option(None, help="Random seed; the same seed gives the same city."),
    mode: str | None = typer.Option(None, help="realistic (a session per device) or concentrator."),
    broker_dir: Path | None = typer.Option(
        None,
        help="Write mosquitto.conf, passwd (plain, for mosquitto_passwd -U) and acl here for a broker "
        "container, instead of updating the local stack's broker.",
    ),
) -> None:
    """Register the simulated city: registry file, broker credentials and ACL, and the devices table."""
    from firmware_sim import SimSettings, build_city, load, with_overrides

    settings = SimSettings(scenario=scenario) if scenario else SimSettings()
    plan = with_overrides(load(settings.scenario), devices=devices, seed=seed, mode=mode)
    city = build_city(plan)
    _provision(StackSettings(), city.devices, city.outlines(), broker_dir=broker_dir)
    console.print(f"provisioned {len(city.devices)} devices (registry: {settings.state_dir / 'devices.json'})")


def _provision(
    settings: StackSettings,
    devices: list[Device],
    outlines: dict[str, list[tuple[float, float]]],
    *,
    broker_dir: Path | None = None,
) -> None:
    import asyncio

    import psycopg

    from cityops.core import schema
    from cityops.core.kafka import ensure_topics
    from cityops.devstack.mosquitto import render_config, write_credentials

    if broker_dir is None:
        Stack(settings.model_copy(update={"install_packages": False})).register(devices)
    else:
        path = settings.state_dir / "devices.json"
        registry.save(path, registry.merge(registry.load(path), devices))
        write_credentials(
            broker_dir,
            registry.load(path),
            fleet_secret=settings.fleet_secret.get_secret_value(),
            gateway_user=settings.gateway_mqtt_user,
            gateway_password=settings.gateway_mqtt_password.get_secret_value(),
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
            await schema.upsert_districts(conn, outlines)
        await ensure_topics(settings.kafka_bootstrap, settings.topics.all())

    asyncio.run(db_and_topics())


@app.command()
def run(
    scenario: Path | None = typer.Option(None, help="Scenario file (TOML) for the simulated city; default: the demo."),
) -> None:
    """Everything: the stack, the three services and a simulated city, until Ctrl-C."""
    from cityops.app.supervisor import run_city

    run_city(scenario=scenario.resolve() if scenario else None, console=console)
