"""The usage ledger on Redis: records appended to a Stream, folded into totals exactly once.

Producers (every gateway's meter, through ``RedisStore.add_usage``) only ``XADD``: one round trip per
batch, nothing computed on the way. Aggregators (a background task in each gateway, or ``noor ledger``)
share one consumer group, so each entry is handed to one consumer, and take each batch with one Lua
script that, atomically and inside Redis (the aggregator sends one command and reads back four numbers:
no batch crosses the network or the gateway's event loop):

- reads up to ``batch`` entries for its consumer (new ones, its own unacknowledged ones, or with
  ``XAUTOCLAIM`` those a dead consumer held) and decodes each record (``cjson``);
- skips a record whose request id was folded before (a ``SET NX`` marker: the meter's spool may replay a
  batch that half-reached Redis, so one request can be appended twice);
- adds it to the per tenant/model/day hash, and keeps the raw record in the tenant's time-ordered set
  (what ``usage_records`` exports);
- acknowledges and deletes the stream entry.

So a batch is either read, folded and acknowledged as a whole, or not at all. Entries left pending in
the group (by a version that read and folded in two steps, or a consumer that died between them) are
taken over with ``XAUTOCLAIM`` once idle for ``claim_idle_s``; folding one again is harmless. A
drained aggregator looks again every ``poll_s`` (a script cannot block on a stream).
"""

from __future__ import annotations

import asyncio
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

#: ``day_of(ts)`` in Lua: the UTC calendar day of a Unix time, "YYYY-MM-DD" (days-from-civil inverted,
#: integer arithmetic only: Redis's Lua has no date library). Same answers as Python's ``day_of``.
LUA_DAY = """
local function day_of(ts)
  local z = math.floor(ts / 86400) + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400 + (m <= 2 and 1 or 0)
  return string.format('%04d-%02d-%02d', y, m, d)
end
"""

