import subprocess
import sys
import time
from pathlib import Path

import pytest

from router.keys import create_key, hash_key, rotate_key
from router.store.base import TenantLimits, UsageRecord
from router.store.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def store(tmp_path):
    s = SQLiteStore(tmp_path / "noor.db")
    yield s
    await s.close()


async def test_keys_resolve_revoke_rotate(store):
    t = await store.create_tenant("acme", allowed_models=["a", "b"], limits=TenantLimits(tokens_per_minute=100))
    key, secret = await create_key(store, t.id, models=["a", "zzz"])
    ident = await store.resolve_key(hash_key(secret))
    assert ident.tenant_id == t.id and ident.models == frozenset({"a"}) and ident.limits.tokens_per_minute == 100
    assert (await store.get_key(key.id)).key_hash == hash_key(secret)
    assert secret not in str((await store.list_keys(t.id))[0].public())
    epoch = await store.auth_epoch()
    new, new_secret = await rotate_key(store, key.id)
    assert await store.auth_epoch() != epoch
    assert await store.resolve_key(hash_key(secret)) is None
    assert (await store.resolve_key(hash_key(new_secret))).models == frozenset({"a"})
    assert await store.revoke_key(new.id) and not await store.revoke_key(new.id)
    assert await store.resolve_key(hash_key(new_secret)) is None


async def test_epoch_sees_changes_from_another_process_connection(store, tmp_path):
    other = SQLiteStore(tmp_path / "noor.db")
    before = await store.auth_epoch()
    await other.create_tenant("elsewhere")
    assert await store.auth_epoch() != before
    await other.close()


async def test_epoch_sees_a_revoke_in_another_process_and_ignores_usage_writes(store, tmp_path):
    t = await store.create_tenant("acme")
    key, _ = await create_key(store, t.id)
    before = await store.auth_epoch()
    await store.add_usage([])  # an empty batch, then a real one: usage is not an auth change
    await store.add_usage([UsageRecord(request_id="r1", tenant_id=t.id, key_id=key.id, model="m")])
    assert await store.auth_epoch() == before
    script = (
        "import asyncio, sys; from pathlib import Path; from router.store.sqlite import SQLiteStore\n"
        "async def main():\n"
        "    s = SQLiteStore(Path(sys.argv[1]))\n"
        "    assert await s.revoke_key(sys.argv[2])\n"
        "    await s.close()\n"
        "asyncio.run(main())\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "noor.db"), key.id], check=True, cwd=ROOT)
    assert await store.auth_epoch() != before


async def test_usage_totals_and_idempotent_inserts(store):
    now = time.time()
    recs = [UsageRecord(request_id=f"r{i}", tenant_id="t1" if i % 2 else "t2", key_id="k", model="m",
                        prompt_tokens=10, completion_tokens=i, ts=now) for i in range(10)]
    await store.add_usage(recs)
    await store.add_usage(recs[:3])  # a replay must not double count
    totals = {r.tenant_id: r for r in await store.usage_totals()}
    assert totals["t1"].requests == 5 and totals["t1"].completion_tokens == 1 + 3 + 5 + 7 + 9
    assert totals["t2"].prompt_tokens == 50
    assert len(await store.usage_records(tenant_id="t1")) == 5
    assert await store.usage_records(since=now + 10) == []
