"""Benchmark 3: what one scheduling decision costs, timed directly (no HTTP, no engines).

    python -m benchmarks.sched_overhead [--endpoints 64] [--queued 1000] [--tenants 100] [--n 20000] [--headroom 2]

Three cases, each with every policy:

* ``queued``: ``--queued`` requests wait (spread over ``--tenants`` tenants, two priority classes) and
  every endpoint is at its window; one release hands the slot to the next waiter — the VTC pop, the
  room check of all endpoints, the pick, the charge and the hand-over. Timed around ``release``. With
  headroom, the freed slot is one of the last ones: waiters of tenants at their share of that endpoint
  are skipped until one below its share takes it.
* ``enqueue``: the same state; a new request arrives and joins its queue (``admit`` up to its await).
* ``fast``: nothing waits and all endpoints have room, so a request is placed at once after the policy
  scored all endpoints (the picker's worst case: prefix hashing of a ~2 KB prompt, three scorers over 64
  endpoints).

Prints the median and p99 per decision in microseconds. Target: well under 100 µs.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import time

from benchmarks.harness import pct, table
from noor.settings import SchedulerSettings
from router.admission.fair import FairAdmission
from router.capacity import Capacity
from router.context import RequestContext
from router.picking import make_policy
from router.store.base import Identity, TenantLimits
from serving.backends.base import Backend, EngineSignals, Usage
from serving.endpoint import Endpoint
from serving.pool import Pool

POLICIES = ("round_robin", "least_outstanding", "least_loaded", "prefix_load")
SYSTEMS = [f"You are assistant number {i} of a large company. Follow the company policy carefully. " * 24
           for i in range(50)]  # ~2 KB each


class _Unused(Backend):
    engine = "bench"

    async def complete(self, request):  # pragma: no cover
        raise NotImplementedError

    async def stream(self, request):  # pragma: no cover
        raise NotImplementedError

    async def health(self) -> bool:
        return True


def make_pool(n: int) -> Pool:
    pool = Pool("bench", engine="bench")
    now = time.monotonic()
    for i in range(n):
        ep = Endpoint(name=f"e{i}", pool="bench", backend=_Unused(f"http://e{i}"), healthy=True)
        ep.signals = EngineSignals(running=0, waiting=0, kv_cache_usage=0.3, scraped_at=now + 3600)  # fresh all run
        pool.endpoints.append(ep)
    return pool


_identities: dict[tuple[int, str], Identity] = {}


def make_ctx(i: int, tenants: int, rng: random.Random) -> RequestContext:
    t = rng.randrange(tenants)
    prio = "batch" if t % 5 == 0 else "interactive"
    ident = _identities.get((t, prio))
    if ident is None:
        ident = _identities[(t, prio)] = Identity("k", f"t{t}", f"t{t}", frozenset({"*"}), TenantLimits(),
                                                  weight=1.0 + (t % 3), priority=prio)
    body = {"messages": [{"role": "system", "content": SYSTEMS[t % len(SYSTEMS)]},
                         {"role": "user", "content": f"question {i}: what is the status of order {i * 7919}?"}]}
    c = RequestContext(request_id=f"r{i}", kind="chat", body=body)
    c.identity, c.prompt_tokens, c.max_tokens = ident, 500, 128
    return c


async def run_case(policy_name: str, endpoints: int, queued: int, tenants: int, n: int,
                   headroom: int) -> dict[str, list[float]]:
    rng = random.Random(1)
    window = 8
    cap = Capacity(window=window, stale_after_s=1e9)
    adm = FairAdmission(make_policy(policy_name, SchedulerSettings(), cap), cap, deadline_s=3600, headroom=headroom)
    pool = make_pool(endpoints)
    seq = 0

    # fast path: nothing queued, all endpoints have room
    fast: list[float] = []
    for _ in range(min(n, 5000)):
        c = make_ctx(seq, tenants, rng)
        seq += 1
        t0 = time.perf_counter_ns()
        ep = await adm.admit(c, pool)
        fast.append((time.perf_counter_ns() - t0) / 1000)
        c.usage = Usage(500, 100)
        adm.release(c, ep)

    # fill every endpoint to its window (headroom set aside: a tenant at its share may not take the last
    # slots, and nothing is released here), then queue `queued` more
    running: list[tuple[RequestContext, Endpoint]] = []
    adm.headroom = 0
    for _ in range(endpoints * window):
        c = make_ctx(seq, tenants, rng)
        seq += 1
        running.append((c, await adm.admit(c, pool)))
    adm.headroom = headroom
    waiters: dict[RequestContext, asyncio.Task] = {}

    async def wait(c: RequestContext) -> None:
        ep = await adm.admit(c, pool)
        running.append((c, ep))

    enqueue: list[float] = []
    for _ in range(queued):
        c = make_ctx(seq, tenants, rng)
        seq += 1
        t0 = time.perf_counter_ns()
        task = asyncio.ensure_future(wait(c))
        await asyncio.sleep(0)  # runs admit up to its await: enqueued
        enqueue.append((time.perf_counter_ns() - t0) / 1000)
        waiters[c] = task
    assert adm.queued() == queued, adm.queued()

    decide: list[float] = []
    gc.disable()
    try:
        for _ in range(n):
            c, ep = running.pop(rng.randrange(len(running)))
            c.usage = Usage(500, rng.randrange(50, 200))
            t0 = time.perf_counter_ns()
            adm.release(c, ep)  # hands the slot to the next waiter
            decide.append((time.perf_counter_ns() - t0) / 1000)
            nc = make_ctx(seq, tenants, rng)
            seq += 1
            waiters[nc] = asyncio.ensure_future(wait(nc))
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert adm.queued() == queued
    finally:
        gc.enable()
    for task in waiters.values():
        task.cancel()
    await asyncio.gather(*waiters.values(), return_exceptions=True)
    return {"queued": decide, "enqueue": enqueue, "fast": fast}


async def main(args: argparse.Namespace) -> None:
    rows = []
    for name in POLICIES:
        r = await run_case(name, args.endpoints, args.queued, args.tenants, args.n, args.headroom)
        rows.append([name, pct(r["queued"], 50), pct(r["queued"], 99), pct(r["enqueue"], 50), pct(r["enqueue"], 99),
                     pct(r["fast"], 50), pct(r["fast"], 99)])
    print(f"\nScheduling decision time (µs), {args.endpoints} endpoints, {args.queued} queued requests, "
          f"{args.tenants} tenants, {args.n} decisions, headroom {args.headroom}\n")
    print(table(["policy", "queued: release→next p50", "p99", "enqueue p50", "p99", "fast path (score all) p50",
                 "p99"], rows))


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoints", type=int, default=64)
    ap.add_argument("--queued", type=int, default=1000)
    ap.add_argument("--tenants", type=int, default=100)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--headroom", type=int, default=SchedulerSettings().headroom_per_endpoint,
                    help="headroom slots per endpoint (default: the configured default)")
    asyncio.run(main(ap.parse_args()))


if __name__ == "__main__":
    cli()
