"""The in-process limiter: the same semantics as the Redis limiter, for one gateway process.

It serves the embedded default (one gateway on SQLite), and is the Redis limiter's fallback while Redis
is away (fail-open), where each replica enforces its share of every limit on its own.

Semantics (identical in ``redis_scripts.py``):

- requests and tokens per minute are sliding logs: at most ``limit`` in ANY window of ``window_s``, not
  per calendar minute (which lets 2x through around a minute boundary). A request reserves its worst
  case at its start (``reservation.request_cost``: its prompt's bound or count + ``max_tokens``);
  settling replaces that by the engine's real count.
- concurrency counts requests between reserve and settle.
- a token budget is a counter per UTC day or month; reserve adds the worst case, settle corrects it.
- all buckets are checked before any is charged: a refused request takes nothing.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from router.context import RequestContext
from router.limits import Limiter
from router.limits.decision import Bucket, Decision
from router.limits.periods import budget_period
from router.limits.reservation import Reservation, actual_tokens, exact_cost, limited, request_cost
from router.store.base import TenantLimits
from serving.backends.base import Usage


@dataclass(slots=True)
class _TenantState:
    requests: deque = field(default_factory=deque)  # start times
    tokens: OrderedDict = field(default_factory=OrderedDict)  # request id -> [start time, tokens]
    token_sum: int = 0
    inflight: set = field(default_factory=set)
    budget: dict = field(default_factory=dict)  # period id -> tokens used
    open: dict = field(default_factory=dict)  # request id -> tokens charged to the budget


class LocalLimiter(Limiter):
    def __init__(self, *, window_s: float = 60.0, share: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        self.window_s = window_s
        self.share = share
        self.clock = clock
        self._tenants: dict[str, _TenantState] = {}

    def _scaled(self, limit: int | None) -> int:
        if not limit:
            return 0
        return limit if self.share >= 1 else max(1, int(limit * self.share))

    def observe_budget(self, tenant_id: str, period_id: str, used: int) -> None:
        """Seed a budget counter with what the shared store last reported (the fallback then starts there)."""
        st = self._tenants.setdefault(tenant_id, _TenantState())
        st.budget[period_id] = max(st.budget.get(period_id, 0), used)

    def take(self, tenant_id: str, request_id: str, limits: TenantLimits, cost: int) -> tuple[Decision, Reservation]:
        """Check every bucket, and charge them all only if all have room."""
        now = self.clock()
        st = self._tenants.setdefault(tenant_id, _TenantState())
        horizon = now - self.window_s
        rpm, tpm = self._scaled(limits.requests_per_minute), self._scaled(limits.tokens_per_minute)
        conc, bud = self._scaled(limits.max_concurrent), self._scaled(limits.token_budget)
        d = Decision(allowed=True, cost=cost)

        def deny(reason: str, wait: float) -> None:
            if reason == "request_too_large" or (d.reason != "request_too_large" and (d.reason is None or wait >= d.retry_after_s)):
                d.reason = reason
            d.retry_after_s = max(d.retry_after_s, wait)
            d.allowed = False

        if rpm:
            while st.requests and st.requests[0] <= horizon:
                st.requests.popleft()
            used = len(st.requests)
            if used >= rpm:
                deny("requests", st.requests[used - rpm] + self.window_s - now)
            d.requests = Bucket(rpm, used, st.requests[-1] + self.window_s - now if st.requests else 0.0)
        if tpm:
            while st.tokens:
                rid, (start, amount) = next(iter(st.tokens.items()))
                if start > horizon:
                    break
                st.tokens.popitem(last=False)
                st.token_sum -= amount
            if cost > tpm:
                deny("request_too_large", 0.0)
            elif st.token_sum + cost > tpm:
                need, freed, wait = st.token_sum + cost - tpm, 0, self.window_s
                for start, amount in st.tokens.values():
                    freed += amount
                    if freed >= need:
                        wait = start + self.window_s - now
                        break
                deny("tokens", wait)
            newest = next(reversed(st.tokens.values()))[0] if st.tokens else None
            d.tokens = Bucket(tpm, st.token_sum, newest + self.window_s - now if newest is not None else 0.0)
        if conc:
            if len(st.inflight) >= conc:
                deny("concurrency", 1.0)
            d.concurrency = Bucket(conc, len(st.inflight), 0.0)
        budget_key = None
        if bud:
            budget_key, reset = budget_period(limits.budget_period, now)
            for old in [k for k in st.budget if k != budget_key]:
                del st.budget[old]
            used = st.budget.get(budget_key, 0)
            if used + cost > bud:
                deny("budget", reset)
            d.budget = Bucket(bud, used, reset)

        res = Reservation(tenant_id, request_id, cost, tokens=bool(tpm), concurrency=bool(conc),
                          budget_key=budget_key, local=True)
        if not d.allowed:
            return d, res
        if rpm:
            st.requests.append(now)
            d.requests = Bucket(rpm, d.requests.used + 1, self.window_s)
        if tpm:
            st.tokens[request_id] = [now, cost]
            st.token_sum += cost
            d.tokens = Bucket(tpm, st.token_sum, self.window_s)
        if conc:
            st.inflight.add(request_id)
            d.concurrency = Bucket(conc, len(st.inflight), 0.0)
        if bud and budget_key is not None:
            st.budget[budget_key] = st.budget.get(budget_key, 0) + cost
            st.open[request_id] = cost
            d.budget = Bucket(bud, st.budget[budget_key], d.budget.reset_s)
        return d, res

    def give_back(self, res: Reservation, actual: int) -> None:
        """Replace the reservation by the real usage; idempotent."""
        st = self._tenants.get(res.tenant_id)
        if st is None:
            return
        st.inflight.discard(res.request_id)
        entry = st.tokens.get(res.request_id)
        if entry is not None:
            st.token_sum += actual - entry[1]
            entry[1] = actual
        held = st.open.pop(res.request_id, None)
        if held is not None and res.budget_key in st.budget:
            st.budget[res.budget_key] += actual - held

    async def reserve(self, ctx: RequestContext) -> None:
        ident = ctx.identity
        if ident is None or not limited(ident.limits):
            return
        cost = request_cost(ctx)
        decision, res = self.take(ident.tenant_id, ctx.request_id, ident.limits, cost)
        if not decision.allowed and (exact := exact_cost(ctx, cost, decision.reason)) is not None:
            decision, res = self.take(ident.tenant_id, ctx.request_id, ident.limits, exact)
        if not decision.allowed:
            raise decision.error(ident.tenant_name)
        ctx.headers.update(decision.headers())
        ctx.reservation = res

    async def settle(self, ctx: RequestContext, usage: Usage | None) -> None:
        self.begin_settle(ctx, usage)

    def begin_settle(self, ctx: RequestContext, usage: Usage | None) -> None:
        """Settled at once (all in memory): nothing to wait for."""
        res = ctx.reservation
        if isinstance(res, Reservation):
            self.give_back(res, actual_tokens(usage))
            ctx.reservation = None
