"""The Redis limiter through a Redis outage: budget usage served meanwhile and settlements that could not
be sent are applied once Redis is back, so an outage does not widen a budget."""

from __future__ import annotations

import asyncio
import time

import redis as redis_sync

from router.limits.periods import budget_period
from router.limits.redis import RedisLimiter
from router.store.base import TenantLimits
from router.store.redis_link import Breaker, make_client
from serving.backends.base import Usage
from tests.redis.test_limiter_semantics import ctx
from tests.redis_server import RedisServer


def budget_used(url: str, tenant: str) -> int:
    with redis_sync.Redis.from_url(url) as r:
        return int(r.get(f"noor:rl:{{{tenant}}}:budget:{budget_period('month', time.time())[0]}") or 0)


async def test_budget_and_settlements_catch_up_after_an_outage():
    limits = TenantLimits(token_budget=1000)
    with RedisServer(persist=True) as server:
        lim = RedisLimiter(make_client(server.url, socket_timeout_s=5.0), Breaker(0.1))
        try:
            a = ctx(limits, prompt=10, max_tokens=90)  # reserved on Redis: 100
            await lim.reserve(a)
            assert budget_used(server.url, "t1") == 100
            server.kill()
            await lim.settle(a, Usage(10, 20))  # cannot reach Redis: kept for later
            b = ctx(limits, prompt=10, max_tokens=90)
            await lim.reserve(b)  # fail-open: checked locally, from the budget Redis last reported
            assert b.reservation.local and lim.degraded
            assert b.headers["x-ratelimit-remaining-budget"] == str(1000 - 100 - 100)
            await lim.settle(b, Usage(10, 40))  # 50 tokens served while Redis was away
            server.start()
            for _ in range(100):
                if budget_used(server.url, "t1") == 30 + 50 and not lim._unsettled and not lim._owed:
                    break
                await asyncio.sleep(0.05)
            assert budget_used(server.url, "t1") == 30 + 50  # a settled to 30, b's 50 charged
            c = ctx(limits, prompt=1, max_tokens=1)
            await lim.reserve(c)
            assert not c.reservation.local and not lim.degraded
        finally:
            await lim.close()


async def test_a_settle_nobody_waits_for_that_meets_a_dead_redis_is_kept_and_applied_later():
    """A settle without a concurrency slot is not awaited by its request: its reply (here, the lost
    connection) is handled where it lands. It must still land in the backlog, not vanish."""
    limits = TenantLimits(token_budget=1000)
    with RedisServer(persist=True) as server:
        lim = RedisLimiter(make_client(server.url, socket_timeout_s=5.0), Breaker(0.1))
        try:
            a = ctx(limits, prompt=10, max_tokens=90)
            await lim.reserve(a)
            await lim.start()
            assert lim.begin_settle(a, Usage(10, 20)) is None  # queued; nobody waits for its reply
            server.kill()  # before it leaves (it may wait for company) or before its reply
            for _ in range(100):
                if lim._unsettled:
                    break
                await asyncio.sleep(0.02)
            assert lim._unsettled and lim.breaker.is_down
            server.start()
            for _ in range(100):
                if budget_used(server.url, "t1") == 30 and not lim._unsettled:
                    break
                await asyncio.sleep(0.05)
            assert budget_used(server.url, "t1") == 30 and not lim._unsettled
        finally:
            await lim.close()
