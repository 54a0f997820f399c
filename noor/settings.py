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
    # A CPU-bound engine answers /health slowly under load; a short timeout would take a busy (not dead)
    # engine out of rotation and turn load into 503s. Requests that fail to connect still count at once.
    health_timeout_s: float = 5.0
    unhealthy_after_failures: int = 3
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
    """Metrics, traces and logs (router/telemetry/)."""

    metrics_enabled: bool = True
    metrics_path: str = Field(default="/metrics", description="Served by the gateway's app, outside tenant auth.")
    metrics_port: int | None = Field(default=None, description="Serve /metrics on this port instead of the app's.")
    metrics_host: str = "127.0.0.1"
    max_tenant_labels: int = Field(
        default=1000, description="Distinct tenant label values before further tenants count as '_other'."
    )
    traces_exporter: Literal["none", "console", "otlp"] = "none"
    otlp_endpoint: str | None = Field(default=None, description="None: the exporter's default (localhost).")
    otlp_protocol: Literal["http/protobuf", "grpc"] = "http/protobuf"
    traces_sample_ratio: float = Field(
        default=0.05, ge=0.0, le=1.0,
        description="Share of requests traced (decided on the trace id). A traced request costs the gateway "
        "~8 spans built and OTLP-encoded in Python (see benchmarks/telemetry_overhead.py), so production "
        "samples; set 1.0 to trace everything while debugging.",
    )
    service_name: str = "noor-gateway"
    log_format: Literal["json", "text"] = "json"
    log_level: str = "INFO"
    access_log: bool = True
    capture_content_tenants: list[str] = Field(
        default_factory=list,
        description="Tenant ids or names whose prompts and completions go into spans and access lines "
        "(debugging only). Everyone else's text never does.",
    )


class LocalEngineSettings(BaseModel):
    """The local vLLM pool that ``noor up`` starts (the embedded default)."""

    replicas: int = 1
    base_port: int = 8100
    kv_cache_gib: int = 2
    max_model_len: int = 2048
    max_num_seqs: int = 64
    startup_timeout_s: float = 900.0
    cpu_threads_bind: str | None = Field(
        default="nobind",
        description="VLLM_CPU_OMP_THREADS_BIND on CPU hosts. vLLM's default pins its worker to one core, which "
        "starves it on small machines; None keeps vLLM's default (right on a dedicated many-core host).",
    )
    enforce_eager: bool = Field(default=False, description="Skip graph compilation: faster start, slower decode.")


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
