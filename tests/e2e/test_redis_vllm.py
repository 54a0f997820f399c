"""Limits on Redis with a real engine: two gateway processes, one Redis, a real vLLM serving SmolLM2.

Streams are where peers leak: a stream that would pass the remaining budget must be refused before it
starts (not cut, not allowed to run past), a budget must stop the tenant exactly at its value, and a
stream the client cuts must settle to the tokens really generated, giving the rest of its reservation
back at once. Token counts here are the engine's own.
"""

from __future__ import annotations

import time

import httpx
import pytest
import redis as redis_sync

from router.limits.periods import budget_period
from router.limits.reservation import BOUND_NOT_COUNTED
from router.store.base import TenantLimits
from tests.e2e.conftest import MODEL_A
from tests.processes import gateway_replica, write_catalog
from tests.redis_server import REDIS_BIN, RedisServer
from tests.store_helpers import new_tenant, wait_for_records

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(REDIS_BIN is None, reason="redis-server is not installed")]

ADMIN = "vllm-replicas-admin"
HELLO = [{"role": "user", "content": "Count from one to one hundred."}]


@pytest.fixture(scope="module")
def redis():
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def gws(tmp_path_factory, redis, vllm_url, smollm2_dir):
    tmp = tmp_path_factory.mktemp("vllm-replicas")
    catalog = write_catalog(tmp / "catalog.toml", vllm_url, model=MODEL_A, tokenizer=smollm2_dir / "tokenizer.json")
    procs = [gateway_replica(tmp / f"r{i}", redis_url=redis.url, catalog=catalog, admin_token=ADMIN) for i in range(2)]
    for p in procs:
        p.spawn()
    try:
        yield [p.wait_ready() for p in procs]
    finally:
        for p in procs:
            p.stop()


def stream(gw, secret: str, max_tokens: int, *, cut_after: int | None = None) -> tuple[int, dict, dict | None]:
    """A streamed chat request with usage; ``cut_after`` closes the connection after that many chunks.
    Returns (status, headers, final usage or error body)."""
    body = {"model": MODEL_A, "messages": HELLO, "max_tokens": max_tokens, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {secret}"}) as r:
        if r.status_code != 200:
            r.read()
            return r.status_code, dict(r.headers), r.json()
        usage, chunks = None, 0
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunks += 1
            if cut_after is not None and chunks >= cut_after:
                return 200, dict(r.headers), None
            usage = httpx.Response(200, content=line[6:]).json().get("usage") or usage
        return 200, dict(r.headers), usage


def redis_state(redis: RedisServer, tenant: str, period: str = "month") -> tuple[int, int]:
    """(tokens in the TPM window, tokens charged to this period's budget), read straight from Redis."""
    r = redis_sync.Redis.from_url(redis.url)
    try:
        window = int(r.hget(f"noor:rl:{{{tenant}}}:tpm:amt", "_sum") or 0)
        budget = int(r.get(f"noor:rl:{{{tenant}}}:budget:{budget_period(period, time.time())[0]}") or 0)
        return window, budget
    finally:
        r.close()


async def test_a_stream_cut_by_the_client_settles_to_its_real_usage(redis, gws):
    tenant, _, secret = await new_tenant(redis.url, "cut", TenantLimits(tokens_per_minute=20_000, token_budget=50_000))
    status, headers, _ = stream(gws[0], secret, max_tokens=1000, cut_after=6)
    assert status == 200 and int(headers["x-ratelimit-remaining-tokens"]) <= 20_000 - 1000  # the worst case was held
    rid = headers["x-request-id"]
    records = await wait_for_records(redis.url, tenant, 1)
    rec = next(r for r in records if r.request_id == rid)
    assert rec.outcome == "cancelled" and 5 <= rec.completion_tokens < 1000
    real = rec.prompt_tokens + rec.completion_tokens
    deadline = time.monotonic() + 10
    while redis_state(redis, tenant) != (real, real) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert redis_state(redis, tenant) == (real, real)  # the unused ~1000 tokens went back at once
    # and the other replica sees exactly that
    status, headers, usage = stream(gws[1], secret, max_tokens=5)
    held = 20_000 - real - int(headers["x-ratelimit-remaining-tokens"])  # what this request reserved
    # its prompt reserved at its byte bound (short prompts are not counted), never less than the real count
    assert status == 200 and usage["prompt_tokens"] + 5 <= held <= BOUND_NOT_COUNTED + 5


async def test_a_budget_stops_streams_exactly_at_the_budget_across_replicas(redis, gws):
    _, _, probe = await new_tenant(redis.url, "budget-probe", TenantLimits())
    prompt = stream(gws[0], probe, max_tokens=1)[2]["prompt_tokens"]
    budget = 4 * (prompt + 40) + prompt + 20  # four streams of 40, then 20 tokens of room for a fifth
    tenant, _, secret = await new_tenant(redis.url, "budget", TenantLimits(token_budget=budget, budget_period="day"))
    used, served, i = 0, 0, 0
    while True:  # streams of 40 tokens on alternating replicas until one would not fit
        status, headers, usage = stream(gws[i % 2], secret, max_tokens=40)
        i += 1
        if status != 200:
            break
        assert usage["completion_tokens"] == 40 and usage["prompt_tokens"] == prompt
        used += usage["total_tokens"]
        served += 1
    remaining = budget - used
    # refused up front although some budget is left: the stream could have run past it
    assert status == 429 and usage["error"]["type"] == "insufficient_quota" and 0 < remaining < prompt + 40
    assert headers["x-should-retry"] == "false" and int(headers["x-ratelimit-remaining-budget"]) == remaining
    assert served == 4 and remaining == prompt + 20
    status, _, usage = stream(gws[i % 2], secret, max_tokens=remaining - prompt)  # exactly what is left
    assert status == 200 and usage["total_tokens"] == remaining
    status, headers, err = stream(gws[(i + 1) % 2], secret, max_tokens=1)
    assert status == 429 and err["error"]["code"] == "insufficient_quota"
    assert headers["x-ratelimit-remaining-budget"] == "0"
    assert redis_state(redis, tenant, "day")[1] == budget
    records = await wait_for_records(redis.url, tenant, served + 1)
    assert len(records) == served + 1 and sum(r.prompt_tokens + r.completion_tokens for r in records) == budget
