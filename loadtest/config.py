"""The traffic profile of a load test: who sends what, how often, and how the rate is swept.

One file (TOML, YAML or JSON) describes a run; ``noor signoff`` options override single fields. The
defaults are a small, realistic chat mix for the bundled SmolLM2 on a CPU pool, so that a bare
``noor signoff --slo loadtest/slo.example.toml`` does something sensible against ``noor up``.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

from loadtest.distributions import Dist

DEFAULT_MODEL = "smollm2-135m-instruct"


class TenantSpec(BaseModel):
    """One tenant of the run. Without ``key`` the run creates it (and a key) through the admin API."""

    model_config = {"extra": "forbid"}

    name: str = Field(min_length=1, max_length=64)
    weight: float = Field(default=1.0, gt=0, description="Share of the arrivals this tenant sends.")
    key: str | None = Field(default=None, description="An existing API key; then the tenant is not created.")
    id: str | None = Field(default=None, description="The tenant's id, when known (for the ledger).")


class MixSpec(BaseModel):
    """What each request asks for."""

    model_config = {"extra": "forbid"}

    model: str = DEFAULT_MODEL
    prompt_tokens: Dist = Field(default_factory=lambda: Dist(dist="lognormal", mean=120, sigma=0.6, min=8, max=800))
    output_tokens: Dist = Field(default_factory=lambda: Dist(dist="uniform", min=16, max=64))
    stream_share: float = Field(default=0.9, ge=0, le=1, description="Share of streamed requests.")
    system_prompts: int = Field(default=4, ge=0, description="How many distinct shared system prompts exist.")
    system_prompt_tokens: Dist = Field(default_factory=lambda: Dist.fixed(200))
    system_prompt_share: float = Field(default=0.8, ge=0, le=1, description="Share of requests with a system prompt.")
    ignore_eos: bool = Field(default=True, description="Ask the engine to generate exactly max_tokens (vLLM).")
    temperature: float | None = None
    seed: int | None = Field(default=None, description="Seed of the request mix; None = a fresh one per run.")


class ArrivalSpec(BaseModel):
    """The open-loop arrival process."""

    model_config = {"extra": "forbid"}

    burstiness: float = Field(
        default=1.0, gt=0,
        description="Gamma shape of the inter-arrival gaps: 1 = Poisson; < 1 burstier; > 1 more regular.",
    )
    max_concurrency: int = Field(
        default=256, ge=1,
        description="Requests in flight at most; an arrival beyond it is dropped and counted as an error.",
    )
    seed: int | None = None


class SweepSpec(BaseModel):
    """The rate steps. Either ``rates``, or ``start_rate`` raised by ``factor`` (or ``increment``) up to ``max_rate``."""

    model_config = {"extra": "forbid"}

    rates: list[float] | None = None
    start_rate: float = Field(default=0.5, gt=0)
    factor: float | None = Field(default=2.0, gt=1)
    increment: float | None = Field(default=None, gt=0)
    max_rate: float = Field(default=16.0, gt=0)
    warmup_s: float = Field(default=10.0, ge=0)
    duration_s: float = Field(default=30.0, gt=0)
    request_timeout_s: float = Field(default=120.0, gt=0)
    drain_timeout_s: float | None = Field(default=None, description="None = request_timeout_s + 10.")
    stop_on_fail: bool = True

    @field_validator("rates")
    @classmethod
    def _positive(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (not v or any(r <= 0 for r in v)):
            raise ValueError("rates must be a non-empty list of positive numbers")
        return v

    def step_rates(self) -> list[float]:
        if self.rates:
            return sorted(self.rates)
        rates, r = [], self.start_rate
        while r <= self.max_rate * (1 + 1e-9) and len(rates) < 1000:
            rates.append(round(r, 6))
            r = r + self.increment if self.increment else r * (self.factor or 2.0)
        return rates

    @property
    def drain_s(self) -> float:
        return self.drain_timeout_s if self.drain_timeout_s is not None else self.request_timeout_s + 10.0


class MetricsSpec(BaseModel):
    """Which ``/metrics`` to scrape during the run (the gateway's own is added by the run)."""

    model_config = {"extra": "forbid"}

    engines: list[str] = Field(default_factory=list, description="Engine base URLs or /metrics URLs.")
    interval_s: float = Field(default=1.0, gt=0)
    gateway: bool = True


class LoadConfig(BaseModel):
    """A whole load-test profile."""

    model_config = {"extra": "forbid"}

    name: str = "chat"
    tenants: list[TenantSpec] = Field(default_factory=lambda: [TenantSpec(name=n) for n in ("alpha", "beta", "gamma")])
    mix: MixSpec = Field(default_factory=MixSpec)
    arrivals: ArrivalSpec = Field(default_factory=ArrivalSpec)
    sweep: SweepSpec = Field(default_factory=SweepSpec)
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)

    @field_validator("tenants", mode="before")
    @classmethod
    def _count(cls, v: Any) -> Any:
        # ``tenants = 3`` is shorthand for three equal tenants
        if isinstance(v, int):
            if v < 1:
                raise ValueError("tenants must be >= 1")
            return [{"name": f"tenant-{i + 1}"} for i in range(v)]
        return v

    @model_validator(mode="after")
    def _unique(self) -> LoadConfig:
        names = [t.name for t in self.tenants]
        if len(set(names)) != len(names):
            raise ValueError("tenant names must be unique")
        return self


def read_mapping(path: Path) -> dict:
    """A TOML, YAML or JSON file as a dict (by suffix)."""
    text = path.read_text()
    suffix = path.suffix.lower()
    if suffix == ".toml":
        return tomllib.loads(text)
    if suffix in (".yaml", ".yml"):
        import yaml

        return yaml.safe_load(text) or {}
    if suffix == ".json":
        return json.loads(text)
    raise ValueError(f"{path}: expected .toml, .yaml, .yml or .json")


def load_config(path: Path | None) -> LoadConfig:
    return LoadConfig.model_validate(read_mapping(path)) if path else LoadConfig()
