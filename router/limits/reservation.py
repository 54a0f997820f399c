"""What a limiter holds for one request between reserve and settle, and what a request costs."""

from __future__ import annotations

from dataclasses import dataclass

from router.context import RequestContext
from router.store.base import TenantLimits


@dataclass(slots=True)
class Reservation:
    tenant_id: str
    request_id: str
    cost: int  # tokens reserved: our prompt count + max_tokens
    tokens: bool  # a TPM bucket holds them
    concurrency: bool  # a concurrency slot is held
    budget_key: str | None  # the budget period charged (``month:2026-11``), if any
    local: bool = False  # made by the in-process limiter (the Redis limiter's fallback)


def limited(limits: TenantLimits) -> bool:
    """Does this tenant have any quota? Tenants without one cost the limiter nothing."""
    return bool(limits.requests_per_minute or limits.tokens_per_minute or limits.max_concurrent or limits.token_budget)


def request_cost(ctx: RequestContext) -> int:
    """The worst case a request can consume: its prompt (counted by us) plus all it may generate."""
    return ctx.prompt_tokens + ctx.max_tokens


def actual_tokens(usage) -> int:
    """What a finished request really consumed, by the engine's count (nothing generated: 0)."""
    return usage.prompt_tokens + usage.completion_tokens if usage is not None else 0
