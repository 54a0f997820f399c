"""The limiter shared by every gateway replica: one atomic Redis round trip per request.

``reserve`` runs one Lua script (registered once, then called by SHA) that checks a tenant's RPM, TPM,
concurrency and budget buckets together and charges all of them or none, with Redis's own clock, so two
replicas can never both take the last tokens, and N replicas enforce N tokens, not N times N. ``settle``
runs one more to replace the reservation (prompt + max_tokens) by the engine's real usage, also for
streams the client cut (the relay kept the running usage), so unused tokens go back at once.

When Redis is away (the store's breaker is open):

- ``on_store_failure="open"``: the request is checked by an in-process ``LocalLimiter`` holding
  ``fail_open_share`` of each limit (its budget counters seeded with what Redis last reported); the
  ``noor_limits_degraded`` gauge is 1 and a warning is logged. Budget tokens consumed meanwhile, and
  settlements that could not reach Redis, are kept and applied when it returns, so a budget is not
  silently widened by an outage.
- ``on_store_failure="closed"``: 503 with ``retry-after``.

With ``overlap_headroom`` set (the default, ``limits.overlap``), a tenant whose last decision here left
at least that share of each of its limits has its next reserve overlapped with the engine request's
opening (``may_defer``): the round trip leaves the request's latency, and the rare refusal it then
brings aborts an engine request that had just begun.

Concurrency slots are leases: this replica renews the leases of its running requests every third of
``lease_s``; a replica that dies stops renewing, and its slots free themselves within ``lease_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Literal

import redis.asyncio as aioredis
from prometheus_client import Counter, Gauge
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from router.context import RequestContext
from router.limits import Limiter
from router.limits.decision import Bucket, Decision, unavailable
from router.limits.local import LocalLimiter
from router.limits.periods import budget_period
from router.limits.redis_scripts import CHARGE, RENEW, RESERVE, SETTLE
from router.limits.reservation import Reservation, actual_tokens, exact_cost, limited, request_cost
from router.store.base import TenantLimits
from router.store.redis_link import REDIS_DOWN, Breaker, StoreUnavailable
from router.store.redis_wire import PipelinedRedis, is_noscript
from serving.backends.base import Usage

if TYPE_CHECKING:
    from noor.settings import LimitsSettings
    from router.store.redis import RedisStore

log = logging.getLogger("noor.limits")

FALLBACKS = Counter("noor_limits_fallback", "Requests whose limits were checked locally because Redis was away")
REFUSED_UNAVAILABLE = Counter("noor_limits_unavailable", "Requests refused (503) because Redis was away (fail-closed)")
DEGRADED = Gauge("noor_limits_degraded", "1 while this replica enforces limits locally (Redis away, fail-open)")

_BUDGET_SLACK_S = 86400  # a budget counter outlives its period by a day, for late settlements
_MAX_BACKLOG = 100_000
_STOP_WAIT_S = 3.0
#: How long a settle nobody waits for (no concurrency slot to free) may wait for another command to
#: share its write: at a few hundred requests a second and up it rides with the next reserve, and the
#: gateway saves a send() and a reply's wake-up per request (tens of µs of CPU here). Within one process
#: the order is kept (one connection, first in first out), so the next reserve still sees it.
SETTLE_MAY_WAIT_S = 0.002


def _budget(lim: TenantLimits) -> tuple[str | None, float]:
    """The budget period now (its key, seconds until it resets), if the tenant has a budget."""
    return budget_period(lim.budget_period, time.time()) if lim.token_budget else (None, 0.0)


class RedisLimiter(Limiter):
    remote = True
    #: Exported on the gateway's /metrics (they live in prometheus-client's default registry too).
    collectors = (FALLBACKS, REFUSED_UNAVAILABLE, DEGRADED)

    def __init__(
        self,
        client: aioredis.Redis,
        breaker: Breaker,
        *,
        prefix: str = "noor:",
        window_s: float = 60.0,
        lease_s: float = 60.0,
        on_store_failure: Literal["open", "closed"] = "open",
        fail_open_share: float = 1.0,
        wire: PipelinedRedis | None = None,
        autopipeline: bool = True,
        overlap_headroom: float | None = 0.25,
    ) -> None:
        self._r = client
        # reserve and settle, once per request, go through the pipelined client (router/store/redis_wire.py);
        # without it (autopipeline=False), through redis-py, one round trip each.
        self._own_wire = wire is None and autopipeline
        self._wire = wire or (PipelinedRedis.like(client) if autopipeline else None)
        self.breaker = breaker
        self.prefix = prefix
        self.window_ms = int(window_s * 1000)
        self.lease_s = lease_s
        self.on_store_failure = on_store_failure
        self.fallback = LocalLimiter(window_s=window_s, share=fail_open_share)
        self._reserve = client.register_script(RESERVE)
        self._settle = client.register_script(SETTLE)
        self._renew = client.register_script(RENEW)
        self._charge = client.register_script(CHARGE)
        if self._wire is not None:
            self._wire.preload(self._reserve.script, self._settle.script)
        self._running: dict[str, set[str]] = {}  # tenant -> request ids holding a concurrency lease here
        self._unsettled: list[tuple[list[str], list]] = []  # settle calls that could not reach Redis
        self._owed: dict[tuple[str, str], int] = {}  # (tenant, budget period) -> tokens served while degraded
        self._seen_budget: dict[str, tuple[str, int]] = {}  # tenant -> (period, used) as Redis last said
        self.overlap_headroom = overlap_headroom
        #: tenant -> what its last decision here left beyond the overlap headroom, per bucket (requests,
        #: tokens, budget; None: no such limit), less what overlapped requests took since. Absent: refused
        #: last, or not seen yet.
        self._spare: dict[str, tuple[int | None, int | None, int | None]] = {}
        self.degraded = False
        self._task: asyncio.Task | None = None
        self._stopping = False
        #: settles nobody waits for, still in flight (their replies are handled by ``_on_settled``)
        self._settling: set[asyncio.Future] = set()
        breaker.on_recover(self._recovered)

    @classmethod
    def from_store(cls, store: RedisStore, settings: LimitsSettings) -> RedisLimiter:
        return cls(
            store.client, store.breaker, prefix=store.prefix, window_s=settings.window_s,
            lease_s=settings.concurrency_lease_s, on_store_failure=settings.on_store_failure,
            fail_open_share=settings.fail_open_share, wire=store.wire, autopipeline=store.wire is not None,
            overlap_headroom=settings.overlap_headroom if settings.overlap else None,
        )

    def _keys(self, tenant_id: str, budget_key: str | None) -> list[str]:
        base = f"{self.prefix}rl:{{{tenant_id}}}:"
        return [base + "rpm", base + "tpm", base + "tpm:amt", base + "conc",
                base + "budget:" + (budget_key or "-"), base + "open"]

    # ---- lifecycle
    async def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._maintain(), name="limits-maintain")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            # redis-py can swallow a cancel that lands inside a pipeline's execute (it becomes a connection
            # error, which the loop survives, renewing leases forever: a test hung on it). So the loop also
            # stops on _stopping, and is cancelled again until it ends, giving up after a few seconds.
            self._stopping = True
            deadline = time.monotonic() + _STOP_WAIT_S
            while not task.done() and time.monotonic() < deadline:
                task.cancel()
                await asyncio.wait({task}, timeout=0.1)
        deadline = time.monotonic() + _STOP_WAIT_S
        while self._settling and time.monotonic() < deadline:  # settles in flight (a failure keeps them in
            await asyncio.wait(set(self._settling), timeout=deadline - time.monotonic())  # the backlog) first
        with contextlib.suppress(Exception):
            await self._flush_backlog()
        if self._own_wire and self._wire is not None:
            await self._wire.close()

    # ---- the request path
    async def reserve(self, ctx: RequestContext) -> None:
        ident = ctx.identity
        if ident is None or not limited(ident.limits):
            return
        if self._task is None:
            await self.start()
        await self._reserving(ctx, _budget(ident.limits), request_cost(ctx), None)

    def begin_reserve(self, ctx: RequestContext) -> Awaitable[None]:
        """``reserve``, its script queued on the pipelined connection before this returns: it leaves in the
        same write as what else this loop pass queued (the cached key's epoch ``GET``), and their replies
        come back together. A stream's leaves at once, with what is queued so far (the ``GET``): measured
        at 16 streams, three alternating pairs, added TTFT p50 / p99 0.83–1.14 / 2.19–2.37 ms against
        1.00–1.61 / 3.03–3.83 when it left after the engine request (``docs/performance.md``)."""
        ident = ctx.identity
        if (ident is None or not limited(ident.limits) or self._task is None or self._wire is None
                or self.breaker.is_down):
            return self.reserve(ctx)
        budget, cost = _budget(ident.limits), request_cost(ctx)
        keys, args = self._call(ctx, cost, budget)
        sent = self._wire.queue("EVALSHA", self._reserve.sha, len(keys), *keys, *args)
        if ctx.stream:
            # A stream's first chunk waits for this answer and for the engine's head: written now, not
            # after the engine request is built and sent (~100 µs here), the answer is there sooner. Streams
            # are few, so the writes they stop sharing cost nothing; short requests keep sharing them.
            self._wire.flush()
        return self._reserving(ctx, budget, cost, sent)

    def _call(self, ctx: RequestContext, cost: int, budget: tuple[str | None, float]) -> tuple[list[str], list]:
        """The reserve script's keys and arguments for ``ctx`` at ``cost`` in the budget period ``budget``."""
        ident = ctx.identity
        assert ident is not None
        lim = ident.limits
        budget_key, reset_s = budget
        args = [ctx.request_id, cost, lim.requests_per_minute or 0, lim.tokens_per_minute or 0,
                lim.max_concurrent or 0, lim.token_budget or 0, self.window_ms, int(self.lease_s * 1000),
                int(reset_s) + _BUDGET_SLACK_S, int(reset_s * 1000)]
        return self._keys(ident.tenant_id, budget_key), args

    async def _reserving(self, ctx: RequestContext, budget: tuple[str | None, float], cost: int,
                         sent: asyncio.Future | None) -> None:
        """Reserve ``cost`` (the first script call already ``sent``, or not yet) and record the decision."""
        ident = ctx.identity
        assert ident is not None
        lim = ident.limits
        budget_key, reset_s = budget
        while True:  # twice at most: a refusal at the prompt's bound is asked again at its exact count
            keys, args = self._call(ctx, cost, budget)
            first, sent = sent, None
            try:
                raw = await self.breaker.call(lambda: self._script(self._reserve, keys, args, first))  # noqa: B023
            except StoreUnavailable:
                await self._reserve_degraded(ctx, lim, cost)
                return
            decision = self._decision(raw, lim, cost, reset_s)
            if decision.allowed or (exact := exact_cost(ctx, cost, decision.reason)) is None:
                break
            cost = exact
        if budget_key is not None and decision.budget is not None:
            self._seen_budget[ident.tenant_id] = (budget_key, decision.budget.used)
        if self.overlap_headroom is not None:
            self._note_spare(ident.tenant_id, decision)
        if not decision.allowed:
            raise decision.error(ident.tenant_name)
        ctx.headers.update(decision.headers())
        ctx.reservation = Reservation(
            ident.tenant_id, ctx.request_id, cost, tokens=bool(lim.tokens_per_minute),
            concurrency=bool(lim.max_concurrent), budget_key=budget_key,
        )
        if lim.max_concurrent:
            self._running.setdefault(ident.tenant_id, set()).add(ctx.request_id)

    def may_defer(self, ctx: RequestContext) -> bool:
        """Yes for a tenant whose last decision here left, beyond ``overlap_headroom`` of each limit, one
        request and this request's cost in tokens and budget. Each yes takes its share of that spare
        until the next decision replaces it, so a burst of concurrent requests cannot all go ahead on
        one stale answer; other replicas are covered by the headroom itself. A request that still finds
        its tenant out of room is refused as ever, its engine request aborted.

        Never for a tenant with a concurrency cap: that cap is a promise about the engine (never more
        than N of the tenant's requests in it at once), which an overlapped check could break for the
        moment it takes to refuse.
        """
        ident = ctx.identity
        if ident is None or not limited(ident.limits):
            return True
        spare = self._spare.get(ident.tenant_id)
        if spare is None or self.degraded or ident.limits.max_concurrent:
            return False
        requests, tokens, budget = spare
        cost = request_cost(ctx) if tokens is not None or budget is not None else 0
        if (requests is not None and requests < 1) or (tokens is not None and tokens < cost) or (
                budget is not None and budget < cost):
            return False
        self._spare[ident.tenant_id] = (None if requests is None else requests - 1,
                                        None if tokens is None else tokens - cost,
                                        None if budget is None else budget - cost)
        return True

    def _note_spare(self, tenant_id: str, d: Decision) -> None:
        if not d.allowed:
            self._spare.pop(tenant_id, None)
            return
        share = self.overlap_headroom or 0.0

        def spare(b: Bucket | None) -> int | None:
            return None if b is None else b.remaining - math.ceil(share * b.limit)

        self._spare[tenant_id] = (spare(d.requests), spare(d.tokens), spare(d.budget))

    async def settle(self, ctx: RequestContext, usage: Usage | None) -> None:
        pending = self.begin_settle(ctx, usage)
        if pending is not None:
            await pending

    def holds_slot(self, ctx: RequestContext) -> bool:
        res = ctx.reservation
        return isinstance(res, Reservation) and res.concurrency and not res.local

    def begin_settle(self, ctx: RequestContext, usage: Usage | None) -> Awaitable[None] | None:
        """The settle script is queued on the pipelined connection before this returns (it leaves before
        any callback scheduled afterwards where a concurrency slot is freed, else with the next command
        or within ``SETTLE_MAY_WAIT_S``).

        Where a concurrency slot is freed, the returned awaitable waits for its reply (the client must find
        the slot free). Otherwise nobody needs to: None is returned and the reply is handled where it lands
        (``_on_settled``), without waking the request's task. That reply rides with the next request's
        reserve, and a task woken by it ran the finished request's closing work (usage record, metrics,
        the server's end of the response: ~50–100 µs) ahead of that reserve's answer — in front of the
        next stream's first chunk (``docs/performance.md``)."""
        res = ctx.reservation
        if not isinstance(res, Reservation):
            return None
        ctx.reservation = None
        actual = actual_tokens(usage)
        if res.local:
            self.fallback.give_back(res, actual)
            if res.budget_key is not None and actual:
                owed = (res.tenant_id, res.budget_key)
                self._owed[owed] = self._owed.get(owed, 0) + actual
            return None
        if not (res.tokens or res.concurrency or res.budget_key):
            return None  # requests per minute only: nothing to give back, no round trip
        if res.concurrency:
            running = self._running.get(res.tenant_id)
            if running is not None:
                running.discard(res.request_id)
                if not running:
                    del self._running[res.tenant_id]
        keys = self._keys(res.tenant_id, res.budget_key)
        settle_keys = [keys[2], keys[3], keys[4], keys[5]]
        args = [res.request_id, actual, int(res.tokens), int(res.concurrency), int(res.budget_key is not None)]
        sent = None
        if self._wire is not None and not self.breaker.is_down:
            sent = self._wire.queue("EVALSHA", self._settle.sha, len(settle_keys), *settle_keys, *args,
                                    within_s=0.0 if res.concurrency else SETTLE_MAY_WAIT_S)
        if sent is not None and not res.concurrency:
            self._settling.add(sent)
            sent.add_done_callback(functools.partial(self._on_settled, settle_keys, args))
            return None
        return self._settled(sent, settle_keys, args)

    def _on_settled(self, settle_keys: list, args: list, sent: asyncio.Future) -> None:
        """A settle's reply (or failure) that nobody awaits: what ``_settled`` does, in a callback. A lost
        connection opens the breaker and keeps the settle for later; a script Redis no longer knows
        (NOSCRIPT: its scripts were flushed) is run again in a task, as ``_script`` would."""
        self._settling.discard(sent)
        exc = ConnectionError("the settle's command was cancelled") if sent.cancelled() else sent.exception()
        if exc is None:
            self.breaker.succeeded()
        elif isinstance(exc, REDIS_DOWN):
            self.breaker.failed(exc)
            self._keep_unsettled(settle_keys, args)
        elif is_noscript(exc):
            again = asyncio.ensure_future(self._settled(None, settle_keys, args))
            self._settling.add(again)
            again.add_done_callback(self._on_settled_again)
        else:
            log.error("settling limits failed: %r", exc)

    def _on_settled_again(self, task: asyncio.Future) -> None:
        self._settling.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("settling limits failed: %r", exc)

    async def _settled(self, sent: asyncio.Future | None, settle_keys: list, args: list) -> None:
        try:
            await self.breaker.call(lambda: self._script(self._settle, settle_keys, args, sent))
        except StoreUnavailable:
            self._keep_unsettled(settle_keys, args)

    def _keep_unsettled(self, settle_keys: list, args: list) -> None:
        """A settle Redis did not get: applied by the maintenance loop once Redis answers again."""
        if len(self._unsettled) < _MAX_BACKLOG:
            self._unsettled.append((settle_keys, args))

    async def _script(self, script: AsyncScript, keys: list, args: list, sent: asyncio.Future | None = None) -> object:
        """Run ``script``; ``sent``: its EVALSHA already queued on the pipelined connection."""
        if sent is not None:
            try:
                return await sent
            except ResponseError as exc:  # NOSCRIPT: its scripts flushed; evalsha loads it and runs it again
                if not is_noscript(exc):
                    raise
        if self._wire is None:
            return await script(keys=keys, args=args)
        return await self._wire.evalsha(script.sha, script.script, keys, args)

    def _decision(self, raw: list, lim: TenantLimits, cost: int, budget_reset_s: float) -> Decision:
        allowed, reason, retry_ms, rpm_used, rpm_reset, tpm_used, tpm_reset, conc_used, bud_used = raw
        reason = reason.decode() if isinstance(reason, bytes) else reason
        d = Decision(allowed=bool(allowed), reason=reason or None, retry_after_s=retry_ms / 1000, cost=cost)
        if lim.requests_per_minute:
            d.requests = Bucket(lim.requests_per_minute, rpm_used, rpm_reset / 1000)
        if lim.tokens_per_minute:
            d.tokens = Bucket(lim.tokens_per_minute, tpm_used, tpm_reset / 1000)
        if lim.max_concurrent:
            d.concurrency = Bucket(lim.max_concurrent, conc_used, 0.0)
        if lim.token_budget:
            d.budget = Bucket(lim.token_budget, bud_used, budget_reset_s)
        return d

    # ---- Redis away
    async def _reserve_degraded(self, ctx: RequestContext, lim: TenantLimits, cost: int) -> None:
        ident = ctx.identity
        assert ident is not None
        if self.on_store_failure == "closed":
            REFUSED_UNAVAILABLE.inc()
            raise unavailable()
        if not self.degraded:
            self.degraded = True
            DEGRADED.set(1)
            log.warning("Redis away: enforcing limits locally on this replica (fail-open, share %.2f)", self.fallback.share)
        FALLBACKS.inc()
        seen = self._seen_budget.get(ident.tenant_id)
        if seen is not None:
            self.fallback.observe_budget(ident.tenant_id, *seen)
        decision, res = self.fallback.take(ident.tenant_id, ctx.request_id, lim, cost)
        if not decision.allowed and (exact := exact_cost(ctx, cost, decision.reason)) is not None:
            decision, res = self.fallback.take(ident.tenant_id, ctx.request_id, lim, exact)
        if not decision.allowed:
            raise decision.error(ident.tenant_name)
        ctx.headers.update(decision.headers())
        ctx.reservation = res

    def _recovered(self) -> None:
        if self.degraded:
            self.degraded = False
            DEGRADED.set(0)
            log.warning("Redis back: limits are shared across replicas again")

    async def _flush_backlog(self) -> None:
        """Apply settlements and budget usage that waited for Redis, oldest first."""
        while self._unsettled:
            keys, args = self._unsettled[0]
            await self.breaker.call(lambda: self._settle(keys=keys, args=args))
            self._unsettled.pop(0)
        for owed_key, tokens in list(self._owed.items()):
            tenant_id, budget_key = owed_key
            keys = self._keys(tenant_id, budget_key)
            await self.breaker.call(lambda: self._charge(keys=[keys[4]], args=[tokens, 40 * 86400]))
            del self._owed[owed_key]
            log.info("charged %d tokens served while Redis was away to %s's budget", tokens, tenant_id)

    async def _renew_leases(self) -> None:
        if not self._running:
            return
        lease_ms = int(self.lease_s * 1000)

        async def go() -> None:
            pipe = self._r.pipeline(transaction=False)
            for tenant_id, running in self._running.items():
                await self._renew(keys=[self._keys(tenant_id, None)[3]], args=[lease_ms, *running], client=pipe)
            await pipe.execute()

        await self.breaker.call(go)

    async def _maintain(self) -> None:
        next_renew = time.monotonic() + self.lease_s / 3
        while not self._stopping:
            await asyncio.sleep(0.25)
            try:
                if self._unsettled or self._owed:
                    await self._flush_backlog()
                if time.monotonic() >= next_renew:
                    next_renew = time.monotonic() + self.lease_s / 3
                    await self._renew_leases()
            except asyncio.CancelledError:
                raise
            except StoreUnavailable:
                pass
            except Exception:
                log.exception("limits maintenance failed")