#: Read one batch from the consumer group and fold it, in Redis. The gateway only sends this and reads
#: back four numbers: it used to read the batch (redis-py's XREADGROUP reply, parsed into dicts), decode
#: each record and send it all back as the fold's arguments — 0.7 ms of the gateway's loop per 50
#: records, which the requests arriving meanwhile waited for (docs/performance.md).
_READ_AND_FOLD = LUA_DAY + """
-- KEYS[1]: the stream. ARGV: group, key prefix, marker ttl (s), consumer, mode, count, then for
-- mode 'claim' the minimum idle time (ms) and the id to start from.
-- mode 'new': entries never delivered; 'own': those this consumer read and did not acknowledge;
-- 'claim': those other consumers held longer than the idle time (XAUTOCLAIM).
-- Redis runs nothing else while a script runs, so the batch's writes are summed here first and sent
-- as one command per key: per record only its exactly-once marker remains.
-- Returns {records folded, entries read, next claim id ('' unless claiming), ids of malformed entries}.
local stream, group, p, ttl, consumer, mode, count = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local entries, next_id = {}, ''
if mode == 'claim' then
  local r = redis.call('XAUTOCLAIM', stream, group, consumer, ARGV[7], ARGV[8], 'COUNT', count)
  next_id, entries = r[1], r[2]
else
  local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count, 'STREAMS', stream,
                       mode == 'own' and '0' or '>')
  if r then entries = r[1][2] end
end
local folded = 0
local sums, hashes = {}, {}
local combos, days, tenants, records, ids, malformed = {}, {}, {}, {}, {}, {}
local day_names = {}
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
local function field(fields, name)
  for j = 1, #fields, 2 do
    if fields[j] == name then return fields[j + 1] end
  end
end
for _, e in ipairs(entries) do
  -- a claimed entry deleted meanwhile: Redis 7 leaves it out (and drops it from the group itself);
  -- an older Redis may send a nil in its place: nothing to fold or acknowledge
  local id, fields = type(e) == 'table' and e[1], type(e) == 'table' and e[2]
  if id then ids[#ids + 1] = id end
  if fields then  -- false: deleted while pending, nothing to fold, only to acknowledge
    local raw = field(fields, 'r')
    local ok, rec = pcall(cjson.decode, raw or '')
    local ts = ok and type(rec) == 'table' and tonumber(rec.ts)
    local rid, tenant, model = ts and rec.request_id, ts and rec.tenant_id, ts and rec.model
    if type(rid) ~= 'string' or type(tenant) ~= 'string' or type(model) ~= 'string' then
      -- can never fold: acknowledged, so it does not block the group forever; the caller logs it
      malformed[#malformed + 1] = id
    elseif rid == '' or redis.call('SET', p .. 'usage:seen:' .. rid, '1', 'NX', 'EX', ttl) then
      local number = math.floor(ts / 86400)
      local day = day_names[number]
      if not day then
        day = day_of(ts)
        day_names[number] = day
      end
      local sum = entry(sums, hashes, p .. 'usage:day:' .. day .. ':' .. tenant .. ':' .. model)
      sum[1] = (sum[1] or 0) + 1
      sum[2] = (sum[2] or 0) + math.floor(tonumber(rec.prompt_tokens) or 0)
      sum[3] = (sum[3] or 0) + math.floor(tonumber(rec.completion_tokens) or 0)
      entry(combos, days, day)[tenant .. '\\n' .. model] = true
      local rec_list = entry(records, tenants, tenant)
      rec_list[#rec_list + 1] = ts
      rec_list[#rec_list + 1] = raw
      folded = folded + 1
    end
  end
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
return {folded, #entries, next_id, malformed}
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
        batch: int = 20,
        claim_idle_s: float = 30.0,
        retention_days: int = 90,
        poll_s: float = 0.25,
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
        self.poll_s = poll_s
        # The background aggregator has a breaker of its own: its failures must never make the request
        # path believe Redis is away.
        self._bg_breaker = Breaker(breaker.retry_after_s)
        self._script = client.register_script(_READ_AND_FOLD)
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

    async def _step(self, mode: str, start: str = "0-0") -> tuple[int, str]:
        """Read one batch (``mode``: new, own or claim) and fold it, in one script call on Redis.

        Returns how many entries were read and, when claiming, the id to go on from.
        """
        args: list = [GROUP, self.prefix, self.retention_s, self.consumer, mode, self.batch]
        if mode == "claim":
            args += [self.claim_idle_ms, start]
        if self._wire is not None:  # the pipelined connection: no pool checkout, ~15 µs per call
            reply = await self._wire.evalsha(self._script.sha, _READ_AND_FOLD, [self.stream], args)
        else:
            reply = await self._script(keys=[self.stream], args=args)
        folded, read, next_id, malformed = reply  # type: ignore[misc]
        if malformed:
            log.error("dropped %d malformed ledger entries: %s", len(malformed),
                      ", ".join(m.decode() if isinstance(m, bytes) else str(m) for m in malformed[:10]))
        self.folded += int(folded)
        return int(read), next_id.decode() if isinstance(next_id, bytes) else str(next_id)

    async def _read(self) -> int:
        """Read and fold one batch; returns how many entries were read.

        After a failure this consumer may hold entries it read but never acknowledged (left by a
        version that read and folded in two steps, or a script Redis killed): it folds those first,
        then new ones. Without this they would wait ``claim_idle_s`` for a claim.
        """
        try:
            if self._own_pending:
                read, _ = await self._step("own")
                if read < self.batch:  # that was the last of them
                    self._own_pending = False
                if read:
                    return read
            read, _ = await self._step("new")
            return read
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # Redis restarted empty, or the stream was deleted
                self._group_ready = False
                await self._ensure_group()
                return 0
            raise

    async def _claim(self) -> int:
        """Take over and fold entries other consumers (dead ones) held longer than ``claim_idle_s``."""
        start, total = "0-0", 0
        while True:
            read, start = await self._step("claim", start)
            if read:
                log.warning("claimed %d ledger entries left pending by another consumer", read)
                total += read
            if start == "0-0":
                return total

    async def catch_up(self, max_batches: int = 1000) -> None:
        """Fold everything appended so far (a reader calls this, so it sees its own writes)."""

        async def go() -> None:
            await self._ensure_group()
            await self._claim()
            for _ in range(max_batches):
                if await self._read() == 0:
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
                if await self._bg_breaker.call(self._read) < self.batch:
                    await asyncio.sleep(self.poll_s)  # drained: look again in a while
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
