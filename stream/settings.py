from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from cityops.core.settings import STREAM_METRICS_PORT, DatabaseSettings
from stream.profiles import DEFAULT_FILE


class StreamSettings(DatabaseSettings):
    """Stream settings: ``CITYOPS_STREAM_<NAME>`` (shared ones: ``CITYOPS_<NAME>``)."""

    model_config = SettingsConfigDict(env_prefix="CITYOPS_STREAM_")

    group_id: str = "cityops-stream"
    client_id: str = "cityops-stream-1"
    max_batch: int = 5_000
    poll_timeout_ms: int = 200
    maintenance_interval_s: float = 60.0
    # Detector profiles per device class and metric (stream/profiles.toml documents them).
    # The running service re-reads the file within ``profiles_check_s`` of a change.
    profiles: Path = DEFAULT_FILE
    profiles_check_s: float = 2.0
    # Silent series are looked for this often (staleness alerts), in stream time: the newest
    # reading's time, advanced by the clock only while the consumer has nothing left to read.
    stale_check_s: float = 10.0
    # Most of the feed silent at once is the pipeline upstream (the gateways, the broker, the
    # network), not the devices: when, in one check, at least this share of the devices that
    # were reporting (and at least ``mass_silence_min_devices``) fall silent, one platform
    # alert says so instead of one per device. Devices still silent when the feed is back are
    # then judged, and alerted on, one by one.
    mass_silence_share: float = Field(0.5, gt=0.0, le=1.0)
    mass_silence_min_devices: int = Field(20, ge=1)
    # Detector state goes to PostgreSQL this often, at stop and when partitions move away, so
    # a restarted or rebalanced consumer resumes it and replays the readings stored since.
    snapshot_interval_s: float = 60.0
    # A series the process has not seen (after a restart or a rebalance) without a saved state
    # warms up from its latest stored readings, so it neither misses the next anomaly nor
    # alarms on noise. Saved state and history older than the age cap before the series' next
    # reading are ignored: a device silent for longer starts cold rather than judging today by
    # yesterday (a restarted demo would otherwise alarm on every lamp's temperature).
    warmup_readings: int = 200
    warmup_max_age_s: float = 3_600
    # How long stopping may wait on each client (leaving the group, unsent alerts, the last
    # snapshot) when its peer is gone: a stop takes seconds, not a request timeout. What is
    # not flushed was not committed, so the next consumer replays it: nothing is lost.
    close_timeout_s: float = 5.0
    # The consumer reconnects to Kafka silently (a commit just waits for it), so an outage would
    # go unreported: alongside the batches Kafka is asked for its metadata this often (every
    # 0.5 s while it is away, each ask bounded by ``kafka_probe_timeout_s``); /healthz says.
    kafka_probe_s: float = 5.0
    kafka_probe_timeout_s: float = 3.0
    metrics_host: str = "127.0.0.1"
    metrics_port: int = STREAM_METRICS_PORT
