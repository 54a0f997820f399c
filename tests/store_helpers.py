"""Tenants, keys and usage records straight from a shared Redis store, for tests of gateway replicas."""

from __future__ import annotations

import asyncio
import time

from router.keys import create_key
from router.store.base import TenantLimits, UsageRecord
from router.store.redis import RedisStore


async def new_tenant(redis_url: str, name: str, limits: TenantLimits) -> tuple[str, str, str]:
    """(tenant id, key id, secret)."""
    store = RedisStore.from_url(redis_url)
    try:
        tenant = await store.create_tenant(name, limits=limits)
        key, secret = await create_key(store, tenant.id)
        return tenant.id, key.id, secret
    finally:
        await store.close()


async def revoke(redis_url: str, key_id: str) -> bool:
    store = RedisStore.from_url(redis_url)
    try:
        return await store.revoke_key(key_id)
    finally:
        await store.close()


async def wait_for_records(redis_url: str, tenant_id: str, n: int, timeout: float = 20.0) -> list[UsageRecord]:
    """The tenant's usage records once at least ``n`` reached the ledger (or whatever is there at timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        store = RedisStore.from_url(redis_url)
        try:
            records = await store.usage_records(tenant_id=tenant_id)
        finally:
            await store.close()
        if len(records) >= n or time.monotonic() > deadline:
            return records
        await asyncio.sleep(0.3)
