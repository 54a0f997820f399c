"""Fair admission: requests wait in the gateway, not in the engines, and leave in a fair order.

Why: every engine serves its own queue first-come-first-served, so one tenant that floods the API fills
every engine's queue and everyone else's time-to-first-token explodes. Here an endpoint takes a request
only while it has batch room (``Capacity``: running + waiting below the window, KV cache below the
threshold); the rest wait per pool in per-tenant queues:

* priority classes first (``Identity.priority``, in the order of ``priorities``: interactive before
  batch); within a class, the Virtual Token Counter (``vtc.py``) picks the tenant, weighted per tenant;
* the counter is charged on admission by an estimate (prompt tokens, and the tenant's recent output
  length capped by ``max_tokens``) and corrected on release with the engine's real usage (``ctx.usage``);
* each waiter has a deadline: past it the request fails with 429 and ``Retry-After`` — never a hang;
* work-conserving: a request goes straight through when nothing waits and some endpoint has room, and
  every release, health check or scrape dispatches waiters at once (no polling) while room remains;
* a waiter whose client left (task cancelled) leaves its queue in O(1); one woken with an endpoint in
  the same instant gives the endpoint back;
* prefill pacing (``max_starting``): an endpoint takes a new streamed request only while fewer than
  that many of its requests still wait for their first token (the relay reports it through
  ``ctx.on_first_token``). A burst of admissions otherwise lands in one engine step as a pile of
  prefills, and every request in that step — another tenant's first token included — waits for all of
  them; pacing spreads them over steps. It costs throughput where an engine must start many prompts
  per step to stay full (short outputs, slow prefills): off by default (docs/scheduling.md);
* headroom (``headroom``, ``headroom.py``): a tenant holding at least its fair share of an endpoint may
  not take its last ``headroom`` slots nor start a prompt beyond the pacing limit; a tenant below its
  share may, so its request enters a busy engine at once instead of waiting for a slot to free.

The picking policy only chooses among endpoints that have room, so affinity can never push an
endpoint past its window. Per decision: O(log tenants) for the queue and one pass over the pool's
endpoints for room and scores — never a scan of the queued requests.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from router.admission import Admission
from router.admission.headroom import Shares
from router.admission.vtc import Entry, VTCQueue
from router.capacity import Capacity
from router.context import RequestContext
from router.errors import OpenAIError, no_capacity
from router.picking.base import Policy
from serving.endpoint import Endpoint
from serving.pool import Pool


@dataclass(eq=False, slots=True)
class _Waiter:
    ctx: RequestContext
    exclude: frozenset[Endpoint]
    future: asyncio.Future
    rank: int
    entry: Entry | None = None
    timer: asyncio.TimerHandle | None = None


@dataclass(slots=True)
class _Ticket:
    """What an admitted request was charged, to correct it when it leaves."""

    queue: VTCQueue
    tenant: str
    weight: float
    estimate: float  # unweighted service units charged on admission
    started: bool = True  # False while a paced request waits for its first token


class FairAdmission(Admission):
    def __init__(
        self,
        policy: Policy,
        capacity: Capacity,
        *,
        deadline_s: float = 30.0,
        priorities: Sequence[str] = ("interactive", "batch"),
        input_weight: float = 1.0,
        output_weight: float = 2.0,
        output_estimate: int = 256,
        max_starting: int | None = None,
        headroom: int = 0,
    ) -> None:
        self.policy = policy
        self.capacity = capacity
        self.deadline_s = deadline_s
        self.input_weight = input_weight
        self.output_weight = output_weight
        self.output_estimate = float(output_estimate)
        #: prefill pacing: streamed requests admitted to one endpoint and not yet at their first token.
        self.max_starting = max_starting or 0
        self._starting: dict[Endpoint, int] = {}
        #: slots of each endpoint's window that a tenant at its fair share may not take.
        self.headroom = max(0, min(headroom, capacity.window - 1))
        #: prompts in progress per endpoint a tenant below its share may still add to: one more than
        #: the pacing limit when headroom is on (0: no pacing).
        self.start_limit = self.max_starting + (1 if self.headroom and self.max_starting else 0)
        self.priorities = list(priorities) or ["default"]
        self._ranks = {name: i for i, name in enumerate(priorities)}
        self._nclasses = max(1, len(priorities))
        self._pools: dict[str, _PoolQueue] = {}
        self._tickets: dict[RequestContext, _Ticket] = {}
        self._expected_output: dict[str, float] = {}  # per tenant: moving average of output tokens

    # --- the Admission interface --------------------------------------------------------------------------
    async def admit(self, ctx: RequestContext, pool: Pool, exclude: frozenset[Endpoint] = frozenset()) -> Endpoint:
        pq = self._pools.get(pool.name)
        if pq is None:
            pq = self._pools[pool.name] = _PoolQueue(self, pool)
        return await pq.admit(ctx, exclude)

    def release(self, ctx: RequestContext, endpoint: Endpoint) -> None:
        endpoint.inflight -= 1
        ticket = self._tickets.pop(ctx, None)
        ctx.on_first_token = None
        pq = self._pools.get(endpoint.pool)
        shares_grew = False
        if ticket is not None:
            if not ticket.started:
                self._starting[endpoint] -= 1
            self._settle(ticket, ctx)
            if pq is not None:
                pq.shares.released(ticket.tenant, endpoint)
                shares_grew = pq.shares.leave(ticket.tenant)
        if pq is not None:
            # A tenant that left the pool raised everyone's share: headroom may now admit anywhere.
            pq.dispatch(None if shares_grew and self.headroom else endpoint)

    def started(self, ctx: RequestContext, endpoint: Endpoint) -> None:
        """The request's first token came back: the engine is done with its prompt (prefill pacing)."""
        ticket = self._tickets.get(ctx)
        if ticket is not None and not ticket.started:
            ticket.started = True
            self._starting[endpoint] -= 1
            pq = self._pools.get(endpoint.pool)
            if pq is not None:
                pq.dispatch(endpoint)

    async def close(self) -> None:
        for pq in self._pools.values():
            pq.fail_all(no_capacity("The gateway is shutting down."))

    # --- introspection (metrics, tests, benchmarks) ------------------------------------------------------
    def queued(self, pool: str | None = None) -> int:
        """Requests waiting, in one pool or in all."""
        pools = [self._pools[pool]] if pool in self._pools else ([] if pool else self._pools.values())
        return sum(pq.size for pq in pools)

    def queue_depths(self) -> dict[tuple[str, str], int]:
        return {(name, self.priorities[rank]): vtc.size
                for name, pq in self._pools.items() for rank, vtc in enumerate(pq.classes)}

    def counters(self, pool: str, rank: int = 0) -> dict[str, float]:
        """The virtual token counter of each tenant known in one pool and priority class."""
        pq = self._pools.get(pool)
        return {} if pq is None else {t: s.counter for t, s in pq.classes[rank].tenants.items()}

    # --- charging -------------------------------------------------------------------------------------------
    def rank(self, ctx: RequestContext) -> int:
        ident = ctx.identity
        return self._ranks.get(ident.priority, self._nclasses - 1) if ident is not None else self._nclasses - 1

    def estimate(self, ctx: RequestContext, tenant: str) -> float:
        expected = self._expected_output.get(tenant, self.output_estimate)
        out = min(float(ctx.max_tokens), expected) if ctx.max_tokens > 0 else expected
        return self.input_weight * ctx.prompt_tokens + self.output_weight * out

    def charge(self, ctx: RequestContext, queue: VTCQueue, tenant: str) -> None:
        ident = ctx.identity
        weight = ident.weight if ident is not None and ident.weight > 0 else 1.0
        est = self.estimate(ctx, tenant)
        queue.charge(tenant, est / weight)
        state = queue.tenants.get(tenant)
        if state is not None:
            state.inflight += 1
        self._tickets[ctx] = _Ticket(queue, tenant, weight, est)


    def _settle(self, ticket: _Ticket, ctx: RequestContext) -> None:
        usage = ctx.usage
        if usage is not None:
            real = self.input_weight * usage.prompt_tokens + self.output_weight * usage.completion_tokens
            if ctx.outcome == "ok":  # learn the tenant's typical output length from complete answers
                prev = self._expected_output.get(ticket.tenant, self.output_estimate)
                self._expected_output[ticket.tenant] = 0.8 * prev + 0.2 * usage.completion_tokens
        else:
            real = 0.0  # nothing reached the engine, or it reported nothing: refund the estimate
        q = ticket.queue
        q.charge(ticket.tenant, (real - ticket.estimate) / ticket.weight)
        state = q.tenants.get(ticket.tenant)
        if state is not None:
            state.inflight -= 1
            q.forget_idle(ticket.tenant)


