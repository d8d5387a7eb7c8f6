from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from cityops.settings import API_PORT, CommonSettings


class IocSettings(CommonSettings):
    """IOC API settings: ``CITYOPS_API_<NAME>`` (shared ones: ``CITYOPS_<NAME>``)."""

    model_config = SettingsConfigDict(env_prefix="CITYOPS_API_")

    host: str = "127.0.0.1"
    port: int = API_PORT
    group_id: str = "cityops-ioc"
    client_id: str = "cityops-ioc-1"
    pool_min: int = 1
    pool_max: int = 10
    # Events a WebSocket client may fall behind by before it is told to resync and dropped;
    # a slow wall screen must not hold up the others.
    ws_queue_size: int = 1_000
    max_page: int = 10_000
