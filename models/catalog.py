"""The catalog of served models and the pools that serve them.

A public model name (what clients put in ``model``) maps to one pool and, inside the engine, to an
engine-side model name (by default the same). Pools name their engine kind and, for deployments with
engines already running, their endpoint URLs; the embedded default leaves them empty and ``noor up``
fills them with the engines it launches.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

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


class PoolSpec(BaseModel):
    name: str
    engine: Literal["vllm", "triton", "sim"] = "vllm"
    endpoints: list[str] = Field(default_factory=list)
    protocol: str | None = Field(default=None, description="Engine-specific transport, e.g. Triton grpc|http.")


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

    def models_in_pool(self, pool: str) -> list[ModelSpec]:
        return [m for m in self.models.values() if m.pool == pool]