class _PoolQueue:
    """The waiting requests of one pool: one VTC queue per priority class."""

    def __init__(self, owner: FairAdmission, pool: Pool) -> None:
        self.owner = owner
        self.pool = pool
        self.classes: list[VTCQueue[_Waiter]] = [VTCQueue() for _ in range(owner._nclasses)]
        self.size = 0
        self._dispatching = False
        self._held_back = 0  # waiters put back by the last dispatch: no room outside their exclusions
        self.shares = Shares()
        #: tenants the last dispatch held back by headroom: their arrivals need no new dispatch.
        self._blocked: set[str] = set()
        self._gap = 0.0  # seconds between admissions (moving average), for Retry-After
        self._last_admit = time.monotonic()
        pool.listeners.append(self.dispatch)

    async def admit(self, ctx: RequestContext, exclude: frozenset[Endpoint]) -> Endpoint:
        owner = self.owner
        tenant = ctx.identity.tenant_id if ctx.identity is not None else "-"
        rank = owner.rank(ctx)
        vtc = self.classes[rank]
        ident = ctx.identity
        self.shares.enter(tenant, ident.weight if ident is not None and ident.weight > 0 else 1.0)
        if self.size == 0:  # fast path: nobody waits, so nobody is overtaken
            now = time.monotonic()
            room = self._room(owner.capacity.with_room(self.pool.endpoints, now, exclude))
            if room and owner.headroom and len(self.shares.active) > 1:  # alone: never at its share
                room = self._for(tenant, room, now)
            if room:
                vtc.serve_now(tenant)
                return self._place(ctx, room, vtc, tenant)
        if not any(ep.healthy and ep not in exclude for ep in self.pool.endpoints):
            self.shares.leave(tenant)
            raise no_capacity(f"No healthy engine in pool '{self.pool.name}' can serve this request right now.")
        loop = asyncio.get_running_loop()
        w = _Waiter(ctx, exclude, loop.create_future(), rank)
        w.entry = vtc.push(w, tenant)
        self.size += 1
        w.timer = loop.call_at(loop.time() + owner.deadline_s, self._expire, w)
        if self._held_back or (owner.headroom and tenant not in self._blocked):
            # Some waiters may not go where there is room (retries excluding an endpoint, tenants at
            # their share facing only headroom): there may be room for this one. Otherwise a non-empty
            # queue means no endpoint has room.
            self.dispatch()
        try:
            return await w.future
        except asyncio.CancelledError:
            self._abandon(w)
            raise

    def _room(self, room: list[Endpoint]) -> list[Endpoint]:
        """With prefill pacing, only endpoints with fewer prompts in progress than someone may start."""
        limit = self.owner.start_limit
        if not limit or not room:
            return room
        starting = self.owner._starting
        return [ep for ep in room if starting.get(ep, 0) < limit]

    def _for(self, tenant: str, room: list[Endpoint], now: float) -> list[Endpoint]:
        """The endpoints of ``room`` that ``tenant`` may take (headroom): all of them while it is below
        its fair share of one; else only those below ``window - headroom`` and the pacing limit."""
        owner = self.owner
        cap, shares = owner.capacity, self.shares
        top = cap.window - owner.headroom
        limit, starting = owner.max_starting, owner._starting
        out = []
        for ep in room:
            if shares.at_share(tenant, ep, cap.window) and (
                    cap.load(ep, now) >= top or (limit and starting.get(ep, 0) >= limit)):
                continue
            out.append(ep)
        return out

    def _place(self, ctx: RequestContext, room: list[Endpoint], vtc: VTCQueue, tenant: str) -> Endpoint:
        owner = self.owner
        ctx.dequeued_at = time.perf_counter()
        ep = owner.policy.pick(ctx, room) or room[0]
        ep.inflight += 1
        owner.charge(ctx, vtc, tenant)
        self.shares.placed(tenant, ep)
        if owner.max_starting and ctx.stream:  # a non-streamed answer shows no first token: not paced
            owner._starting[ep] = owner._starting.get(ep, 0) + 1
            owner._tickets[ctx].started = False
            ctx.on_first_token = functools.partial(owner.started, ctx, ep)
        now = time.monotonic()
        self._gap = 0.9 * self._gap + 0.1 * (now - self._last_admit)
        self._last_admit = now
        return ep

    def dispatch(self, freed: Endpoint | None = None) -> None:
        """Admit waiters, best first, while some endpoint has room. Re-entrant calls are no-ops.

        ``freed``: only that endpoint can have gained room (a release) — while requests wait, no other
        endpoint has room, so checking it alone keeps a release O(1) in the number of endpoints. Without
        it (a scrape, a health change, a new waiter beside held-back retries) all are checked.
        """
        if self._dispatching or self.size == 0:
            return
        self._dispatching = True
        put_back: list[_Waiter] = []
        excluded = 0
        blocked: set[str] = set()
        capacity = self.owner.capacity
        headroom = self.owner.headroom
        try:
            now = time.monotonic()
            if freed is not None and not self._held_back:
                room = [freed] if freed.healthy and capacity.has_room(freed, now) else []
            else:
                room = capacity.with_room(self.pool.endpoints, now)
            room = self._room(room)
            limit, starting = self.owner.start_limit, self.owner._starting
            while room and self.size:
                w = self._pop(blocked)
                if w is None:
                    break
                if w.future.done():  # cancelled this instant; its own handler finds it already gone
                    continue
                tenant = w.entry.tenant  # type: ignore[union-attr]
                cands = room if not w.exclude else [ep for ep in room if ep not in w.exclude]
                if not cands:  # a retry that may not go back where it failed: let others pass
                    put_back.append(w)
                    excluded += 1
                    continue
                if headroom:
                    cands = self._for(tenant, cands, now)
                    if not cands:  # at its share wherever there is room: its later requests too
                        put_back.append(w)
                        blocked.add(tenant)
                        continue
                vtc = self.classes[w.rank]
                ep = self._place(w.ctx, cands, vtc, tenant)
                if w.timer is not None:
                    w.timer.cancel()
                w.future.set_result(ep)
                if not capacity.has_room(ep, now) or (limit and starting.get(ep, 0) >= limit):
                    room.remove(ep)
        finally:
            if blocked:
                for vtc in self.classes:
                    vtc.restore()
            self._held_back = excluded
            self._blocked = blocked
            for w in reversed(put_back):
                self.classes[w.rank].push_front(w.entry)  # type: ignore[arg-type]
                self.size += 1
            self._dispatching = False

    def _pop(self, skip: set[str]) -> _Waiter | None:
        for vtc in self.classes:
            if vtc.size:
                entry = vtc.pop(skip)
                if entry is not None:
                    self.size -= 1
                    return entry.item
        return None

    def _expire(self, w: _Waiter) -> None:
        if w.entry is not None and self.classes[w.rank].drop(w.entry):
            self.size -= 1
            self._left(w.entry.tenant)
            if not w.future.done():
                w.future.set_exception(self._timeout_error())

    def _abandon(self, w: _Waiter) -> None:
        """The waiting task was cancelled (client gone, shutdown)."""
        if w.timer is not None:
            w.timer.cancel()
        if w.entry is not None and self.classes[w.rank].drop(w.entry):
            self.size -= 1
            self._left(w.entry.tenant)
        elif w.future.done() and not w.future.cancelled() and w.future.exception() is None:
            # Woken with an endpoint in the same instant it was cancelled: give it back.
            self.owner.release(w.ctx, w.future.result())

    def _timeout_error(self) -> OpenAIError:
        deadline = self.owner.deadline_s
        drain = self.size * self._gap if self._gap > 0 else deadline
        retry_after = max(1, math.ceil(min(drain, deadline)))
        return OpenAIError(
            429,
            f"The engines of pool '{self.pool.name}' are saturated: this request waited {deadline:g} s in the "
            f"fair queue without a free slot. Retry after {retry_after} s.",
            code="queue_timeout",
            headers={"retry-after": str(retry_after)},
        )

    def fail_all(self, error: OpenAIError) -> None:
        for vtc in self.classes:
            while vtc.size:
                entry = vtc.pop()
                if entry is None:
                    break
                w = entry.item
                if w.timer is not None:
                    w.timer.cancel()
                self.shares.leave(entry.tenant)
                if not w.future.done():
                    w.future.set_exception(error)
        self.size = 0

    def _left(self, tenant: str) -> None:
        """A waiter left the queue without being placed."""
        if self.shares.leave(tenant) and self.owner.headroom:
            self.dispatch()  # everyone's share grew
