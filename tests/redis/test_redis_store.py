"""RedisStore against a real redis-server: tenants, keys, revocation seen by every replica, the ledger."""

from __future__ import annotations

import asyncio
import time

import pytest

from router.keys import create_key, hash_key, rotate_key
from router.store.base import TenantLimits, UsageRecord
from router.store.redis import RedisStore
from router.store.redis_ledger import GROUP


@pytest.fixture
async def store(redis_url):
    s = RedisStore.from_url(redis_url)
    yield s
    await s.close()


def rec(i: int, tenant: str = "t1", model: str = "m", ts: float | None = None, **kw) -> UsageRecord:
    return UsageRecord(request_id=f"r{i}", tenant_id=tenant, key_id="k", model=model, prompt_tokens=3,
                       completion_tokens=i, ts=ts if ts is not None else time.time(), **kw)


async def test_tenants_and_keys(store):
    t = await store.create_tenant("acme", allowed_models=["a", "b"], limits=TenantLimits(requests_per_minute=5))
    with pytest.raises(ValueError):
        await store.create_tenant("acme")
    assert (await store.get_tenant(t.id)).limits.requests_per_minute == 5
    assert (await store.find_tenant("acme")).id == t.id
    t.name, t.weight = "acme2", 2.0
    await store.update_tenant(t)
    assert await store.find_tenant("acme") is None and (await store.find_tenant("acme2")).weight == 2.0
    key, secret = await create_key(store, t.id, models=["a"])
    ident = await store.resolve_key(hash_key(secret))
    assert ident.tenant_id == t.id and ident.models == frozenset({"a"}) and ident.limits.requests_per_minute == 5
    assert [k.id for k in await store.list_keys(t.id)] == [key.id]
    assert [x.id for x in await store.list_tenants()] == [t.id]
    new, new_secret = await rotate_key(store, key.id)
    assert await store.resolve_key(hash_key(secret)) is None
    assert (await store.resolve_key(hash_key(new_secret))).key_id == new.id
    assert not await store.revoke_key(key.id)  # already revoked by the rotation
    assert await store.delete_tenant(t.id)
    assert await store.resolve_key(hash_key(new_secret)) is None and await store.list_tenants() == []


@pytest.mark.parametrize("mode", ["version", "pubsub"])
async def test_a_revoke_moves_the_epoch_every_replica_reads(redis_url, mode):
    a, b = RedisStore.from_url(redis_url), RedisStore.from_url(redis_url)
    a.auth_invalidation = b.auth_invalidation = mode
    if mode == "pubsub":
        from router.store.redis import _PubSubEpoch

        b._pubsub = _PubSubEpoch(b.client, b._channel, b.breaker)
    try:
        t = await a.create_tenant("x")
        key, _ = await create_key(a, t.id)
        before = await b.auth_epoch()
        assert await a.revoke_key(key.id)
        if mode == "pubsub":
            for _ in range(100):
                if await b.auth_epoch() != before:
                    break
                await asyncio.sleep(0.005)
        assert await b.auth_epoch() != before
    finally:
        await a.close()
        await b.close()


async def test_ledger_folds_each_request_once(store):
    await store.add_usage([rec(i) for i in range(10)])
    await store.add_usage([rec(3), rec(4)])  # a spool replay of records that had already arrived
    totals = await store.usage_totals()
    assert len(totals) == 1
    assert (totals[0].requests, totals[0].prompt_tokens, totals[0].completion_tokens) == (10, 30, sum(range(10)))
    records = await store.usage_records(tenant_id="t1")
    assert sorted(r.request_id for r in records) == sorted(f"r{i}" for i in range(10))
    assert await store.client.xlen(store.ledger.stream) == 0  # folded entries are acknowledged and deleted


async def test_a_batch_held_by_a_dead_consumer_is_claimed_and_counted_once(redis_url):
    dead = RedisStore.from_url(redis_url)
    live = RedisStore.from_url(redis_url)
    live.ledger.claim_idle_ms = 50
    try:
        await dead.add_usage([rec(i) for i in range(20)])
        await dead.ledger._ensure_group()
        # the dead consumer takes a batch and dies before folding it
        got = await dead.client.xreadgroup(GROUP, "dead-consumer", {dead.ledger.stream: ">"}, count=8)
        assert len(got[0][1]) == 8
        # ...and the meter's spool replays four records that had already reached the stream
        await dead.add_usage([rec(i) for i in range(4)])
        await asyncio.sleep(0.1)
        totals = await live.usage_totals()
        assert totals[0].requests == 20 and totals[0].completion_tokens == sum(range(20))
        pending = await live.client.xpending(live.ledger.stream, GROUP)
        assert pending["pending"] == 0
    finally:
        await dead.close()
        await live.close()


