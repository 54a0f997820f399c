"""The shared store for many gateway replicas: tenants, keys and the usage ledger on Redis.

Layout (every key under one prefix, ``noor:`` by default):

- ``tenant:{id}`` (JSON), ``tenants`` (zset by creation time), ``tenant_name:{name}`` → id;
- ``key:{id}`` (JSON, the hash of the secret but never the secret), ``keyhash:{sha256}`` → key id
  (present only while the key is active), ``tenant_keys:{tenant}`` (zset);
- ``auth:epoch``: a counter every mutation of tenants or keys increments in the same transaction, and
  ``auth:changed``, a channel each mutation publishes on;
- the usage ledger (``usage:*``, see ``redis_ledger``).

Each replica caches key lookups (``router/auth.py``) and drops its cache when the auth epoch moves. Two
ways to see it move, chosen in settings: ``version`` reads the counter once per request (one GET: a
revoke is refused by the very next request at every replica), ``pubsub`` keeps a subscription open and
reads nothing per request (a revoke lands after the publish reaches the replica, well under a millisecond
on a LAN, and a lost subscription drops the cache when it comes back).

A key lookup (on a cache miss) is one round trip: a Lua script follows hash → key → tenant.
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import time
import uuid
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Literal

import orjson
import redis.asyncio as aioredis
from redis.exceptions import WatchError

from router.store.base import (
    ApiKey,
    Identity,
    Store,
    Tenant,
    TenantLimits,
    UsageRecord,
    UsageTotal,
    effective_models,
)
from router.store.redis_ledger import UsageLedger, day_of
from router.store.redis_link import REDIS_DOWN, Breaker, StoreUnavailable, make_client
from router.store.redis_wire import PipelinedRedis

if TYPE_CHECKING:
    from noor.settings import StoreSettings

log = logging.getLogger("noor.store.redis")

_RESOLVE = """
local p = ARGV[1]
local id = redis.call('GET', p .. 'keyhash:' .. ARGV[2])
if not id then return false end
local k = redis.call('GET', p .. 'key:' .. id)
if not k then return false end
local t = redis.call('GET', p .. 'tenant:' .. cjson.decode(k)['tenant_id'])
if not t then return false end
return {k, t}
"""


def _tenant(raw: bytes) -> Tenant:
    d = orjson.loads(raw)
    d["limits"] = TenantLimits(**d["limits"])
    return Tenant(**d)


def _key(raw: bytes) -> ApiKey:
    return ApiKey(**orjson.loads(raw))


class RedisStore(Store):
    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "noor:",
        breaker: Breaker | None = None,
        auth_invalidation: Literal["version", "pubsub"] = "version",
        ledger_aggregate: bool = True,
        ledger_batch: int = 20,
        ledger_claim_idle_s: float = 30.0,
        retention_days: int = 90,
        ledger_poll_s: float = 0.25,
        autopipeline: bool = True,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.breaker = breaker or Breaker()
        self.auth_invalidation = auth_invalidation
        self.ledger_aggregate = ledger_aggregate
        # The request path's commands (the epoch GET, the limiter's scripts, usage appends) go through one
        # pipelined connection rather than redis-py's pool: ~12 us per command instead of ~70 (redis_wire.py).
        # autopipeline=False keeps them on redis-py, one round trip each.
        self.wire = PipelinedRedis.like(client) if autopipeline else None
        self.ledger = UsageLedger(
            client, self.breaker, prefix=prefix, batch=ledger_batch, claim_idle_s=ledger_claim_idle_s,
            retention_days=retention_days, poll_s=ledger_poll_s, wire=self.wire,
        )
        self._epoch_key = prefix + "auth:epoch"
        self._channel = prefix + "auth:changed"
        self._resolve = client.register_script(_RESOLVE)
        self._pubsub = _PubSubEpoch(client, self._channel, self.breaker) if auth_invalidation == "pubsub" else None
        self.auth_epoch_is_remote = self._pubsub is None  # version: a GET per request

    @classmethod
    def from_url(cls, url: str, options: StoreSettings | None = None) -> RedisStore:
        if options is None:
            return cls(make_client(url))
        client = make_client(
            url, connect_timeout_s=options.redis_connect_timeout_s, socket_timeout_s=options.redis_socket_timeout_s,
            max_connections=options.redis_max_connections,
        )
        return cls(
            client, prefix=options.redis_prefix, breaker=Breaker(options.redis_retry_after_s),
            auth_invalidation=options.auth_invalidation, ledger_aggregate=options.ledger_aggregate,
            ledger_batch=options.ledger_batch, ledger_claim_idle_s=options.ledger_claim_idle_s,
            retention_days=options.usage_records_retention_days,
            ledger_poll_s=options.ledger_poll_s,
            autopipeline=options.redis_autopipeline,
        )

    def _k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def start(self) -> None:
        if self._pubsub is not None:
            self._pubsub.start()
        if self.ledger_aggregate:
            self.ledger.start()

    async def close(self) -> None:
        await self.ledger.stop()
        if self._pubsub is not None:
            await self._pubsub.close()
        if self.wire is not None:
            await self.wire.close()
        await self.client.aclose()

    async def _mutate(self, pipe: aioredis.client.Pipeline) -> list:
        """Execute a MULTI that changes tenants or keys, moving the auth epoch and telling subscribers."""
        pipe.incr(self._epoch_key)
        pipe.publish(self._channel, b"1")
        return await self.breaker.call(pipe.execute)

    # ---- tenants
    async def create_tenant(self, name, *, allowed_models=None, limits=None, weight=1.0, priority="interactive") -> Tenant:
        t = Tenant(
            id="ten_" + uuid.uuid4().hex[:16], name=name, allowed_models=list(allowed_models or ["*"]),
            limits=limits or TenantLimits(), weight=weight, priority=priority,
        )
        name_key = self._k("tenant_name", name)

        async def go() -> bool:
            async with self.client.pipeline(transaction=True) as pipe:
                await pipe.watch(name_key)
                if await pipe.exists(name_key):
                    return False
                pipe.multi()
                pipe.set(name_key, t.id)
                pipe.set(self._k("tenant", t.id), orjson.dumps(t))
                pipe.zadd(self._k("tenants"), {t.id: t.created_at})
                pipe.incr(self._epoch_key)
                pipe.publish(self._channel, b"1")
                try:
                    await pipe.execute()
                except WatchError:
                    return False
                return True

        if not await self.breaker.call(go):
            raise ValueError(f"a tenant named {name!r} exists already")
        return t

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        raw = await self.breaker.call(lambda: self.client.get(self._k("tenant", tenant_id)))
        return _tenant(raw) if raw else None

    async def find_tenant(self, name: str) -> Tenant | None:
        tid = await self.breaker.call(lambda: self.client.get(self._k("tenant_name", name)))
        return await self.get_tenant(tid.decode()) if tid else None

    async def list_tenants(self) -> list[Tenant]:
        async def go() -> list[bytes | None]:
            ids = await self.client.zrange(self._k("tenants"), 0, -1)
            return await self.client.mget([self._k("tenant", i.decode()) for i in ids]) if ids else []

        return [_tenant(raw) for raw in await self.breaker.call(go) if raw]

    async def update_tenant(self, tenant: Tenant) -> None:
        old = await self.get_tenant(tenant.id)
        if old is None:
            return
        pipe = self.client.pipeline(transaction=True)
        if old.name != tenant.name:
            pipe.delete(self._k("tenant_name", old.name))
            pipe.set(self._k("tenant_name", tenant.name), tenant.id)
        pipe.set(self._k("tenant", tenant.id), orjson.dumps(tenant))
        await self._mutate(pipe)

    async def delete_tenant(self, tenant_id: str) -> bool:
        tenant = await self.get_tenant(tenant_id)
        if tenant is None:
            return False
        keys = await self.list_keys(tenant_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self._k("tenant", tenant_id), self._k("tenant_name", tenant.name), self._k("tenant_keys", tenant_id))
        pipe.zrem(self._k("tenants"), tenant_id)
        for key in keys:
            pipe.delete(self._k("key", key.id), self._k("keyhash", key.key_hash))
        await self._mutate(pipe)
        return True

    # ---- keys
    async def add_key(self, key: ApiKey) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self._k("key", key.id), orjson.dumps(key))
        if key.active:
            pipe.set(self._k("keyhash", key.key_hash), key.id)
        pipe.zadd(self._k("tenant_keys", key.tenant_id), {key.id: key.created_at})
        await self._mutate(pipe)

    async def get_key(self, key_id: str) -> ApiKey | None:
        raw = await self.breaker.call(lambda: self.client.get(self._k("key", key_id)))
        return _key(raw) if raw else None

    async def list_keys(self, tenant_id: str) -> list[ApiKey]:
        async def go() -> list[bytes | None]:
            ids = await self.client.zrange(self._k("tenant_keys", tenant_id), 0, -1)
            return await self.client.mget([self._k("key", i.decode()) for i in ids]) if ids else []

        return [_key(raw) for raw in await self.breaker.call(go) if raw]

    async def revoke_key(self, key_id: str) -> bool:
        """Mark the key revoked and drop its hash index, atomically with the epoch bump (WATCH/MULTI)."""
        name = self._k("key", key_id)

        async def go() -> bool:
            async with self.client.pipeline(transaction=True) as pipe:
                for _ in range(16):
                    try:
                        await pipe.watch(name)
                        raw = await pipe.get(name)
                        if raw is None:
                            return False
                        key = _key(raw)
                        if not key.active:
                            return False
                        key.revoked_at = time.time()
                        pipe.multi()
                        pipe.set(name, orjson.dumps(key))
                        pipe.delete(self._k("keyhash", key.key_hash))
                        pipe.incr(self._epoch_key)
                        pipe.publish(self._channel, b"1")
                        await pipe.execute()
                        return True
                    except WatchError:
                        continue
            raise RuntimeError(f"could not revoke {key_id}: too much contention")

        return await self.breaker.call(go)

    async def resolve_key(self, key_hash: str) -> Identity | None:
        found = await self.breaker.call(lambda: self._resolve(args=[self.prefix, key_hash]))
        if not found:
            return None
        key, tenant = _key(found[0]), _tenant(found[1])
        if not key.active:
            return None
        return Identity(
            key_id=key.id, tenant_id=tenant.id, tenant_name=tenant.name, models=effective_models(tenant, key),
            limits=tenant.limits, weight=tenant.weight, priority=tenant.priority,
        )

    async def auth_epoch(self) -> object:
        if self._pubsub is not None:
            return await self._pubsub.current()
        if self.wire is None:
            return await self.breaker.call(lambda: self.client.get(self._epoch_key))
        return await self.breaker.call(lambda: self.wire.execute("GET", self._epoch_key))

    def auth_epoch_soon(self) -> Awaitable[object]:
        """The GET queued on the pipelined connection now (it leaves with the limiter's script); its reply
        awaited later through the breaker, without a task."""
        if self._pubsub is None and self.wire is not None and not self.breaker.is_down:
            sent = self.wire.queue("GET", self._epoch_key)
            if sent is not None:
                return self.breaker.call(lambda: sent)
        return super().auth_epoch_soon()

    # ---- usage
    async def add_usage(self, records: list[UsageRecord]) -> None:
        await self.ledger.append(records)

    async def _days(self, since: float | None, until: float | None) -> list[str]:
        lo = "[" + day_of(since) if since is not None else "-"
        hi = "[" + day_of(until) if until is not None else "+"
        return [d.decode() for d in await self.client.zrangebylex(self._k("usage", "days"), lo, hi)]

    async def _tenants_with_usage(self, tenant_id: str | None) -> list[str]:
        if tenant_id is not None:
            return [tenant_id]
        return sorted(t.decode() for t in await self.client.smembers(self._k("usage", "tenants")))

    async def _raw_records(self, tenants: list[str], since: float | None, until: float | None, limit: int | None) -> list[UsageRecord]:
        lo = since if since is not None else "-inf"
        hi = f"({until}" if until is not None else "+inf"
        out: list[UsageRecord] = []
        for tenant in tenants:
            kw = {"start": 0, "num": limit} if limit is not None else {}
            rows = await self.client.zrangebyscore(self._k("usage", "records", tenant), lo, hi, **kw)
            out.extend(UsageRecord(**orjson.loads(r)) for r in rows)
        out.sort(key=lambda r: r.ts)
        return out[:limit] if limit is not None else out

    async def usage_totals(self, *, tenant_id=None, since=None, until=None) -> list[UsageTotal]:
        """Whole days inside [since, until) come from the folded per-day hashes; a day the range cuts
        through is summed from its raw records, so the answer is exact at any boundary."""
        await self.ledger.catch_up()

        async def go() -> list[UsageTotal]:
            totals: dict[tuple[str, str, str], list[int]] = {}
            for day in await self._days(since, until):
                start = float(calendar.timegm(time.strptime(day, "%Y-%m-%d")))
                end = start + 86400
                if (since is None or since <= start) and (until is None or end <= until):
                    combos = [c.decode().split("\n", 1) for c in await self.client.smembers(self._k("usage", "combos", day))]
                    combos = [(t, m) for t, m in combos if tenant_id is None or t == tenant_id]
                    pipe = self.client.pipeline(transaction=False)
                    for t, m in combos:
                        pipe.hmget(self._k("usage", "day", day, t, m), "requests", "prompt_tokens", "completion_tokens")
                    for (t, m), vals in zip(combos, await pipe.execute(), strict=True):
                        totals[(day, t, m)] = [int(v or 0) for v in vals]
                else:
                    lo, hi = max(start, since or start), min(end, until or end)
                    for rec in await self._raw_records(await self._tenants_with_usage(tenant_id), lo, hi, None):
                        row = totals.setdefault((day, rec.tenant_id, rec.model), [0, 0, 0])
                        row[0] += 1
                        row[1] += rec.prompt_tokens
                        row[2] += rec.completion_tokens
            return [UsageTotal(d, t, m, *v) for (d, t, m), v in sorted(totals.items())]

        return await self.breaker.call(go)

    async def usage_records(self, *, tenant_id=None, since=None, until=None, limit=None) -> list[UsageRecord]:
        await self.ledger.catch_up()

        async def go() -> list[UsageRecord]:
            return await self._raw_records(await self._tenants_with_usage(tenant_id), since, until, limit)

        return await self.breaker.call(go)


class _PubSubEpoch:
    """The auth epoch without a read per request: a subscription counts published changes.

    The epoch is (connection generation, changes seen). Every (re)subscription starts a new generation,
    so whatever was published while the subscription was down drops the cache anyway. While it is down,
    ``current`` raises, and the authenticator serves keys from its cache, as for any store outage.
    """

    def __init__(self, client: aioredis.Redis, channel: str, breaker: Breaker) -> None:
        self._client = client
        self._channel = channel
        self._breaker = breaker
        self._generation = 0
        self._changes = 0
        self._connected = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="auth-pubsub")

    async def current(self) -> tuple[int, int]:
        self.start()
        if self._generation == 0:  # never subscribed yet: give the first subscription a moment
            try:
                await asyncio.wait_for(self._connected.wait(), 2.0)
            except TimeoutError:
                pass
        if not self._connected.is_set():
            raise StoreUnavailable("the auth invalidation subscription is down")
        return self._generation, self._changes

    async def _run(self) -> None:
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                # Wait for the server's confirmation: from then on no change can slip past.
                while (msg := await pubsub.get_message(timeout=1.0)) is None or msg["type"] != "subscribe":
                    pass
                # A new generation drops every replica's key cache, so the lookups that follow must be
                # able to reach Redis: wait until ordinary commands pass the breaker too.
                while True:
                    try:
                        await self._breaker.call(self._client.ping)
                        break
                    except StoreUnavailable:
                        await asyncio.sleep(self._breaker.retry_after_s / 2)
                self._generation += 1
                self._connected.set()
                async for msg in pubsub.listen():
                    if msg["type"] == "message":
                        self._changes += 1
            except asyncio.CancelledError:
                raise
            except REDIS_DOWN as exc:
                if self._connected.is_set():
                    log.warning("auth invalidation subscription lost (%r); serving keys from cache", exc)
                self._connected.clear()
                await asyncio.sleep(self._breaker.retry_after_s)
            except Exception:
                self._connected.clear()
                log.exception("auth invalidation subscription failed")
                await asyncio.sleep(self._breaker.retry_after_s)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:
                    pass

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
