"""The usage ledger on Redis: records appended to a Stream, folded into totals exactly once.

Producers (every gateway's meter, through ``RedisStore.add_usage``) only ``XADD``: one round trip per
batch, nothing computed on the way. Aggregators (a background task in each gateway, or ``noor ledger``)
read the stream through one consumer group, so each entry is handed to one consumer, and fold each batch
with one Lua script that, atomically:

- skips a record whose request id was folded before (a ``SET NX`` marker: the meter's spool may replay a
  batch that half-reached Redis, so one request can be appended twice);
- adds it to the per tenant/model/day hash, and keeps the raw record in the tenant's time-ordered set
  (what ``usage_records`` exports);
- acknowledges and deletes the stream entry.

So a batch is either folded and acknowledged as a whole, or not at all. A consumer that dies holding a
batch leaves it pending in the group; another consumer takes it over with ``XAUTOCLAIM`` once it has
been idle for ``claim_idle_s``, and folding it again is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from datetime import datetime, timezone

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from router.store.base import UsageRecord
from router.store.redis_link import Breaker, StoreUnavailable
from router.store.redis_wire import PipelinedRedis

log = logging.getLogger("noor.ledger")

GROUP = "aggregator"

_FOLD = """
-- KEYS[1]: the stream. ARGV: group, key prefix, marker ttl (s), then 9 per record:
-- entry id, request id, tenant, model, day, prompt tokens, completion tokens, ts, record json.
-- Redis runs nothing else while a script runs, so the batch's writes are summed here first and sent
-- as one command per key: per record only its exactly-once marker remains.
local stream, group, p, ttl = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local folded = 0
local sums, hashes = {}, {}
local combos, days, tenants, records, ids = {}, {}, {}, {}, {}
-- map[key], made empty on first use, its keys listed in order of first use
local function entry(map, order, key)
  local value = map[key]
  if not value then
    value = {}
    map[key] = value
    order[#order + 1] = key
  end
  return value
end
for i = 4, #ARGV, 9 do
  local id, rid, tenant, model, day = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  if rid ~= '' and redis.call('SET', p .. 'usage:seen:' .. rid, '1', 'NX', 'EX', ttl) then
    local sum = entry(sums, hashes, p .. 'usage:day:' .. day .. ':' .. tenant .. ':' .. model)
    sum[1] = (sum[1] or 0) + 1
    sum[2] = (sum[2] or 0) + tonumber(ARGV[i + 5])
    sum[3] = (sum[3] or 0) + tonumber(ARGV[i + 6])
    entry(combos, days, day)[tenant .. '\\n' .. model] = true
    local rec = entry(records, tenants, tenant)
    rec[#rec + 1] = ARGV[i + 7]
    rec[#rec + 1] = ARGV[i + 8]
    folded = folded + 1
  end
  if id ~= '' then ids[#ids + 1] = id end
end
for _, h in ipairs(hashes) do
  local sum = sums[h]
  redis.call('HINCRBY', h, 'requests', sum[1])
  redis.call('HINCRBY', h, 'prompt_tokens', sum[2])
  redis.call('HINCRBY', h, 'completion_tokens', sum[3])
end
for _, day in ipairs(days) do
  local members = {}
  for combo in pairs(combos[day]) do members[#members + 1] = combo end
  redis.call('SADD', p .. 'usage:combos:' .. day, unpack(members))
  redis.call('ZADD', p .. 'usage:days', 0, day)
end
if #tenants > 0 then
  redis.call('SADD', p .. 'usage:tenants', unpack(tenants))
  for _, tenant in ipairs(tenants) do
    redis.call('ZADD', p .. 'usage:records:' .. tenant, unpack(records[tenant]))
  end
end
if #ids > 0 then
  redis.call('XACK', stream, group, unpack(ids))
  redis.call('XDEL', stream, unpack(ids))
end
return folded
"""


_STOP_WAIT_S = 3.0


_DAYS: dict[int, str] = {}  # days since the epoch -> "YYYY-MM-DD" (strftime costs ~2 µs per record)


def day_of(ts: float) -> str:
    number = int(ts // 86400)
    day = _DAYS.get(number)
    if day is None:
        if len(_DAYS) > 1024:
            _DAYS.clear()
        day = _DAYS[number] = datetime.fromtimestamp(number * 86400, tz=timezone.utc).strftime("%Y-%m-%d")
    return day


def consumer_name() -> str:
    """Unique per process: a restarted replica is a new consumer; its predecessor's batches get claimed."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class UsageLedger:
    def __init__(
        self,
        client: aioredis.Redis,
        breaker: Breaker,
        *,
        prefix: str = "noor:",
        consumer: str | None = None,
        batch: int = 500,
        claim_idle_s: float = 30.0,
        retention_days: int = 90,
        block_ms: int = 500,
        wire: PipelinedRedis | None = None,
    ) -> None:
        self._r = client
        self._wire = wire  # appends go through the pipelined client when given (router/store/redis_wire.py)
        self._breaker = breaker
        self.prefix = prefix
        self.stream = prefix + "usage:stream"
        self.consumer = consumer or consumer_name()
        self.batch = batch
        self.claim_idle_ms = int(claim_idle_s * 1000)
        self.retention_s = retention_days * 86400
        self.block_ms = block_ms
        # The background aggregator has a breaker of its own: its blocking reads must never make the
        # request path believe Redis is away.
        self._bg_breaker = Breaker(breaker.retry_after_s)
        self._fold = client.register_script(_FOLD)
        self._group_ready = False
        self._own_pending = True  # fold what this consumer read but did not fold, before reading on
        self._task: asyncio.Task | None = None
        self.folded = 0  # records folded by this consumer (for tests and metrics)

    # ---- producing
    async def append(self, records: list[UsageRecord]) -> None:
        """XADD each record (one pipelined round trip). Raises StoreUnavailable when Redis is away."""
        if not records:
            return

        if self._wire is not None:  # ~1 us per record to pack, instead of ~20 through redis-py's pipeline
            wire, commands = self._wire, [(b"XADD", self.stream, b"*", b"r", orjson.dumps(rec)) for rec in records]
            await self._breaker.call(lambda: wire.execute_many(commands))
            return

        async def go() -> None:
            pipe = self._r.pipeline(transaction=False)
            for rec in records:
                pipe.xadd(self.stream, {b"r": orjson.dumps(rec)})
            await pipe.execute()

        await self._breaker.call(go)

    # ---- consuming
    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            # From id 0: records appended before any aggregator ever ran are folded too.
            await self._r.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def _fold_entries(self, entries: list) -> int:
        """Fold stream entries ``[(id, {b"r": json}), ...]`` in one script call; returns records newly counted."""
        if not entries:
            return 0
        args: list = [GROUP, self.prefix, self.retention_s]
        for entry_id, fields in entries:
            if not fields:  # deleted while pending: nothing to fold, only to acknowledge
                args += [entry_id, "", "", "", "", 0, 0, 0, ""]
                continue
            raw = fields.get(b"r")
            try:
                rec = orjson.loads(raw)
                ts = float(rec["ts"])
                args += [entry_id, rec["request_id"], rec["tenant_id"], rec["model"], day_of(ts),
                         int(rec.get("prompt_tokens") or 0), int(rec.get("completion_tokens") or 0), ts, raw]
            except Exception:
                # A malformed entry can never fold: acknowledge it so it does not block the group forever.
                log.error("dropping malformed ledger entry %r: %r", entry_id, raw)
                args += [entry_id, "", "", "", "", 0, 0, 0, ""]
        if self._wire is not None:  # packed by hiredis: ~1 µs per record instead of redis-py's ~10
            n = int(await self._wire.evalsha(self._fold.sha, _FOLD, [self.stream], args))  # type: ignore[arg-type]
        else:
            n = int(await self._fold(keys=[self.stream], args=args))
        self.folded += n
        return n

    async def _read(self, block_ms: int | None) -> int:
        """Read and fold one batch; returns how many entries were read.

        After a failure this consumer may hold entries it read but never folded (Redis went away between
        the read and the fold): it folds those first (id ``0`` reads its own pending entries), then new
        ones (``>``). Without this they would wait ``claim_idle_s`` for a claim.
        """
        own = self._own_pending
        try:
            resp = await self._r.xreadgroup(GROUP, self.consumer, {self.stream: "0" if own else ">"}, count=self.batch,
                                            block=None if own else block_ms)
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # Redis restarted empty, or the stream was deleted
                self._group_ready = False
                await self._ensure_group()
                return 0
            raise
        entries = resp[0][1] if resp else []
        if own and not entries:
            self._own_pending = False
            return await self._read(block_ms)
        await self._fold_entries(entries)
        return len(entries)

    async def _claim(self) -> int:
        """Take over and fold entries other consumers (dead ones) held longer than ``claim_idle_s``."""
        start, total = "0-0", 0
        while True:
            resp = await self._r.xautoclaim(self.stream, GROUP, self.consumer, self.claim_idle_ms, start, count=self.batch)
            start, entries = resp[0], resp[1]
            entries = [e for e in entries if e is not None and e[1] is not None]
            if entries:
                log.warning("claimed %d ledger entries left pending by another consumer", len(entries))
                await self._fold_entries(entries)
                total += len(entries)
            if start in (b"0-0", "0-0"):
                return total

    async def catch_up(self, max_batches: int = 1000) -> None:
        """Fold everything appended so far (a reader calls this, so it sees its own writes)."""

        async def go() -> None:
            await self._ensure_group()
            await self._claim()
            for _ in range(max_batches):
                if await self._read(None) == 0:
                    return

        try:
            await self._breaker.call(go)
        except Exception:
            self._own_pending = True
            raise

    async def maintain(self) -> None:
        """Drop raw records past retention, and consumers long gone that hold nothing."""

        async def go() -> None:
            cutoff = time.time() - self.retention_s
            for tenant in await self._r.smembers(self.prefix + "usage:tenants"):
                await self._r.zremrangebyscore(self.prefix + "usage:records:" + tenant.decode(), "-inf", cutoff)
            for c in await self._r.xinfo_consumers(self.stream, GROUP):
                name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
                if c["pending"] == 0 and c["idle"] > 86_400_000 and name != self.consumer:
                    await self._r.xgroup_delconsumer(self.stream, GROUP, name)

        await self._bg_breaker.call(go)

    # ---- the background aggregator
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="usage-ledger")

    async def stop(self) -> None:
        """Stop the aggregator; never waits more than a few seconds.

        A cancel that lands while redis-py's blocking XREADGROUP is timing out can be swallowed (its
        timeout context turns it into a timeout), leaving the task blocked in its next read: awaiting
        the cancelled task then hung the gateway's shutdown (seen in about half of the shutdowns of a
        benchmark). So it is cancelled again until it ends, and given up on after ``_STOP_WAIT_S``;
        closing the client afterwards ends its read.
        """
        task, self._task = self._task, None
        if task is None:
            return
        deadline = time.monotonic() + _STOP_WAIT_S
        while not task.done() and time.monotonic() < deadline:
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.warning("usage ledger aggregator ended with %r", task.exception())

    async def run(self) -> None:
        """Fold forever; claim from dead consumers now and then; survive Redis outages."""
        next_claim = next_maintenance = 0.0
        while True:
            try:
                now = time.monotonic()
                if now >= next_claim:
                    await self._bg_breaker.call(self._ensure_group)
                    await self._bg_breaker.call(self._claim)
                    next_claim = now + max(self.claim_idle_ms / 2000, 0.2)
                if now >= next_maintenance:
                    await self.maintain()
                    next_maintenance = now + 3600
                await self._bg_breaker.call(lambda: self._read(self.block_ms))
            except asyncio.CancelledError:
                raise
            except StoreUnavailable:
                self._group_ready = False
                self._own_pending = True
                await asyncio.sleep(self._bg_breaker.retry_after_s)
            except Exception:
                self._own_pending = True
                log.exception("usage ledger aggregator failed; retrying")
                await asyncio.sleep(1.0)
