"""The storage interface: tenants, API keys and usage records.

Two implementations: SQLite (embedded default, one machine) and Redis (many gateway replicas). The
request path only ever calls ``resolve_key``/``auth_epoch`` (through the auth cache) and
``add_usage`` (through the batching meter), so a slow store never sits on a request's latency.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Awaitable
from dataclasses import asdict, dataclass, field


@dataclass(slots=True)
class TenantLimits:
    """Quotas of one tenant; None means unlimited."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent: int | None = None
    token_budget: int | None = None
    budget_period: str = "month"  # day | month


@dataclass(slots=True)
class Tenant:
    id: str
    name: str
    allowed_models: list[str] = field(default_factory=lambda: ["*"])
    limits: TenantLimits = field(default_factory=TenantLimits)
    weight: float = 1.0
    priority: str = "interactive"
    created_at: float = field(default_factory=time.time)

    def allows(self, model: str) -> bool:
        return "*" in self.allowed_models or model in self.allowed_models

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(slots=True)
class ApiKey:
    """A key as stored: never the secret, only its hash and a short visible prefix."""

    id: str
    tenant_id: str
    name: str
    prefix: str
    key_hash: str
    models: list[str] | None = None  # None: everything the tenant may use
    created_at: float = field(default_factory=time.time)
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def public(self) -> dict:
        d = asdict(self)
        d.pop("key_hash")
        return d


@dataclass(slots=True, frozen=True)
class Identity:
    """Who a request is from, as resolved from its key: everything the request path needs."""

    key_id: str
    tenant_id: str
    tenant_name: str
    models: frozenset[str]  # effective scope; contains "*" for all
    limits: TenantLimits
    weight: float = 1.0
    priority: str = "interactive"

    def allows(self, model: str) -> bool:
        return "*" in self.models or model in self.models


@dataclass(slots=True)
class UsageRecord:
    """One request's metering: the engine's own token counts, never an estimate."""

    request_id: str
    tenant_id: str
    key_id: str
    model: str
    pool: str = ""
    endpoint: str = ""
    engine: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_source: str = "engine"
    status: int = 200
    outcome: str = "ok"  # ok | cancelled | error
    stream: bool = False
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    ts: float = field(default_factory=time.time)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(slots=True)
class UsageTotal:
    day: str
    tenant_id: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int

    def to_dict(self) -> dict:
        return asdict(self)


def effective_models(tenant: Tenant, key: ApiKey) -> frozenset[str]:
    """A key's scope is its own list narrowed to what its tenant may use."""
    tenant_models = frozenset(tenant.allowed_models)
    if key.models is None or "*" in key.models:
        return tenant_models
    if "*" in tenant_models:
        return frozenset(key.models)
    return frozenset(key.models) & tenant_models


class Store(abc.ABC):
    #: True when ``auth_epoch`` is a round trip to a server (the auth cache then overlaps it with others).
    auth_epoch_is_remote: bool = False

    # tenants
    @abc.abstractmethod
    async def create_tenant(
        self, name: str, *, allowed_models: list[str] | None = None, limits: TenantLimits | None = None,
        weight: float = 1.0, priority: str = "interactive",
    ) -> Tenant: ...

    @abc.abstractmethod
    async def get_tenant(self, tenant_id: str) -> Tenant | None: ...

    @abc.abstractmethod
    async def find_tenant(self, name: str) -> Tenant | None: ...

    @abc.abstractmethod
    async def list_tenants(self) -> list[Tenant]: ...

    @abc.abstractmethod
    async def update_tenant(self, tenant: Tenant) -> None: ...

    @abc.abstractmethod
    async def delete_tenant(self, tenant_id: str) -> bool: ...

    # keys
    @abc.abstractmethod
    async def add_key(self, key: ApiKey) -> None: ...

    @abc.abstractmethod
    async def get_key(self, key_id: str) -> ApiKey | None: ...

    @abc.abstractmethod
    async def list_keys(self, tenant_id: str) -> list[ApiKey]: ...

    @abc.abstractmethod
    async def revoke_key(self, key_id: str) -> bool: ...

    @abc.abstractmethod
    async def resolve_key(self, key_hash: str) -> Identity | None:
        """The identity behind an active key's hash, or None (unknown or revoked)."""

    @abc.abstractmethod
    async def auth_epoch(self) -> object:
        """A value that changes whenever any tenant or key changes (from any process)."""

    def auth_epoch_soon(self) -> Awaitable[object]:
        """``auth_epoch``, its read started now (sent with the request's next store command) and awaited
        later. By default a task around ``auth_epoch``; a store that can queue the read without one
        (a task costs ~10 µs per request) returns the reply's awaitable."""
        return asyncio.ensure_future(self.auth_epoch())

    # usage
    @abc.abstractmethod
    async def add_usage(self, records: list[UsageRecord]) -> None: ...

    @abc.abstractmethod
    async def usage_totals(
        self, *, tenant_id: str | None = None, since: float | None = None, until: float | None = None
    ) -> list[UsageTotal]: ...

    @abc.abstractmethod
    async def usage_records(
        self, *, tenant_id: str | None = None, since: float | None = None, until: float | None = None,
        limit: int | None = None,
    ) -> list[UsageRecord]: ...

    async def start(self) -> None:
        """Start background work the store needs in a gateway (Redis: the usage-ledger aggregator)."""

    async def close(self) -> None:
        pass
