"""Limiter semantics, the same table for the Redis limiter (its Lua, against a real redis-server) and
the in-process one: sliding RPM/TPM windows, reserve then settle, concurrency, budgets, all-or-nothing,
and OpenAI's 429 shape and headers."""

from __future__ import annotations

import asyncio
import itertools

import pytest
import redis.asyncio

from models.catalog import ModelSpec
from router.context import RequestContext
from router.errors import OpenAIError
from router.limits.local import LocalLimiter
from router.limits.redis import RedisLimiter
from router.store.base import Identity, TenantLimits
from router.store.redis_link import Breaker, StoreUnavailable, make_client
from serving.backends.base import Usage

_ids = itertools.count()


def ctx(limits: TenantLimits, prompt: int = 10, max_tokens: int = 50, tenant: str = "t1") -> RequestContext:
    c = RequestContext(request_id=f"req_{next(_ids)}", kind="chat", body={})
    c.identity = Identity("key", tenant, "acme", frozenset({"*"}), limits)
    c.model = ModelSpec(name="m", pool="p")
    c.prompt_tokens, c.max_tokens = prompt, max_tokens
    return c


async def refused(limiter, c: RequestContext) -> OpenAIError:
    with pytest.raises(OpenAIError) as info:
        await limiter.reserve(c)
    return info.value


def redis_limiter(url: str, **kw) -> RedisLimiter:
    return RedisLimiter(make_client(url, socket_timeout_s=5.0), Breaker(0.2), **kw)


@pytest.fixture(params=["redis", "redis-unpipelined", "local"])
async def make(request, redis_url):
    made: list = []

    def build(**kw):
        if request.param == "local":
            lim = LocalLimiter(**kw)
        else:  # through the pipelined hiredis client, or through redis-py (autopipeline=False)
            lim = redis_limiter(redis_url, autopipeline=request.param == "redis", **kw)
        made.append(lim)
        return lim

    yield build
    for lim in made:
        await lim.close()


async def test_requests_per_minute_and_headers(make):
    lim = make()
    limits = TenantLimits(requests_per_minute=3)
    remaining = []
    for _ in range(3):
        c = ctx(limits)
        await lim.reserve(c)
        remaining.append(c.headers["x-ratelimit-remaining-requests"])
        assert c.headers["x-ratelimit-limit-requests"] == "3" and c.headers["x-ratelimit-reset-requests"] == "1m0s"
        await lim.settle(c, Usage(10, 5))
    assert remaining == ["2", "1", "0"]
    err = await refused(lim, ctx(limits))
    assert err.status == 429 and err.type == "requests" and err.code == "rate_limit_exceeded"
    assert 1 <= int(err.headers["retry-after"]) <= 60 and 59_000 <= int(err.headers["retry-after-ms"]) <= 60_000
    assert err.headers["x-ratelimit-remaining-requests"] == "0" and "x-should-retry" not in err.headers
    assert "Limit 3, Used 3" in err.message


async def test_tokens_are_reserved_then_settled_to_real_usage(make):
    lim = make()
    limits = TenantLimits(tokens_per_minute=100)
    a = ctx(limits, prompt=10, max_tokens=50)
    await lim.reserve(a)
    assert a.headers["x-ratelimit-remaining-tokens"] == "40"
    err = await refused(lim, ctx(limits, prompt=10, max_tokens=50))  # 60 + 60 > 100: refused up front
    assert err.type == "tokens" and "Used 60, Requested 60" in err.message
    await lim.settle(a, Usage(10, 5))  # it used 15: 45 go back
    b = ctx(limits, prompt=10, max_tokens=50)
    await lim.reserve(b)
    assert b.headers["x-ratelimit-remaining-tokens"] == str(100 - 15 - 60)
    await lim.settle(b, None)  # nothing generated (e.g. the engine failed): all of it goes back
    c = ctx(limits, prompt=10, max_tokens=75)
    await lim.reserve(c)
    assert c.headers["x-ratelimit-remaining-tokens"] == "0"


async def test_a_request_larger_than_the_limit_is_told_not_to_retry(make):
    lim = make()
    err = await refused(lim, ctx(TenantLimits(tokens_per_minute=100), prompt=20, max_tokens=100))
    assert err.status == 429 and "Request too large" in err.message and err.headers["x-should-retry"] == "false"