async def test_totals_are_exact_at_any_time_boundary(store):
    day = 86400.0
    d0 = 1_700_000_000 // 86400 * 86400  # a UTC midnight
    records = [rec(1, ts=d0 + 10), rec(2, ts=d0 + day / 2), rec(3, ts=d0 + day + 5, model="m2"),
               rec(4, tenant="t2", ts=d0 + day + 6), rec(5, ts=d0 + 2 * day + 1)]
    await store.add_usage(records)
    whole = await store.usage_totals()
    assert [(t.day, t.tenant_id, t.model, t.requests) for t in whole] == [
        ("2023-11-14", "t1", "m", 2), ("2023-11-15", "t1", "m2", 1), ("2023-11-15", "t2", "m", 1), ("2023-11-16", "t1", "m", 1)]
    # a range cutting the first day in half and ending mid third day
    cut = await store.usage_totals(since=d0 + 100, until=d0 + 2 * day + 0.5)
    assert [(t.day, t.tenant_id, t.model, t.requests, t.completion_tokens) for t in cut] == [
        ("2023-11-14", "t1", "m", 1, 2), ("2023-11-15", "t1", "m2", 1, 3), ("2023-11-15", "t2", "m", 1, 4)]
    only_t2 = await store.usage_totals(tenant_id="t2")
    assert [(t.day, t.requests) for t in only_t2] == [("2023-11-15", 1)]
    recs = await store.usage_records(since=d0 + 100, until=d0 + day + 6)
    assert [r.request_id for r in recs] == ["r2", "r3"]
    assert [r.request_id for r in await store.usage_records(limit=2)] == ["r1", "r2"]


async def test_background_aggregator_folds_while_gateway_runs(store):
    await store.start()
    await store.add_usage([rec(i) for i in range(5)])
    for _ in range(100):
        if store.ledger.folded == 5:
            break
        await asyncio.sleep(0.02)
    assert store.ledger.folded == 5


async def test_a_consumer_folds_what_it_read_before_a_failure_without_waiting_for_a_claim(store):
    store.ledger.claim_idle_ms = 3_600_000  # no claim could pick them up within the test
    await store.add_usage([rec(i) for i in range(6)])
    await store.ledger._ensure_group()
    # the aggregator read a batch, then Redis went away before the fold script ran
    got = await store.client.xreadgroup(GROUP, store.ledger.consumer, {store.ledger.stream: ">"}, count=6)
    assert len(got[0][1]) == 6
    store.ledger._own_pending = True  # what the aggregator's error path sets
    totals = await store.usage_totals()
    assert totals[0].requests == 6
    assert (await store.client.xpending(store.ledger.stream, GROUP))["pending"] == 0


async def test_the_ledger_script_names_days_as_python_does(store):
    # The fold names each record's UTC day in Lua (Redis has no date library): the same day as day_of,
    # across leap years, century rules, month ends and the instants either side of midnight.
    import random

    from router.store.redis_ledger import LUA_DAY, day_of

    rng = random.Random(7)
    stamps = [0.0, 86399.999, 86400.0, 951_782_400.0 - 0.001, 951_782_400.0, 951_868_800.0,  # 2000-02-29, 03-01
              4_107_542_400.0, 4_107_542_400.0 - 0.5, 1_709_164_800.0, 1_709_251_200.0 - 1e-3]  # 2100-03-01, 2024-02-29
    stamps += [rng.uniform(0, 4_200_000_000) for _ in range(300)]
    script = LUA_DAY + "local out = {} for i, ts in ipairs(ARGV) do out[i] = day_of(tonumber(ts)) end return out"
    got = await store.client.eval(script, 0, *[repr(t) for t in stamps])
    assert [d.decode() for d in got] == [day_of(t) for t in stamps]


async def test_malformed_ledger_entries_are_acknowledged_logged_and_the_rest_folded(store, caplog):
    await store.add_usage([rec(1), rec(2)])
    bad = [await store.client.xadd(store.ledger.stream, {b"r": raw})
           for raw in (b"not json", b'{"request_id": "r9"}', b'["a list"]')]
    await store.client.xadd(store.ledger.stream, {b"other": b"field"})
    await store.add_usage([rec(3)])
    with caplog.at_level("ERROR", logger="noor.ledger"):
        totals = await store.usage_totals()
    assert (totals[0].requests, totals[0].completion_tokens) == (3, 6)
    assert await store.client.xlen(store.ledger.stream) == 0
    assert (await store.client.xpending(store.ledger.stream, GROUP))["pending"] == 0
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "dropped 4 malformed ledger entries" in logged and bad[0].decode() in logged


async def test_the_ledger_folds_through_redis_py_too(redis_url):
    from router.store.redis import make_client

    s = RedisStore(make_client(redis_url), autopipeline=False)
    try:
        assert s.ledger._wire is None
        await s.add_usage([rec(i) for i in range(120)])  # more than two batches of 50
        totals = await s.usage_totals()
        assert (totals[0].requests, totals[0].completion_tokens) == (120, sum(range(120)))
        assert s.ledger.folded == 120
    finally:
        await s.close()


async def test_an_entry_deleted_while_pending_is_acknowledged_and_the_rest_folded(store):
    store.ledger.claim_idle_ms = 3_600_000
    await store.add_usage([rec(i) for i in range(3)])
    await store.ledger._ensure_group()
    got = await store.client.xreadgroup(GROUP, store.ledger.consumer, {store.ledger.stream: ">"}, count=3)
    await store.client.xdel(store.ledger.stream, got[0][1][1][0])  # gone from the stream, still pending here
    store.ledger._own_pending = True
    totals = await store.usage_totals()
    assert (totals[0].requests, totals[0].completion_tokens) == (2, 0 + 2)
    assert (await store.client.xpending(store.ledger.stream, GROUP))["pending"] == 0
