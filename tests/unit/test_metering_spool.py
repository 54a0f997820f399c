"""The meter never drops a record: a failing store sends batches to the spool, replayed later, once."""

from router.context import RequestContext
from router.metering import Meter
from router.store.base import Identity, TenantLimits
from router.store.sqlite import SQLiteStore
from models.catalog import ModelSpec
from serving.backends.base import Usage


class FlakyStore(SQLiteStore):
    down = False

    async def add_usage(self, records):
        if self.down:
            raise ConnectionError("store away")
        await super().add_usage(records)


def ctx(i: int) -> RequestContext:
    c = RequestContext(request_id=f"r{i}", kind="chat", body={})
    c.identity = Identity("k", "t", "tenant", frozenset({"*"}), TenantLimits())
    c.model = ModelSpec(name="m", pool="p")
    c.usage = Usage(3, i)
    return c


async def test_records_survive_a_store_outage(tmp_path):
    store = FlakyStore(tmp_path / "db.sqlite")
    meter = Meter(store, spool_path=tmp_path / "spool" / "usage.jsonl", max_batch=4)
    store.down = True
    for i in range(10):
        meter.record(ctx(i))
    await meter.flush()
    assert (tmp_path / "spool" / "usage.jsonl").exists()
    assert await store.usage_records() == []
    store.down = False
    meter.record(ctx(10))
    await meter.flush()
    recs = await store.usage_records()
    assert sorted(r.request_id for r in recs) == sorted(f"r{i}" for i in range(11))
    assert sum(r.completion_tokens for r in recs) == sum(range(11))
    assert not (tmp_path / "spool" / "usage.jsonl").exists()
    await store.close()


class CountingStore(SQLiteStore):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.writes: list[int] = []

    async def add_usage(self, records):
        self.writes.append(len(records))
        await super().add_usage(records)


async def test_a_batch_leaves_in_slices(tmp_path):
    store = CountingStore(tmp_path / "db.sqlite")
    meter = Meter(store, spool_path=tmp_path / "spool" / "usage.jsonl", max_batch=500, write_slice=50)
    for i in range(120):
        meter.record(ctx(i))
    await meter.flush()
    assert store.writes == [50, 50, 20]
    assert len(await store.usage_records()) == 120
    await store.close()
