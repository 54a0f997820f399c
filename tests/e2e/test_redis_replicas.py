"""Two gateway processes sharing one Redis, in front of a fast stub upstream (load, not model quality).

What peers get wrong, checked here with real processes: a TPM limit of N admits N tokens across all
replicas (not N per replica), a concurrency cap holds across replicas, usage survives Redis being killed
and restarted mid-load (every record counted, none twice), fail-open keeps serving and fail-closed
answers 503 (never a false 401), a revoke made after Redis came back is refused by every replica, and
the openai SDK gets a RateLimitError whose retry-after it can use.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import httpx
import openai
import pytest

from router.store.base import TenantLimits
from tests.processes import ServerProcess, stub_upstream, write_catalog
from tests.redis_server import REDIS_BIN, RedisServer
from tests.replicas import HELLO, MODEL, chat, replicas
from tests.store_helpers import new_tenant, revoke, wait_for_records

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(REDIS_BIN is None, reason="redis-server is not installed")]

@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    with stub_upstream(tmp_path_factory.mktemp("stub")) as server:
        yield server


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, stub, smollm2_dir) -> Path:
    return write_catalog(tmp_path_factory.mktemp("catalog") / "catalog.toml", stub.url, model=MODEL,
                         tokenizer=smollm2_dir / "tokenizer.json")


@pytest.fixture
def redis(tmp_path):
    with RedisServer(persist=True) as server:
        yield server


async def test_a_tpm_limit_holds_across_both_replicas(redis, catalog, tmp_path):
    limit = 3000
    tenant, _, secret = await new_tenant(redis.url, "tpm", TenantLimits(tokens_per_minute=limit))
    with replicas(tmp_path, redis, catalog) as gws:
        sem = asyncio.Semaphore(32)
        async with aiohttp.ClientSession() as s:

            async def one(i: int):
                async with sem:
                    return i % 2, await chat(s, gws[i % 2], secret)

            results = await asyncio.gather(*[one(i) for i in range(300)])
    ok = [(replica, body) for replica, (status, _, body) in results if status == 200]
    refused = [body for _, (status, _, body) in results if status == 429]
    assert len(ok) + len(refused) == 300
    used = sum(b["usage"]["total_tokens"] for _, b in ok)
    # N tokens in total across both replicas, and nearly all of them (demand is far above the limit).
    assert 0.9 * limit <= used <= limit, used
    assert {replica for replica, _ in ok} == {0, 1}
    assert all(b["error"]["type"] == "tokens" and b["error"]["code"] == "rate_limit_exceeded" for b in refused)


async def test_a_concurrency_cap_holds_across_both_replicas(redis, catalog, tmp_path, stub):
    tenant, _, secret = await new_tenant(redis.url, "conc", TenantLimits(max_concurrent=3))
    with replicas(tmp_path, redis, catalog) as gws:
        httpx.post(stub.url + "/stats/reset")
        async with aiohttp.ClientSession() as s:
            results = await asyncio.gather(*[chat(s, gws[i % 2], secret, stub_delay_ms=400) for i in range(30)])
            stats = httpx.get(stub.url + "/stats").json()
            statuses = [r[0] for r in results]
            assert stats["max_inflight"] <= 3 and statuses.count(200) >= 3 and statuses.count(429) > 0
            assert all(statuses.count(c) for c in (200, 429)) and set(statuses) == {200, 429}
            # every slot was given back: the next three run at once again
            again = await asyncio.gather(*[chat(s, gws[i % 2], secret) for i in range(3)])
            assert [r[0] for r in again] == [200, 200, 200]


async def test_the_sdk_sees_a_rate_limit_error_with_a_usable_retry_after(redis, catalog, tmp_path):
    _, _, secret = await new_tenant(redis.url, "sdk", TenantLimits(requests_per_minute=1))
    with replicas(tmp_path, redis, catalog, LIMITS__WINDOW_S="2") as gws:
        a = openai.OpenAI(base_url=gws[0].url + "/v1", api_key=secret, max_retries=0)
        b = openai.OpenAI(base_url=gws[1].url + "/v1", api_key=secret, max_retries=0)
        first = a.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO, max_tokens=5)
        assert first.headers["x-ratelimit-limit-requests"] == "1"
        assert first.headers["x-ratelimit-remaining-requests"] == "0"
        with pytest.raises(openai.RateLimitError) as info:
            b.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5)  # the other replica knows
        headers = info.value.response.headers
        assert info.value.code == "rate_limit_exceeded" and info.value.type == "requests"
        assert 1 <= int(headers["retry-after"]) <= 2 and 0 < int(headers["retry-after-ms"]) <= 2000
        # The SDK's own retry, guided by retry-after, gets through once the window has slid.
        patient = openai.OpenAI(base_url=gws[1].url + "/v1", api_key=secret, max_retries=3)
        t0 = time.monotonic()
        resp = patient.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5)
        assert resp.choices[0].message.content and time.monotonic() - t0 < 5


async def _load(gws: list[ServerProcess], secret: str, seconds: float, rate: float, during=None) -> list[tuple[int, str]]:
    """Open-loop load at ``rate`` req/s over both replicas; ``during(t)`` is called as time passes."""
    out: list[tuple[int, str]] = []
    async with aiohttp.ClientSession() as s:

        async def one(i: int) -> None:
            status, headers, _ = await chat(s, gws[i % 2], secret, max_tokens=8)
            out.append((status, headers.get("x-request-id", "")))

        tasks, t0, i = [], time.monotonic(), 0
        while (elapsed := time.monotonic() - t0) < seconds:
            if during is not None:
                during(elapsed)
            tasks.append(asyncio.create_task(one(i)))
            i += 1
            await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
        await asyncio.gather(*tasks)
    return out


class Outage:
    """Kill Redis at ``down_at`` seconds into the load and start it again (same port, same data) at ``up_at``."""

    def __init__(self, redis: RedisServer, down_at: float, up_at: float) -> None:
        self.redis, self.down_at, self.up_at, self.state = redis, down_at, up_at, "up"

    def __call__(self, t: float) -> None:
        if self.state == "up" and t >= self.down_at:
            self.redis.kill()
            self.state = "down"
        elif self.state == "down" and t >= self.up_at:
            self.redis.start()
            self.state = "back"


@pytest.mark.parametrize("auth", ["version", "pubsub"])
async def test_redis_killed_mid_load_fail_open_loses_no_usage_and_revoke_works_after(redis, catalog, tmp_path, auth):
    tenant, key_id, secret = await new_tenant(redis.url, "outage", TenantLimits(requests_per_minute=100_000, tokens_per_minute=10_000_000))
    with replicas(tmp_path, redis, catalog, STORE__AUTH_INVALIDATION=auth) as gws:
        results = await _load(gws, secret, seconds=6.0, rate=60, during=Outage(redis, 1.5, 3.5))
        statuses = [s for s, _ in results]
        assert statuses.count(200) == len(results), {s: statuses.count(s) for s in set(statuses)}
        ok_ids = {rid for s, rid in results if s == 200}
        records = await wait_for_records(redis.url, tenant, len(ok_ids))
        ids = [r.request_id for r in records]
        assert len(ids) == len(set(ids)) == len(ok_ids) and set(ids) == ok_ids  # none lost, none twice
        assert all(r.completion_tokens == 8 for r in records)
        logs = "".join(g.log() for g in gws)
        assert "enforcing limits locally" in logs and "Redis reachable again" in logs
        # a key revoked after Redis came back fails at once on both replicas
        assert await revoke(redis.url, key_id)
        async with aiohttp.ClientSession() as s:
            assert [(await chat(s, g, secret))[0] for g in gws] == [401, 401]


async def test_fail_closed_answers_503_not_401_and_recovers(redis, catalog, tmp_path):
    limited, _, limited_secret = await new_tenant(redis.url, "limited", TenantLimits(requests_per_minute=100_000))
    free, _, free_secret = await new_tenant(redis.url, "free", TenantLimits())
    _, _, unseen_secret = await new_tenant(redis.url, "unseen", TenantLimits())  # valid, never used yet
    with replicas(tmp_path, redis, catalog, LIMITS__ON_STORE_FAILURE="closed") as gws:
        async with aiohttp.ClientSession() as s:
            for g in gws:  # both keys known (cached) by both replicas
                assert (await chat(s, g, limited_secret))[0] == 200
                assert (await chat(s, g, free_secret))[0] == 200
            redis.kill()
            during = [await chat(s, g, sec) for g in gws for sec in (limited_secret, free_secret)]
            assert [d[0] for d in during] == [503, 200, 503, 200]
            assert during[0][2]["error"]["code"] == "limits_unavailable" and during[0][1]["retry-after"] == "1"
            # a valid key no replica has cached yet cannot be checked: 503, never a false 401
            status, _, body = await chat(s, gws[0], unseen_secret)
            assert status == 503 and body["error"]["code"] == "store_unavailable"
            redis.start()
            await asyncio.sleep(0.5)
            assert [(await chat(s, g, limited_secret))[0] for g in gws] == [200, 200]
        records = await wait_for_records(redis.url, free, 4)
        assert len(records) == 4  # the two served during the outage came back from the spool
