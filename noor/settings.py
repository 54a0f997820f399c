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
    # Redis only (ignored by SQLite).
    redis_prefix: str = Field(default="noor:", description="Namespace of every Redis key Noor writes.")
    redis_connect_timeout_s: float = 0.5
    redis_socket_timeout_s: float = 1.0
    redis_max_connections: int = Field(default=64, description="Per gateway process; requests queue for one beyond it.")
    redis_autopipeline: bool = Field(
        default=True, description="The request path's Redis commands (epoch reads, limit scripts, usage appends) go "
        "through one pipelined hiredis connection, commands of concurrent requests sharing writes (false: redis-py, "
        "one round trip each)."
    )
    redis_retry_after_s: float = Field(
        default=1.0, description="After Redis fails, calls fail fast for this long before it is tried again."
    )
    auth_invalidation: Literal["version", "pubsub"] = Field(
        default="version",
        description="version: one GET of a version key per request (a revoke is seen by the very next request "
        "at every replica); pubsub: no per-request read, caches dropped when a change is published.",
    )
    ledger_aggregate: bool = Field(default=True, description="Run the usage-ledger aggregator in this gateway.")
    ledger_batch: int = 500
    ledger_claim_idle_s: float = Field(
        default=30.0, description="Ledger entries a consumer held this long unacknowledged are taken over."
    )
    usage_records_retention_days: int = 90


class LimitsSettings(BaseModel):
    """Which limiter enforces tenants' quotas, and how it behaves when the shared store is unreachable."""

    enabled: bool = True
    backend: Literal["auto", "redis", "local"] = Field(
        default="auto", description="auto: Redis when the store is Redis, else in-process (one gateway)."
    )
    on_store_failure: Literal["open", "closed"] = Field(
        default="open", description="open: enforce limits locally per replica and keep serving; closed: 503."
    )
    fail_open_share: float = Field(
        default=1.0, gt=0, le=1,
        description="Share of each limit one replica enforces on its own while Redis is away (1/replicas is strict).",
    )
    window_s: float = Field(default=60.0, gt=0, description="The 'minute' of RPM/TPM (shorter only in tests).")
    concurrency_lease_s: float = Field(
        default=60.0, gt=0, description="A concurrency slot held by a replica that died is freed after this long."
    )


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
