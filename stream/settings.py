from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from cityops.settings import STREAM_METRICS_PORT, CommonSettings


class StreamSettings(CommonSettings):
    """Stream settings: ``CITYOPS_STREAM_<NAME>`` (shared ones: ``CITYOPS_<NAME>``)."""

    model_config = SettingsConfigDict(env_prefix="CITYOPS_STREAM_")

    group_id: str = "cityops-stream"
    client_id: str = "cityops-stream-1"
    max_batch: int = 5_000
    poll_timeout_ms: int = 200
    maintenance_interval_s: float = 60.0
    # EWMA z-score detector (see stream.detectors.EwmaParams).
    ewma_alpha: float = 0.05
    ewma_warmup: int = 30
    ewma_threshold: float = 6.0
    ewma_clip: float = 4.0
    ewma_refractory: int = 20
    # A series the process has not seen yet (after a restart or a rebalance) is warmed up from
    # its latest stored readings, so it neither misses the next anomaly nor alarms on noise.
    warmup_readings: int = 200
    # Bounded by count; the age cap only keeps a long-silent device from waking on stale state.
    warmup_max_age_s: float = 30 * 86_400
    metrics_host: str = "127.0.0.1"
    metrics_port: int = STREAM_METRICS_PORT
