"""The catalog of served models and the pools that serve them.

A public model name (what clients put in ``model``) maps to one pool and, inside the engine, to an
engine-side model name (by default the same). Pools name their engine kind and, for deployments with
engines already running, their endpoint URLs; the embedded default leaves them empty and ``noor up``
fills them with the engines it launches.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, model_validator

BUNDLED_CATALOG = Path(__file__).with_name("catalog.toml")


class ModelSpec(BaseModel):
    name: str
    pool: str
    kind: Literal["chat", "embedding"] = "chat"
    context_length: int = 2048
    engine_model: str | None = Field(default=None, description="Name inside the engine; default = name.")
    tokenizer: str | None = Field(default=None, description="Folder (or prepared model id) with tokenizer.json.")
    owned_by: str = "noor"

    @property
    def upstream_name(self) -> str:
        return self.engine_model or self.name


class EndpointSpec(BaseModel):
    """One engine endpoint: its HTTP URL, and for Triton its gRPC address and metrics URL.

    Triton serves three ports; left out, ``grpc_url`` and ``metrics_url`` follow Triton's own default
    layout (HTTP port + 1 for gRPC, + 2 for metrics: 8000/8001/8002).
    """

    url: str
    grpc_url: str | None = Field(default=None, description="Triton gRPC as host:port.")
    metrics_url: str | None = Field(default=None, description="Prometheus metrics URL (Triton).")

    def triton_addresses(self) -> tuple[str, str]:
        """``(grpc host:port, metrics URL)``, filled in from Triton's default port layout where unset."""
        parts = urlsplit(self.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 8000
        return (
            self.grpc_url or f"{host}:{port + 1}",
            self.metrics_url or f"{parts.scheme or 'http'}://{host}:{port + 2}/metrics",
        )


class PoolSpec(BaseModel):
    name: str
    engine: Literal["vllm", "triton", "sim"] = "vllm"
    endpoints: list[str | EndpointSpec] = Field(
        default_factory=list, description='URLs, or tables {url, grpc_url, metrics_url} for Triton.'
    )
    protocol: str | None = Field(default=None, description="Engine-specific transport, e.g. Triton grpc|http.")
    default_max_tokens: int | None = Field(
        default=None, description="Sent when a request sets none (NVIDIA's Triton vLLM backend stops at 16)."
    )

    def endpoint_specs(self) -> list[EndpointSpec]:
        return [e if isinstance(e, EndpointSpec) else EndpointSpec(url=e) for e in self.endpoints]


class Catalog(BaseModel):
    models: dict[str, ModelSpec]
    pools: dict[str, PoolSpec]

    @model_validator(mode="after")
    def _pools_exist(self) -> Catalog:
        for m in self.models.values():
            if m.pool not in self.pools:
                raise ValueError(f"model {m.name!r} names unknown pool {m.pool!r}")
        return self

    @classmethod
    def from_dict(cls, raw: dict) -> Catalog:
        models = {n: ModelSpec(name=n, **spec) for n, spec in raw.get("models", {}).items()}
        pools = {n: PoolSpec(name=n, **spec) for n, spec in raw.get("pools", {}).items()}
        return cls(models=models, pools=pools)

    @classmethod
    def load(cls, path: Path | None = None) -> Catalog:
        with open(path or BUNDLED_CATALOG, "rb") as f:
            return cls.from_dict(tomllib.load(f))

    def without_pools(self, names: Iterable[str]) -> Catalog:
        """This catalog without some pools and the models they serve (the engines `noor up` did not start)."""
        gone = set(names)
        return Catalog(
            models={n: m for n, m in self.models.items() if m.pool not in gone},
            pools={n: p for n, p in self.pools.items() if n not in gone},
        )

    def models_in_pool(self, pool: str) -> list[ModelSpec]:
        return [m for m in self.models.values() if m.pool == pool]
