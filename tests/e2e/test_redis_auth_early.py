"""A cached key goes ahead while its auth epoch is read (the read shares the limiter's round trip), and
still nothing is served on a stale identity: a key revoked elsewhere fails its very next request, with
401 before any other error, and the reservation made meanwhile is given back; limits changed elsewhere
apply to the very next request. A real gateway process on a real Redis, in front of the stub upstream.
"""

from __future__ import annotations

import aiohttp
import pytest

from router.store.base import TenantLimits
from router.store.redis import RedisStore
from tests.processes import gateway_replica, stub_upstream, write_catalog
from tests.redis_server import REDIS_BIN, RedisServer
from tests.store_helpers import new_tenant, revoke

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(REDIS_BIN is None, reason="redis-server is not installed")]

MODEL = "stub-model"
HELLO = [{"role": "user", "content": "Say hello in one word."}]


@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    with stub_upstream(tmp_path_factory.mktemp("stub")) as server:
        yield server


@pytest.fixture
def gateway(tmp_path, stub, smollm2_dir):
    catalog = write_catalog(tmp_path / "catalog.toml", stub.url, model=MODEL, tokenizer=smollm2_dir / "tokenizer.json")
    with RedisServer() as redis:
        gw = gateway_replica(tmp_path / "gw", redis_url=redis.url, catalog=catalog, admin_token="admin")
        gw.spawn()
        gw.wait_ready()
        try:
            yield gw, redis
        finally:
            gw.stop()


async def _chat(session: aiohttp.ClientSession, url: str, secret: str, **body) -> tuple[int, dict]:
    payload = {"model": MODEL, "messages": HELLO, "max_tokens": 5, **body}
    async with session.post(url + "/v1/chat/completions", json=payload, headers={"Authorization": f"Bearer {secret}"}) as r:
        return r.status, await r.json(content_type=None)


async def test_revoked_elsewhere_fails_next_request_and_its_reservation_is_returned(gateway):
    gw, redis = gateway
    tenant_id, key_id, secret = await new_tenant(redis.url, "early", TenantLimits(max_concurrent=1, tokens_per_minute=10**6))
    store = RedisStore.from_url(redis.url)
    try:
        from router.keys import create_key

        _, other = await create_key(store, tenant_id, name="other")
    finally:
        await store.close()
    async with aiohttp.ClientSession() as s:
        assert (await _chat(s, gw.url, secret))[0] == 200  # the key is cached now
        assert await revoke(redis.url, key_id)
        status, body = await _chat(s, gw.url, secret)
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        # a revoked key with a bad request is refused as a bad key, not as a bad request
        status, body = await _chat(s, gw.url, secret, max_tokens=-1)
        assert status == 401
        # the only concurrency slot was given back: the tenant's other key is served at once
        assert (await _chat(s, gw.url, other))[0] == 200


async def test_limits_changed_elsewhere_apply_to_the_next_request(gateway):
    gw, redis = gateway
    tenant_id, _, secret = await new_tenant(redis.url, "changing", TenantLimits())
    async with aiohttp.ClientSession() as s:
        assert [(await _chat(s, gw.url, secret))[0] for _ in range(3)] == [200, 200, 200]
        store = RedisStore.from_url(redis.url)
        try:
            tenant = await store.get_tenant(tenant_id)
            assert tenant is not None
            tenant.limits = TenantLimits(requests_per_minute=1)
            await store.update_tenant(tenant)
        finally:
            await store.close()
        assert [(await _chat(s, gw.url, secret))[0] for _ in range(2)] == [200, 429]
