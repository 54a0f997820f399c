"""Which requests may have their Redis reserve overlapped with the engine request's opening.

``RedisLimiter.may_defer`` answers from the tenant's last decision on this replica; these unit tests
drive that state by hand (no Redis is reached). The behaviour through a real gateway, Redis and
upstream — the refusal after the open, the engine request aborted, nothing billed — is in
``tests/e2e/test_redis_overlap.py``.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from router.context import RequestContext
from router.limits.decision import Bucket, Decision
from router.limits.redis import RedisLimiter
from router.store.base import Identity, TenantLimits
from router.store.redis_link import Breaker


def _limiter(headroom: float | None = 0.25) -> RedisLimiter:
    # A client that is never used: may_defer and the decisions it learns from are local state.
    return RedisLimiter(aioredis.Redis(), Breaker(), overlap_headroom=headroom, autopipeline=False)


def _ctx(limits: TenantLimits, *, max_tokens: int = 10, prompt_bound: int = 20) -> RequestContext:
    ctx = RequestContext(request_id="r", kind="chat", body={})
    ctx.identity = Identity("k", "t", "tenant", frozenset({"*"}), limits)
    ctx.max_tokens = max_tokens
    ctx.prompt_bound = prompt_bound
    return ctx


def test_a_tenant_without_limits_may_always_overlap_and_an_unseen_one_never():
    lim = _limiter()
    assert lim.may_defer(_ctx(TenantLimits()))
    assert not lim.may_defer(_ctx(TenantLimits(requests_per_minute=100)))  # no decision seen yet


def test_a_burst_on_one_stale_answer_takes_only_the_spare():
    lim, limits = _limiter(), TenantLimits(requests_per_minute=100)
    lim._note_spare("t", Decision(True, requests=Bucket(100, 60, 30.0)))  # 40 left, 25 of them headroom
    assert sum(lim.may_defer(_ctx(limits)) for _ in range(30)) == 15


def test_tokens_and_budget_spare_must_cover_this_requests_cost():
    lim = _limiter()
    limits = TenantLimits(tokens_per_minute=1000, token_budget=10_000)
    # tokens: 1000 - 600 - 250 = 150 spare; budget: 10000 - 1000 - 2500 = 6500 spare
    lim._note_spare("t", Decision(True, tokens=Bucket(1000, 600, 1.0), budget=Bucket(10_000, 1000, 1.0)))
    assert not lim.may_defer(_ctx(limits, max_tokens=200))  # costs 220 > 150
    assert lim.may_defer(_ctx(limits, max_tokens=100))  # 120: 30 left
    assert not lim.may_defer(_ctx(limits, max_tokens=20))  # 40 > 30
    lim._note_spare("t", Decision(True, tokens=Bucket(1000, 100, 1.0), budget=Bucket(10_000, 7400, 1.0)))
    assert not lim.may_defer(_ctx(limits, max_tokens=200))  # tokens would do, the budget's spare is 100


def test_a_refusal_or_a_concurrency_cap_or_an_outage_means_checking_first():
    lim = _limiter()
    limits = TenantLimits(requests_per_minute=100)
    lim._note_spare("t", Decision(True, requests=Bucket(100, 1, 30.0)))
    assert lim.may_defer(_ctx(limits))
    lim._note_spare("t", Decision(False, reason="requests", requests=Bucket(100, 100, 30.0)))
    assert not lim.may_defer(_ctx(limits))
    lim._note_spare("t", Decision(True, requests=Bucket(100, 1, 30.0)))
    capped = TenantLimits(requests_per_minute=100, max_concurrent=1000)
    assert not lim.may_defer(_ctx(capped))  # a cap is a promise about the engine
    lim.degraded = True  # Redis away: the local fallback answers at once, nothing to overlap
    assert not lim.may_defer(_ctx(limits))

