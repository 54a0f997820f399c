"""One typed settings object for the whole of Noor.

Everything configurable is read here, once, from the environment (``NOOR_`` prefix, ``__`` between
nested sections, e.g. ``NOOR_STORE__URL=redis://127.0.0.1:6379/0``) or an ``.env`` file, and then
passed down. No other module reads environment variables, so a test can build a ``Settings`` by hand
and know exactly what the code under test sees.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATA_DIR = Path.home() / ".local" / "share" / "noor"


class ServerSettings(BaseModel):
    """Where the gateway listens and how much it accepts."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 4 * 1024 * 1024
    admin_token: str | None = Field(
        default=None, description="Bearer token for /admin/; None disables the operator side of the admin API."
    )
    request_id_header: str = "x-request-id"


class StoreSettings(BaseModel):
    """Where tenants, keys and usage live: ``sqlite:///path`` (embedded default) or ``redis://...``."""

    url: str | None = Field(default=None, description="None means SQLite in the data directory.")
    key_cache_ttl_s: float = 30.0
    usage_flush_interval_s: float = 0.5
    usage_flush_max_records: int = 500
    spool_dir: Path | None = Field(default=None, description="Local spool for usage records while the store is away.")


class LimitsSettings(BaseModel):
    """How limits behave when the shared store is unreachable."""

    enabled: bool = True
    on_store_failure: Literal["open", "closed"] = "open"


class EngineSettings(BaseModel):
    """How the gateway talks to engines."""

    connect_timeout_s: float = 5.0
    read_timeout_s: float = 600.0
    health_interval_s: float = 2.0
    health_timeout_s: float = 2.0
    unhealthy_after_failures: int = 2
    metrics_interval_s: float = 1.0
    max_retries: int = 2


class SchedulerSettings(BaseModel):
    """Admission and endpoint picking."""

    policy: str = "least_outstanding"
    admission_enabled: bool = False
    queue_deadline_s: float = 30.0
    window_per_endpoint: int | None = None
    kv_cache_threshold: float = 0.95


class TelemetrySettings(BaseModel):
    """Metrics, traces and logs."""

    metrics_enabled: bool = True
    traces_exporter: Literal["none", "console", "otlp"] = "none"
    otlp_endpoint: str | None = None
    log_format: Literal["json", "text"] = "json"
    access_log: bool = True


class LocalEngineSettings(BaseModel):
    """The local vLLM pool that ``noor up`` starts (the embedded default)."""

    replicas: int = 1
    base_port: int = 8100
    kv_cache_gib: int = 2
    max_model_len: int = 2048
    max_num_seqs: int = 64
    startup_timeout_s: float = 600.0


class TritonSettings(BaseModel):
    """Triton endpoints and the local tritonserver (serving/launcher/triton.py)."""

    protocol: Literal["grpc", "http"] = "grpc"
    runtime_dir: Path | None = Field(
        default=None,
        description="venv holding tritonserver and numpy<2 for its Python-backend stub; None = data_dir/triton-runtime.",
    )


class Settings(BaseSettings):
    """The root of Noor's configuration."""

    model_config = SettingsConfigDict(env_prefix="NOOR_", env_nested_delimiter="__", env_file=".env", extra="ignore")

    data_dir: Path = DEFAULT_DATA_DIR
    catalog_path: Path | None = Field(default=None, description="Served-model catalog (TOML); None = the bundled one.")
    server: ServerSettings = ServerSettings()
    store: StoreSettings = StoreSettings()
    limits: LimitsSettings = LimitsSettings()
    engine: EngineSettings = EngineSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    local: LocalEngineSettings = LocalEngineSettings()
    triton: TritonSettings = TritonSettings()

    @property
    def store_url(self) -> str:
        return self.store.url or f"sqlite:///{self.data_dir / 'noor.db'}"

    @property
    def triton_runtime_dir(self) -> Path:
        return self.triton.runtime_dir or self.data_dir / "triton-runtime"

    @property
    def models_dir(self) -> Path:
        """Prepared model folders (cached by content hash)."""
        return self.data_dir / "models"
