from __future__ import annotations

import enum
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from cityops.core.settings import API_PORT, GATEWAY_METRICS_PORT, STREAM_METRICS_PORT, DatabaseSettings


class Environment(enum.StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


DEMO_FILE = Path(__file__).with_name("demo.toml")


class IocSettings(DatabaseSettings):
    """IOC API settings: ``CITYOPS_API_<NAME>`` (shared ones: ``CITYOPS_<NAME>``)."""

    model_config = SettingsConfigDict(env_prefix="CITYOPS_API_")

    host: str = "127.0.0.1"
    port: int = API_PORT
    group_id: str = "cityops-ioc"
    client_id: str = "cityops-ioc-1"
    pool_min: int = 1
    pool_max: int = 10
    # PostgreSQL's JIT for the IOC's queries. Off: PostGIS rates its functions as costly, so the
    # JIT would compile the small queries of every incident change (benchmarks.ioc: 3x slower).
    pg_jit: bool = False
    # Events a WebSocket client may fall behind by before it is told to resync and dropped;
    # a slow wall screen must not hold up the others.
    ws_queue_size: int = 1_000
    max_page: int = 10_000

    # Reliability. Outages of PostgreSQL or Kafka are ridden out: the centre reports the
    # dependency down (/healthz, cityops_dependency_up, the wall), probes it with backoff up to
    # ``backoff_max_s`` (so it flows again within seconds of its return) and carries on.
    backoff_max_s: float = 2.0
    probe_timeout_s: float = 3.0
    # How often Kafka is asked for its metadata while the alert feed waits for alerts: the
    # consumer itself reconnects silently, so without asking an outage would go unreported.
    kafka_probe_s: float = 5.0
    # A request (or a loop) waits this long for a database connection before it is refused
    # (503: database unreachable).
    pool_timeout_s: float = 10.0
    # /healthz's own database check: bounded, so it answers 503 instead of hanging.
    health_check_s: float = 2.0
    # WebSocket clients that went away without a close: keepalive pings find a silent peer
    # within ``ws_ping_s + ws_ping_timeout_s``, and a send that cannot go out within
    # ``ws_send_timeout_s`` (the peer stopped reading) drops the client.
    ws_ping_s: float = 10.0
    ws_ping_timeout_s: float = 10.0
    ws_send_timeout_s: float = 10.0
    # SIGTERM: connections and requests still open after this many seconds are cancelled.
    shutdown_grace_s: int = 3
    # Closing a client whose peer is gone (Kafka's group leave, the pool) takes at most this long.
    close_timeout_s: float = 3.0

    # Outside development there are no usable secret defaults: the service refuses to start
    # without CITYOPS_API_JWT_SECRET, and no demo accounts are created.
    environment: Environment = Environment.DEVELOPMENT
    jwt_secret: SecretStr | None = None
    token_ttl_s: int = 8 * 3600
    # Development only: users, crews and critical sites of the simulated city (passwords = names).
    demo_file: Path | None = DEMO_FILE

    # Correlation: an alert joins an open incident of its category when it shares the asset group
    # (cabinet, feeder, district metered area, district) or lies within ``correlation_radius_m`` of
    # one of its assets, and the incident saw an alert within ``correlation_window_s``.
    correlation_radius_m: float = 300.0
    correlation_window_s: float = 1800.0
    # Lamps of one cabinet alerting together become one "cabinet power loss" incident.
    cabinet_outage_lamps: int = 2

    # Escalation, per severity 1..4: seconds to acknowledge and to arrive on site.
    ack_s: tuple[float, float, float, float] = (3600.0, 1800.0, 900.0, 300.0)
    arrive_s: tuple[float, float, float, float] = (14400.0, 7200.0, 3600.0, 1800.0)
    tick_s: float = 1.0

    # Recovery: a resolve is confirmed when every affected series has at least
    # ``recovery_min_readings`` readings in the last ``recovery_s`` and all lie within its normal
    # envelope (see Desk.recovered), widened by ``recovery_margin`` of its width.
    recovery_s: float = 120.0
    recovery_min_readings: int = 3
    recovery_margin: float = 0.1
    recovery_reference_s: float = 86400.0
    # How often the timers look for recovered incidents (each look reads their series).
    recovery_check_s: float = 10.0
    # An incident nobody acknowledged whose sensors recovered resolves by itself.
    self_clear: bool = True

    # Dispatch: ranking = distance_km + workload_km x active jobs; priority = severity x impact,
    # impact = affected assets + the weights of critical sites within ``critical_radius_m``.
    workload_km: float = 2.0
    critical_radius_m: float = 1000.0
    city_timezone: str = "Europe/Amsterdam"

    # Public warnings (CAP 1.2): who sends them, and whether they are real ("Actual") or practice
    # ("Exercise"); development sends "Exercise" unless told otherwise.
    cap_sender: str = "ioc.cityops.example"
    cap_status: str | None = None
    public_url: str | None = None

    # Live-event history kept for WebSocket resume.
    events_keep_s: float = 86400.0

    # The city's state on the wall: every ``status_s`` the device states, vital signs and the
    # pipeline's health are checked, and an unnumbered ``pulse`` event carries the devices whose
    # state changed with them (see ioc/situation.py and ioc/routes/live.py).
    status_s: float = 10.0
    alerting_s: float = 900.0
    offline_after_s: float = 300.0
    rate_window_min: int = 5
    # The services' Prometheus endpoints, read for the pipeline's health (lag, latency).
    pipeline_urls: dict[str, str] = Field(
        default_factory=lambda: {
            "gateway": f"http://127.0.0.1:{GATEWAY_METRICS_PORT}/metrics",
            "stream": f"http://127.0.0.1:{STREAM_METRICS_PORT}/metrics",
        }
    )
    # Map tiles for deployments that have them, e.g. "https://tile.example.org/{z}/{x}/{y}.png".
    # Empty (the default): the map draws the district outlines only, and needs no internet.
    map_tile_url: str = ""
    map_attribution: str = ""

    @model_validator(mode="after")
    def _no_default_secrets(self) -> IocSettings:
        if self.environment is Environment.PRODUCTION and self.jwt_secret is None:
            raise ValueError("CITYOPS_API_JWT_SECRET must be set when CITYOPS_API_ENVIRONMENT=production")
        if self.jwt_secret is not None and len(self.jwt_secret.get_secret_value()) < 32:
            raise ValueError("CITYOPS_API_JWT_SECRET must be at least 32 characters")
        if len(self.ack_s) != 4 or len(self.arrive_s) != 4:
            raise ValueError("ack_s and arrive_s need one value per severity 1..4")
        return self