async def test_all_or_nothing(make):
    lim = make()
    limits = TenantLimits(requests_per_minute=5, tokens_per_minute=100, max_concurrent=5, token_budget=1000)
    a = ctx(limits, prompt=10, max_tokens=80)
    await lim.reserve(a)
    await refused(lim, ctx(limits, prompt=10, max_tokens=80))  # tokens refuse it...
    b = ctx(limits, prompt=1, max_tokens=1)
    await lim.reserve(b)  # ...and it took nothing from the other buckets
    assert b.headers["x-ratelimit-remaining-requests"] == "3"
    assert b.headers["x-ratelimit-remaining-budget"] == str(1000 - 90 - 2)


async def test_concurrency(make):
    lim = make()
    limits = TenantLimits(max_concurrent=2)
    a, b = ctx(limits), ctx(limits)
    await lim.reserve(a)
    await lim.reserve(b)
    err = await refused(lim, ctx(limits))
    assert "concurrent" in err.message and err.type == "requests"
    await lim.settle(a, Usage(1, 1))
    await lim.reserve(ctx(limits))


async def test_budget_stops_exactly_at_the_budget(make):
    lim = make()
    limits = TenantLimits(token_budget=100, budget_period="day")
    a = ctx(limits, prompt=10, max_tokens=50)
    await lim.reserve(a)
    await lim.settle(a, Usage(10, 30))  # 40 used
    b = ctx(limits, prompt=10, max_tokens=50)  # exactly the 60 left
    await lim.reserve(b)
    assert b.headers["x-ratelimit-remaining-budget"] == "0"
    await lim.settle(b, Usage(10, 50))
    err = await refused(lim, ctx(limits, prompt=1, max_tokens=1))
    assert err.type == "insufficient_quota" and err.code == "insufficient_quota"
    assert err.headers["x-should-retry"] == "false" and "Used 100" in err.message
    assert int(err.headers["retry-after"]) <= 86400


async def test_settling_twice_corrects_once(make):
    lim = make()
    limits = TenantLimits(tokens_per_minute=100, token_budget=100)
    a = ctx(limits, prompt=10, max_tokens=50)
    await lim.reserve(a)
    res = a.reservation
    await lim.settle(a, Usage(10, 0))
    a.reservation = res  # a settle retried after its reply was lost
    await lim.settle(a, Usage(10, 0))
    b = ctx(limits, prompt=10, max_tokens=80)
    await lim.reserve(b)
    assert b.headers["x-ratelimit-remaining-tokens"] == "0" and b.headers["x-ratelimit-remaining-budget"] == "0"


async def test_reserving_twice_charges_once(redis_url):
    lim = redis_limiter(redis_url)
    limits = TenantLimits(requests_per_minute=5, tokens_per_minute=100, max_concurrent=5, token_budget=100)
    a = ctx(limits, prompt=10, max_tokens=50)
    await lim.reserve(a)
    await lim.reserve(a)  # the script ran, its reply was lost, the client sent it again
    b = ctx(limits, prompt=10, max_tokens=30)
    await lim.reserve(b)
    assert b.headers["x-ratelimit-remaining-requests"] == "3" and b.headers["x-ratelimit-remaining-tokens"] == "0"
    assert b.headers["x-ratelimit-remaining-budget"] == "0"
    await lim.close()


@pytest.mark.parametrize("limits, header, left", [
    (TenantLimits(requests_per_minute=3), "x-ratelimit-remaining-requests", "1"),
    (TenantLimits(tokens_per_minute=150), "x-ratelimit-remaining-tokens", "40"),
    (TenantLimits(token_budget=150), "x-ratelimit-remaining-budget", "40"),
])
async def test_reserving_twice_charges_once_whichever_bucket_tells(redis_url, limits, header, left):
    """The script asks the first bucket set whether it holds the request already: each kind alone."""
    lim = redis_limiter(redis_url)
    tenant = f"once-{next(_ids)}"
    a = ctx(limits, prompt=10, max_tokens=45, tenant=tenant)
    await lim.reserve(a)
    await lim.reserve(a)
    b = ctx(limits, prompt=10, max_tokens=45, tenant=tenant)
    await lim.reserve(b)
    assert b.headers[header] == left
    await lim.close()


