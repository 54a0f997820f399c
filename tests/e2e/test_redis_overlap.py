"""The limits' round trip to Redis overlapped with the engine request's opening (``limits.overlap``).

Two real gateway replicas on one Redis, in front of the stub upstream. Replica A learns from its last
decision that the tenant has ample room; replica B then spends the tenant's rate limit. A's next
request goes to the engine while its limits are checked, is refused, and the client sees only the 429
(stream or not): the engine request is aborted, nothing is billed, and A counts the waste. Its next
request is checked first again and never reaches the engine. With ``limits.overlap`` off, a refused
request never reaches the engine at all. A key revoked while cached is still refused with 401.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import httpx
import pytest

from router.store.base import TenantLimits
from tests.processes import stub_upstream, write_catalog
from tests.redis_server import REDIS_BIN, RedisServer
from tests.replicas import MODEL, chat, replicas
from tests.store_helpers import new_tenant, revoke, wait_for_records
from tests.telemetry_helpers import Samples

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(REDIS_BIN is None, reason="redis-server is not installed")]

RPM = 8


@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    # 20 ms per token: a 50-token stream runs for a second unless it is aborted
    with stub_upstream(tmp_path_factory.mktemp("stub"), token_ms=20) as server:
        yield server


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, stub, smollm2_dir):
    return write_catalog(tmp_path_factory.mktemp("catalog") / "catalog.toml", stub.url, model=MODEL,
                         tokenizer=smollm2_dir / "tokenizer.json")


@pytest.fixture
def redis():
    with RedisServer() as server:
        yield server


def _stub_stats(stub) -> dict:
    return httpx.get(stub.url + "/stats").json()


async def _spend_elsewhere(s: aiohttp.ClientSession, gw, secret: str, n: int) -> None:
    results = [await chat(s, gw, secret, max_tokens=1) for _ in range(n)]
    assert [r[0] for r in results] == [200] * n


async def test_a_refusal_found_after_the_open_aborts_the_engine_request_and_bills_nothing(redis, catalog, stub, tmp_path):
    tenant_id, _, secret = await new_tenant(redis.url, "overlap", TenantLimits(requests_per_minute=RPM))
    with replicas(tmp_path, redis, catalog) as (a, b):
        async with aiohttp.ClientSession() as s:
            assert (await chat(s, a, secret, max_tokens=1))[0] == 200  # A: 7 of 8 left, 5 beyond the headroom
            await _spend_elsewhere(s, b, secret, RPM - 1)  # B takes the rest

            seen = _stub_stats(stub)["requests"]
            started = time.monotonic()
            status, headers, body = await chat(s, a, secret, stream=True, max_tokens=50)
            assert status == 429, body
            assert time.monotonic() - started < 0.9  # not after the engine's whole stream
            assert "data:" not in body["text"]  # the client saw no chunk, only the error
            assert '"rate_limit_exceeded"' in body["text"] and int(headers["retry-after"]) >= 1
            assert headers["x-ratelimit-remaining-requests"] == "0"
            assert _stub_stats(stub)["requests"] == seen + 1  # it did reach the engine (the overlap)
            deadline = time.monotonic() + 5
            while _stub_stats(stub)["inflight"] and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert _stub_stats(stub)["inflight"] == 0  # and was aborted there
            assert Samples.scrape(a.url + "/metrics").get("noor_refused_after_open_total") == 1

            # A knows now: the next request is checked first and never reaches the engine
            status, _, body = await chat(s, a, secret)
            assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"
            assert _stub_stats(stub)["requests"] == seen + 1
            assert Samples.scrape(a.url + "/metrics").get("noor_refused_after_open_total") == 1

        records = await wait_for_records(redis.url, tenant_id, RPM)
        await asyncio.sleep(0.5)  # a record for a refused request would have landed by now
        assert len(await wait_for_records(redis.url, tenant_id, RPM)) == len(records) == RPM


async def test_with_overlap_off_a_refused_request_never_reaches_the_engine(redis, catalog, stub, tmp_path):
    _, _, secret = await new_tenant(redis.url, "sequential", TenantLimits(requests_per_minute=RPM))
    with replicas(tmp_path, redis, catalog, LIMITS__OVERLAP="false") as (a, b):
        async with aiohttp.ClientSession() as s:
            assert (await chat(s, a, secret, max_tokens=1))[0] == 200
            await _spend_elsewhere(s, b, secret, RPM - 1)
            seen = _stub_stats(stub)["requests"]
            for stream in (True, False):
                status, _, _ = await chat(s, a, secret, stream=stream, max_tokens=1)
                assert status == 429
            assert _stub_stats(stub)["requests"] == seen
            assert Samples.scrape(a.url + "/metrics").get("noor_refused_after_open_total") == 0


async def test_a_key_revoked_while_cached_is_refused_though_its_check_overlapped(redis, catalog, stub, tmp_path):
    tenant_id, key_id, secret = await new_tenant(redis.url, "revoked", TenantLimits(requests_per_minute=1000))
    with replicas(tmp_path, redis, catalog, n=1) as (a,):
        async with aiohttp.ClientSession() as s:
            for _ in range(2):  # the key cached, and the tenant's room learned
                assert (await chat(s, a, secret, max_tokens=1))[0] == 200
            assert await revoke(redis.url, key_id)
            for stream in (True, False):
                status, _, body = await chat(s, a, secret, stream=stream, max_tokens=1)
                assert status == 401, body
        records = await wait_for_records(redis.url, tenant_id, 2)
        await asyncio.sleep(0.5)
        assert len(await wait_for_records(redis.url, tenant_id, 2)) == len(records) == 2
