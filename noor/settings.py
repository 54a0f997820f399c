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
    usage_write_slice: int = Field(
        default=50, description="Usage records per store write; the gateway serves requests between slices."
    )
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
    ledger_batch: int = Field(
        default=20,
        description="Ledger entries read and folded per script call, inside Redis, which runs nothing else meanwhile: "
        "~320 µs per call of 20 (~49k records/s per aggregator), ~700 µs per 50; every replica's reserve waits "
        "behind it (docs/performance.md).",
    )
    ledger_poll_s: float = Field(
        default=0.25, gt=0, description="How often a drained ledger aggregator looks for new usage records (how "
        "late totals may be; a reader folds what is pending before it reads)."
    )
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
    overlap: bool = Field(
        default=True,
        description="Check a request's limits (Redis) while its engine request opens, where the tenant's last "
        "decision left ample room; a refusal then aborts the engine request before the client sees a byte.",
    )
    overlap_headroom: float = Field(
        default=0.25, gt=0, le=1,
        description="The share of each limit a tenant's last decision must have left for its next check to overlap.",
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
    headroom_per_endpoint: int = Field(
        default=2, ge=0, description="Slots of each endpoint's window that a tenant already holding its fair "
        "share may not take (nor, with pacing, start a prompt beyond the limit), so a tenant below its share "
        "starts at once on a busy engine; 0 = off. See docs/scheduling.md.")
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


class TritonSettings(BaseModel):
    """Triton endpoints and the local tritonserver (serving/launcher/triton.py) that ``noor up`` starts."""

    protocol: Literal["grpc", "http"] = Field(
        default="grpc", description="Transport for Triton pools whose catalog entry names none."
    )
    local_embeddings: bool = Field(default=True, description="`noor up` serves the catalog's Triton embedding models.")
    local_llm: bool = Field(
        default=False,
        description="`noor up` also serves the catalog's Triton LLM (a second copy of SmolLM2, on vLLM inside Triton).",
    )
    base_port: int = Field(default=8200, description="Local Triton's HTTP port (gRPC +1, metrics +2); next free if taken.")
    startup_timeout_s: float = 900.0
    runtime_dir: Path | None = Field(
        default=None,
        description="venv holding tritonserver and numpy<2 for its Python-backend stub; None = data_dir/triton-runtime.",
    )


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
        return self.cache_dir / "models"
