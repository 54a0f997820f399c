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


#: A prompt whose byte bound is at most this many tokens reserves the bound instead of being counted.
BOUND_NOT_COUNTED = 512

#: Refusals an exact prompt count could turn into admissions (a rate or concurrency refusal it cannot).
_TOKEN_REASONS = frozenset({"tokens", "request_too_large", "budget"})


def request_cost(ctx: RequestContext, *, exact: bool = False) -> int:
    """The worst case a request can consume: its prompt plus all it may generate.

    The prompt part is itself a worst case. A short prompt reserves its byte bound (validation's
    ``prompt_bound``: byte-level BPE never makes more tokens than bytes) instead of being tokenized,
    which costs 30+ µs per request in a busy gateway (the tokenizer's tables fall out of the CPU's
    caches between requests): it holds at most ``BOUND_NOT_COUNTED`` tokens more than the count until
    the request settles to the engine's real usage, and a refusal is decided again on the exact count
    (``exact_cost``). A request with no ``max_tokens`` may use the whole context whatever its prompt, so
    its cost is the context length, counted or not.
    """
    requested = ctx.requested_max_tokens
    if requested is None and ctx.model is not None:
        return ctx.model.context_length
    if requested is None:
        requested = 0
    bound = ctx.prompt_bound
    if not exact and not ctx.prompt_counted and bound is not None and bound <= BOUND_NOT_COUNTED:
        return bound + requested
    return ctx.prompt_tokens + requested


def exact_cost(ctx: RequestContext, cost: int, reason: str | None) -> int | None:
    """After a refusal for ``reason`` at ``cost``: the exact cost, if it is lower and could change that
    decision (the prompt was reserved by its bound), else None."""
    if reason not in _TOKEN_REASONS:
        return None
    exact = request_cost(ctx, exact=True)
    return exact if exact < cost else None


def actual_tokens(usage) -> int:
    """What a finished request really consumed, by the engine's count (nothing generated: 0)."""
    return usage.prompt_tokens + usage.completion_tokens if usage is not None else 0
