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
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "noor"


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
    """Admission (fair queueing in the gateway) and endpoint picking. See docs/scheduling.md."""

    policy: str = Field(default="least_outstanding",
                        description="round_robin | least_outstanding | least_loaded | prefix_load")
    admission_enabled: bool = Field(default=False, description="Queue in the gateway (VTC fair admission).")
    queue_deadline_s: float = Field(default=30.0, description="Longest wait in the queue; then 429 + Retry-After.")
    window_per_endpoint: int | None = Field(
        default=None, description="Running + waiting requests per endpoint; None = the engine's max_num_seqs.")
    kv_cache_threshold: float = 0.95
    max_starting_per_endpoint: int | None = Field(
        default=None, description="Prefill pacing: at most this many streamed requests per endpoint before "
                                  "their first token; None = no pacing. See docs/scheduling.md before enabling.")
    priority_classes: list[str] = Field(default=["interactive", "batch"], description="Served first to last.")
    vtc_input_weight: float = 1.0
    vtc_output_weight: float = 2.0
    output_estimate_tokens: int = Field(default=256, description="First guess of a tenant's output length.")
    stale_after_intervals: float = Field(default=3.0, description="Signals older than this many scrapes are stale.")
    scorer_weights: dict[str, float] = {"prefix": 2.0, "load": 1.0, "kv_cache": 0.5}
    prefix_block_chars: int = 256
    prefix_max_blocks: int = 128
    prefix_lru_blocks: int = Field(default=16384, description="Block hashes remembered per endpoint.")


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


class Settings(BaseSettings):
    """The root of Noor's configuration."""

    model_config = SettingsConfigDict(env_prefix="NOOR_", env_nested_delimiter="__", env_file=".env", extra="ignore")

    data_dir: Path = DEFAULT_DATA_DIR
    cache_dir: Path = Field(default=DEFAULT_CACHE_DIR, description="Prepared models, keyed by content hash.")
    catalog_path: Path | None = Field(default=None, description="Served-model catalog (TOML); None = the bundled one.")
    server: ServerSettings = ServerSettings()
    store: StoreSettings = StoreSettings()
    limits: LimitsSettings = LimitsSettings()
    engine: EngineSettings = EngineSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    local: LocalEngineSettings = LocalEngineSettings()

    @property
    def store_url(self) -> str:
        return self.store.url or f"sqlite:///{self.data_dir / 'noor.db'}"

    @property
    def models_dir(self) -> Path:
        """Prepared model folders (cached by content hash)."""
        return self.cache_dir / "models"