async def test_reserving_twice_holds_one_concurrency_slot(redis_url):
    lim = redis_limiter(redis_url)
    limits = TenantLimits(max_concurrent=2)
    tenant = f"once-{next(_ids)}"
    a = ctx(limits, tenant=tenant)
    await lim.reserve(a)
    await lim.reserve(a)
    await lim.reserve(ctx(limits, tenant=tenant))  # the second slot is still free
    await refused(lim, ctx(limits, tenant=tenant))
    await lim.close()


async def test_a_sliding_logs_keys_outlive_its_newest_entry_by_a_window(redis_url):
    """TTLs are set to 1.25 windows at most every quarter window, not on every request: a key never
    expires while an entry in it is inside the window, and a tenant that stops leaves nothing behind."""
    window_ms = 20_000  # a quarter window (5 s) is far more than this test's steps take, even on a loaded machine
    lim = redis_limiter(redis_url, window_s=window_ms / 1000)
    tenant = f"ttl-{next(_ids)}"
    limits = TenantLimits(requests_per_minute=100, tokens_per_minute=10_000)
    r = redis.asyncio.Redis.from_url(redis_url)
    names = [f"noor:rl:{{{tenant}}}:{k}" for k in ("rpm", "tpm", "tpm:amt")]
    try:
        await lim.reserve(ctx(limits, tenant=tenant))
        first = [await r.pttl(k) for k in names]
        assert all(window_ms < t <= window_ms * 5 // 4 for t in first), first
        await asyncio.sleep(0.2)
        t0 = asyncio.get_running_loop().time()
        await lim.reserve(ctx(limits, tenant=tenant))  # within a quarter window: TTLs not set again
        ttls = [await r.pttl(k) for k in names]
        since_ms = (asyncio.get_running_loop().time() - t0) * 1000
        assert all(t <= window_ms * 5 // 4 - 200 for t in ttls), ttls  # left to run down...
        assert all(t + since_ms >= window_ms for t in ttls), (ttls, since_ms)  # ...yet a window past the newest
    finally:
        await lim.close()
        await r.aclose()


async def test_the_window_slides(make):
    lim = make(window_s=0.4)
    limits = TenantLimits(requests_per_minute=2)
    await lim.reserve(ctx(limits))
    await asyncio.sleep(0.2)
    await lim.reserve(ctx(limits))
    err = await refused(lim, ctx(limits))
    wait_ms = int(err.headers["retry-after-ms"])
    assert 100 <= wait_ms <= 400  # the first request leaves the window ~0.2 s from now
    await asyncio.sleep(wait_ms / 1000 + 0.02)
    await lim.reserve(ctx(limits))  # one slot back, not two
    await refused(lim, ctx(limits))


async def test_tenants_without_limits_cost_nothing(make):
    lim = make()
    c = ctx(TenantLimits())
    await lim.reserve(c)
    assert c.reservation is None and c.headers == {}


# ---- Redis only: many replicas, leases, outages

async def test_two_replicas_share_one_token_window(redis_url):
    a, b = redis_limiter(redis_url), redis_limiter(redis_url)
    limits = TenantLimits(tokens_per_minute=1000)
    results = await asyncio.gather(
        *[(a if i % 2 else b).reserve(ctx(limits, prompt=5, max_tokens=5)) for i in range(300)], return_exceptions=True
    )
    admitted = sum(1 for r in results if r is None)
    assert admitted == 100, admitted  # 100 x 10 tokens: N in total, not N per replica
    assert all(isinstance(r, OpenAIError) and r.status == 429 for r in results if r is not None)
    await a.close()
    await b.close()


async def test_a_dead_replicas_concurrency_slots_expire(redis_url):
    limits = TenantLimits(max_concurrent=1)
    dead, live = redis_limiter(redis_url, lease_s=0.6), redis_limiter(redis_url, lease_s=0.6)
    c = ctx(limits)
    await dead.reserve(c)
    await asyncio.sleep(0.5)  # the live replica renews its leases: still held
    await refused(live, ctx(limits))
    await dead.close()  # dies without settling: nobody renews the lease any more
    await asyncio.sleep(0.7)
    await live.reserve(ctx(limits))
    await live.close()


async def test_closing_ends_the_lease_renewals_even_when_a_cancel_is_swallowed(redis_url):
    """redis-py can turn a cancel landing inside a pipeline's execute into a connection error; the
    maintenance loop survives those, so a single cancel left it renewing leases forever and close()
    waiting for it (a suite run hung there)."""
    limiter = redis_limiter(redis_url, lease_s=0.3)
    await limiter.reserve(ctx(TenantLimits(max_concurrent=1)))  # a lease to renew: the loop has work
    renew = limiter._renew_leases
    swallowed = 0

    async def renew_swallowing_cancels() -> None:
        nonlocal swallowed
        try:
            await renew()
            await asyncio.sleep(1.0)  # a slow round trip: the cancel lands in here
        except asyncio.CancelledError:
            swallowed += 1
            raise StoreUnavailable("what redis-py made of the cancel") from None

    limiter._renew_leases = renew_swallowing_cancels
    await asyncio.sleep(0.5)  # the loop is inside its first renewal
    await asyncio.wait_for(limiter.close(), 5)
    assert limiter._task is None and swallowed == 1


async def test_fail_open_and_fail_closed_when_redis_is_away():
    from tests.servers import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    limits = TenantLimits(requests_per_minute=2)
    open_ = redis_limiter(url, on_store_failure="open")
    for _ in range(2):
        c = ctx(limits)
        await open_.reserve(c)
        assert c.reservation.local
        await open_.settle(c, Usage(1, 1))
    assert open_.degraded
    await refused(open_, ctx(limits))  # limits still hold, locally
    closed = redis_limiter(url, on_store_failure="closed")
    err = await refused(closed, ctx(limits))
    assert err.status == 503 and err.code == "limits_unavailable"
    await open_.close()
    await closed.close()


def bounded(limits: TenantLimits, *, prompt: int, bound: int, max_tokens: int | None) -> tuple[RequestContext, list[int]]:
    """A request whose prompt is not counted yet: ``bound`` from validation, ``prompt`` once counted;
    the list records each count."""
    counts: list[int] = []

    def count() -> int:
        counts.append(prompt)
        return prompt

    c = RequestContext(request_id=f"req_{next(_ids)}", kind="chat", body={})
    c.identity = Identity("key", "t-bound", "acme", frozenset({"*"}), limits)
    c.model = ModelSpec(name="m", pool="p", context_length=4096)
    c.count_prompt, c.prompt_bound, c.max_tokens = count, bound, max_tokens
    return c, counts


async def test_a_short_prompt_reserves_its_bound_without_being_counted(make):
    lim = make()
    a, counts = bounded(TenantLimits(tokens_per_minute=1000), prompt=10, bound=60, max_tokens=50)
    await lim.reserve(a)
    assert counts == [] and a.headers["x-ratelimit-remaining-tokens"] == str(1000 - 110)
    await lim.settle(a, Usage(10, 5))  # the engine's real count replaces the bound
    b, _ = bounded(TenantLimits(tokens_per_minute=1000), prompt=10, bound=60, max_tokens=50)
    await lim.reserve(b)
    assert b.headers["x-ratelimit-remaining-tokens"] == str(1000 - 15 - 110)


async def test_a_refusal_at_the_bound_is_decided_again_on_the_exact_count(make):
    lim = make()
    limits = TenantLimits(tokens_per_minute=100)
    a, counts = bounded(limits, prompt=10, bound=60, max_tokens=50)  # 110 > 100 at the bound; 60 exact
    await lim.reserve(a)
    assert counts == [10] and a.headers["x-ratelimit-remaining-tokens"] == "40"
    b, counts = bounded(limits, prompt=10, bound=60, max_tokens=50)  # 60 + 60 > 100 even counted: refused
    err = await refused(lim, b)
    assert counts == [10] and err.type == "tokens" and "Used 60, Requested 60" in err.message


async def test_long_prompts_are_counted_and_no_max_tokens_costs_the_context(make):
    lim = make()
    a, counts = bounded(TenantLimits(tokens_per_minute=100_000), prompt=300, bound=2000, max_tokens=50)
    await lim.reserve(a)
    assert counts == [300] and a.headers["x-ratelimit-remaining-tokens"] == str(100_000 - 350)
    b, counts = bounded(TenantLimits(tokens_per_minute=100_000), prompt=300, bound=2000, max_tokens=None)
    await lim.reserve(b)  # prompt + the rest of the 4096-token context, whatever the prompt
    assert counts == [] and b.headers["x-ratelimit-remaining-tokens"] == str(100_000 - 350 - 4096)


async def test_a_reserve_begun_early_is_the_same_reserve_and_survives_a_script_flush(redis_url):
    """``begin_reserve`` (the overlapped path) queues the script at once; its answer is the same, the
    exact-count retry and the refusal too, and a Redis that lost its scripts (restarted) loads them."""
    lim = redis_limiter(redis_url)
    try:
        limits = TenantLimits(requests_per_minute=2, tokens_per_minute=100)
        await lim.reserve(ctx(limits))  # starts the limiter; the first request is reserved as ever
        r = redis.asyncio.Redis.from_url(redis_url)
        try:
            await r.script_flush()
        finally:
            await r.aclose()
        c = ctx(limits, prompt=10, max_tokens=20)
        pending = lim.begin_reserve(c)
        assert c.reservation is None  # queued, not yet answered
        await pending
        assert c.reservation is not None and c.reservation.cost == 30
        assert c.headers["x-ratelimit-remaining-requests"] == "0"
        third = ctx(limits)
        with pytest.raises(OpenAIError) as info:
            await lim.begin_reserve(third)
        assert info.value.status == 429 and third.reservation is None
    finally:
        await lim.close()


async def test_a_settle_nobody_waits_for_is_applied_before_the_next_reserve_and_after_a_script_flush(redis_url):
    """Without a concurrency slot, ``begin_settle`` returns nothing to await: the reply is handled where
    it lands. One connection keeps the order, so this process's next reserve sees the tokens given back;
    a Redis that lost its scripts gets the settle run again, and ``close`` waits for it."""
    lim = redis_limiter(redis_url)
    limits = TenantLimits(tokens_per_minute=100)
    try:
        a = ctx(limits, prompt=10, max_tokens=50)
        await lim.reserve(a)
        assert lim.begin_settle(a, Usage(10, 5)) is None and a.reservation is None
        b = ctx(limits, prompt=10, max_tokens=50)
        await lim.reserve(b)  # 15 + 60 <= 100: only if a's settle came first
        assert b.headers["x-ratelimit-remaining-tokens"] == str(100 - 15 - 60)
        r = redis.asyncio.Redis.from_url(redis_url)
        try:
            await r.script_flush()
            assert lim.begin_settle(b, None) is None  # meets NOSCRIPT: run again in a task
        finally:
            await r.aclose()
    finally:
        await lim.close()  # waits for settles in flight
    check = redis_limiter(redis_url)
    try:
        c = ctx(limits, prompt=10, max_tokens=75)
        await check.reserve(c)  # b gave its 60 back: 15 + 85 = 100
        assert c.headers["x-ratelimit-remaining-tokens"] == "0"
    finally:
        await check.close()


async def test_a_streams_reserve_is_written_at_once_a_short_requests_shares_the_loop_pass(redis_url):
    """A stream's first chunk waits for the reserve's answer: its script leaves before ``begin_reserve``
    returns (the engine request is built after). A short request's waits for this loop pass's others."""
    lim = redis_limiter(redis_url)
    try:
        limits = TenantLimits(tokens_per_minute=1000)
        await lim.reserve(ctx(limits))  # starts the limiter and connects
        wire = lim._wire._wire
        short = ctx(limits)
        pending_short = lim.begin_reserve(short)
        assert len(wire.out) == 1  # queued
        stream = ctx(limits)
        stream.stream = True
        pending_stream = lim.begin_reserve(stream)
        assert wire.out == []  # both written, in order
        await pending_short
        await pending_stream
        assert short.headers["x-ratelimit-remaining-tokens"] == str(1000 - 2 * 60)
        assert stream.headers["x-ratelimit-remaining-tokens"] == str(1000 - 3 * 60)
    finally:
        await lim.close()
