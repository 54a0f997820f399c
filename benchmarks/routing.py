"""Benchmark 2: routing — round-robin vs least-outstanding vs prefix+load on a shared-prefix workload.

    python -m benchmarks.routing                 # virtual time: 8 simulated replicas (~1–2 min)
    python -m benchmarks.routing --mode http     # the whole gateway over HTTP, simulators time-scaled

The workload (the shape llm-d measured: many tenants, each with a long shared context, multi-turn):
``--tenants`` tenants each have their own system prompt of ``--system-words`` words (~1.1 tokens
each); conversations start as a Poisson process (``--rate`` per second), belong to a random tenant, and
run ``--turns`` turns: each turn sends the system prompt, the whole history (the engine's own earlier
answers included) and a new question, then "thinks" before the next. All tenants' prompts together
overflow one replica's KV cache (``--kv-tokens``) but fit in the pool's: a router that keeps each
tenant on few replicas turns the prefixes into cache hits; one blind to them makes every replica
recompute every tenant's prompt.

Every policy runs behind the same fair admission (window = ``max_num_seqs``), so no replica ever holds
more than its window; the run checks it. Printed per policy: prefix-cache hit rate (from the engines'
own ``prefix_cache_hits / prefix_cache_queries`` counters, what ``/metrics`` exports), TTFT p50/p99,
requests and generated tokens per second, and the most any replica held (running + waiting).
Target: prefix+load's TTFT p50 at least 2× better than round-robin's, no replica above its window.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import time
from dataclasses import dataclass

from benchmarks.harness import client, pct, serve_gateway, table

POLICIES = ("round_robin", "least_outstanding", "least_loaded", "prefix_load")
WORDS = ("time year people way day man thing woman life child world school state family student group "
         "country problem hand part place case week company system program question work government number "
         "night point home water room mother area money story fact month lot right study book eye job word "
         "issue side kind head house service friend father power hour game line end member law car city").split()


@dataclass
class Conversation:
    tenant: int
    start: float
    turns: int
    think: list[float]
    questions: list[str]


def system_prompt(tenant: int, words: int) -> str:
    rng = random.Random(10_000 + tenant)
    return f"You are the assistant of tenant {tenant}. " + " ".join(rng.choice(WORDS) for _ in range(words))


def draw(args: argparse.Namespace) -> list[Conversation]:
    rng = random.Random(args.seed)
    convs, t = [], rng.expovariate(args.rate)
    while t < args.duration:
        turns = rng.randint(max(1, args.turns - 2), args.turns + 2)
        convs.append(Conversation(
            tenant=min(args.tenants - 1, int(rng.paretovariate(1.2)) - 1) if args.skew else rng.randrange(args.tenants),
            start=t, turns=turns, think=[rng.expovariate(1 / args.think) for _ in range(turns)],
            questions=[" ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 40))) + "?" for _ in range(turns)]))
        t += rng.expovariate(args.rate)
    return convs


@dataclass
class PolicyResult:
    policy: str
    ttft: list[float]
    requests: int
    failed: int
    tokens: int
    seconds: float
    hit_rate: float | None
    max_held: int
    window: int


def scheduler_settings(args: argparse.Namespace, policy: str):
    from noor.settings import SchedulerSettings

    s = SchedulerSettings(policy=policy, window_per_endpoint=args.max_num_seqs)
    # The gateway's memory of each replica's prefixes is sized like the replica's KV cache (~4 chars/token).
    s.prefix_lru_blocks = max(64, args.kv_tokens * 4 // s.prefix_block_chars)
    s.prefix_max_blocks = 512
    return s


def profile(args: argparse.Namespace):
    from serving.simulator.profiles import load_profile

    base = load_profile(args.profile)
    return load_profile(args.profile, max_num_seqs=args.max_num_seqs,
                        num_blocks=max(args.kv_tokens // base.block_size, base.max_model_len // base.block_size + 1))


async def run_virtual(policy: str, convs: list[Conversation], args: argparse.Namespace) -> PolicyResult:
    from benchmarks.virtual_cluster import VirtualCluster
    from router.admission.fair import FairAdmission
    from router.capacity import Capacity
    from router.context import RequestContext
    from router.picking import make_policy
    from router.store.base import Identity, TenantLimits
    from serving.simulator.tokenizer import encode_chat

    s = scheduler_settings(args, policy)
    cap = Capacity(window=args.max_num_seqs, kv_threshold=s.kv_cache_threshold, stale_after_s=3600)
    pacing = args.max_starting if args.max_starting is not None else max(2, args.max_num_seqs // 32)
    adm = FairAdmission(make_policy(policy, s, cap), cap, deadline_s=600, max_starting=pacing,
                        headroom=s.headroom_per_endpoint)
    idents = [Identity("k", f"t{i}", f"t{i}", frozenset({"*"}), TenantLimits()) for i in range(args.tenants)]
    loop = asyncio.get_running_loop()
    systems = {c.tenant: system_prompt(c.tenant, args.system_words) for c in convs}
    ttfts: list[float] = []
    failed = 0
    async with VirtualCluster(args.replicas, profile(args), seed=args.seed) as vc:
        start = loop.time()

        async def converse(c: Conversation, n: int) -> None:
            nonlocal failed
            await asyncio.sleep(max(0.0, start + c.start - loop.time()))
            messages = [{"role": "system", "content": systems[c.tenant]}]
            for turn in range(c.turns):
                messages.append({"role": "user", "content": c.questions[turn]})
                ids = encode_chat(messages)
                ctx = RequestContext(request_id=f"c{n}t{turn}", kind="chat", body={"messages": list(messages)})
                ctx.identity, ctx.prompt_tokens, ctx.max_tokens, ctx.stream = (
                    idents[c.tenant], len(ids), args.max_tokens, True)
                out = await vc.request(adm, ctx, ids, args.max_tokens, f"t{c.tenant}")
                if out.ttft is None:
                    failed += 1
                    return
                ttfts.append(out.ttft)
                messages.append({"role": "assistant", "content": out.reply})
                if loop.time() - start > args.duration:
                    return
                await asyncio.sleep(c.think[turn])

        q0 = sum(e.stats.prefix_cache_queries for e in vc.engines)
        h0 = sum(e.stats.prefix_cache_hits for e in vc.engines)
        g0 = sum(e.stats.generation_tokens for e in vc.engines)
        tasks = [asyncio.create_task(converse(c, n)) for n, c in enumerate(convs)]
        await asyncio.sleep(args.duration)
        q = sum(e.stats.prefix_cache_queries for e in vc.engines) - q0
        h = sum(e.stats.prefix_cache_hits for e in vc.engines) - h0
        g = sum(e.stats.generation_tokens for e in vc.engines) - g0
        n_requests = len(ttfts)
        vc.closing = True
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        held = max(vc.max_held.values())
    return PolicyResult(policy, ttfts, n_requests, failed, g, args.duration, h / q if q else None, held,
                        args.max_num_seqs)


async def run_http(policy: str, convs: list[Conversation], args: argparse.Namespace) -> PolicyResult:
    from serving.simulator.cluster import run_simulators

    scale = args.time_scale
    prof = profile(args)
    systems = {c.tenant: system_prompt(c.tenant, args.system_words) for c in convs}
    s = scheduler_settings(args, policy)
    ttfts: list[float] = []
    failed = 0
    async with run_simulators(args.replicas, prof, time_scale=scale, seed=args.seed) as sims:
        held = {u: 0 for u in sims}
        async with serve_gateway(sims, engine_model=sims.servers[0].model_name, policy=policy,
                                 window=args.max_num_seqs, deadline_s=600, metrics_interval_s=0.5,
                                 scheduler={k: getattr(s, k) for k in ("prefix_lru_blocks", "prefix_max_blocks")}) as gw:
            keys = {t: await gw.tenant(f"t{t}") for t in systems}
            async with client(gw.url) as cl:
                start = time.monotonic()

                async def converse(c: Conversation) -> None:
                    nonlocal failed
                    await asyncio.sleep(max(0.0, start + c.start * scale - time.monotonic()))
                    messages = [{"role": "system", "content": systems[c.tenant]}]
                    for turn in range(c.turns):
                        messages.append({"role": "user", "content": c.questions[turn]})
                        r = await cl.chat(keys[c.tenant], f"t{c.tenant}", messages, model=gw.model,
                                          max_tokens=args.max_tokens)
                        if r.ttft is None:
                            failed += 1
                            return
                        ttfts.append(r.ttft / scale)
                        messages.append({"role": "assistant", "content": r.reply})
                        if time.monotonic() - start > args.duration * scale:
                            return
                        await asyncio.sleep(c.think[turn] * scale)

                async def watch() -> None:
                    while True:
                        for u, srv in zip(sims, sims.servers, strict=True):
                            held[u] = max(held[u], srv.engine.num_running + srv.engine.num_waiting)
                        await asyncio.sleep(0.02)

                engines = [srv.engine for srv in sims.servers]
                q0 = sum(e.stats.prefix_cache_queries for e in engines)
                h0 = sum(e.stats.prefix_cache_hits for e in engines)
                g0 = sum(e.stats.generation_tokens for e in engines)
                watcher = asyncio.create_task(watch())
                tasks = [asyncio.create_task(converse(c)) for c in convs]
                await asyncio.sleep(args.duration * scale)
                q = sum(e.stats.prefix_cache_queries for e in engines) - q0
                h = sum(e.stats.prefix_cache_hits for e in engines) - h0
                g = sum(e.stats.generation_tokens for e in engines) - g0
                n_requests = len(ttfts)
                for t in [*tasks, watcher]:
                    t.cancel()
                await asyncio.gather(*tasks, watcher, return_exceptions=True)
    return PolicyResult(policy, ttfts, n_requests, failed, g, args.duration, h / q if q else None,
                        max(held.values()), args.max_num_seqs)


async def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.ERROR)
    convs = draw(args)
    p = profile(args)
    print(f"mode {args.mode}: {args.replicas} × {p.name} (max_num_seqs = window = {args.max_num_seqs}, KV "
          f"{p.num_blocks * p.block_size:,} tokens each); {args.tenants} tenants × ~{int(args.system_words * 1.15):,}-token "
          f"system prompts; {len(convs)} conversations of ~{args.turns} turns over {args.duration:g} s")
    results = []
    for policy in args.policies.split(","):
        t0 = time.monotonic()
        results.append(await (run_virtual if args.mode == "virtual" else run_http)(policy, convs, args))
        print(f"  {policy}: {time.monotonic() - t0:.0f} s", flush=True)
    print()
    rows = []
    for r in results:
        rows.append([r.policy, f"{r.hit_rate:.1%}" if r.hit_rate is not None else "—", f"{pct(r.ttft, 50) * 1000:.0f}",
                     f"{pct(r.ttft, 99) * 1000:.0f}", f"{r.requests / r.seconds:.1f}", f"{r.tokens / r.seconds:.0f}",
                     f"{r.max_held} / {r.window}", r.failed])
    print(table(["policy", "prefix-cache hit rate", "TTFT p50 ms", "TTFT p99 ms", "req/s", "gen tok/s",
                 "max held / window", "failed"], rows))
    by = {r.policy: r for r in results}
    if "round_robin" in by and "prefix_load" in by:
        rr, pl = by["round_robin"], by["prefix_load"]
        print("\n" + table(["ratio", "value", "target"], [
            ["TTFT p50: round-robin / prefix+load", f"{pct(rr.ttft, 50) / pct(pl.ttft, 50):.1f}×", "≥ 2×"],
            ["TTFT p99: round-robin / prefix+load", f"{pct(rr.ttft, 99) / pct(pl.ttft, 99):.1f}×", "—"],
            ["throughput: prefix+load / round-robin", f"{pl.tokens / max(1, rr.tokens):.2f}", "—"],
            ["any replica above its window", "no" if all(r.max_held <= r.window for r in results) else "YES", "no"],
        ]))


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("virtual", "http"), default="virtual")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--profile", default="h100-llama3-8b")
    ap.add_argument("--replicas", type=int, default=8)
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--kv-tokens", type=int, default=100_000, help="KV cache per replica, tokens")
    ap.add_argument("--tenants", type=int, default=64)
    ap.add_argument("--skew", action="store_true", help="Zipf-like tenant popularity instead of uniform")
    ap.add_argument("--system-words", type=int, default=3000)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--think", type=float, default=3.0, help="mean seconds between turns")
    ap.add_argument("--rate", type=float, default=8.0, help="conversations started per second")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--time-scale", type=float, default=20.0, help="http mode: wall s per simulated s")
    ap.add_argument("--max-starting", type=int, default=None, help="prefill pacing (0 = off; default as configured)")
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    if args.mode == "virtual":
        from benchmarks.virtual_cluster import run_virtual as on_virtual_clock

        on_virtual_clock(main(args))
    else:
        asyncio.run(main(args))


if __name__ == "__main__":
    cli()
