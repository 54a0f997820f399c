"""Scheduling end to end over simulated engines: client → gateway (fair admission) → 4 simulated vLLMs.

The simulator is a real HTTP server speaking vLLM's API and /metrics, with continuous batching; its
engine state is read directly to check what the engines hold while the gateway queues the rest.
"""

from __future__ import annotations

import asyncio

from benchmarks.harness import MODEL, client, serve_gateway
from serving.simulator.cluster import run_simulators

ENGINE_MODEL = "smollm2-135m-instruct"
HELLO = [{"role": "user", "content": "Tell me about continuous batching."}]


async def test_the_admission_window_holds_while_the_gateway_queues_the_rest():
    window = 6
    async with run_simulators(4, "cpu-smollm2", time_scale=0.25, max_num_seqs=8) as sims:
        async with serve_gateway(sims, engine_model=ENGINE_MODEL, window=window) as gw:
            key = await gw.tenant("flood")
            held, queued = [], []
            done = asyncio.Event()

            async def watch():
                while not done.is_set():
                    held.append(max(s.engine.num_running + s.engine.num_waiting for s in sims.servers))
                    queued.append(gw.gateway.admission.queued())
                    await asyncio.sleep(0.01)

            watcher = asyncio.create_task(watch())
            async with client(gw.url) as c:
                results = await asyncio.gather(*(c.chat(key, "flood", HELLO, model=MODEL, max_tokens=24)
                                                 for _ in range(80)))
            done.set()
            await watcher
    assert all(r.status == 200 and r.completion_tokens == 24 for r in results)
    assert max(held) <= window  # the engine never held more than the window, waiting included
    assert max(held) == window  # ...and the window was used in full
    assert max(queued) >= 80 - 4 * window - 8  # the rest waited in the gateway


async def test_a_flood_from_one_tenant_does_not_starve_another():
    async with run_simulators(4, "cpu-smollm2", time_scale=0.25, max_num_seqs=4) as sims:
        async with serve_gateway(sims, engine_model=ENGINE_MODEL, window=4) as gw:
            key_a, key_b = await gw.tenant("a"), await gw.tenant("b")
            async with client(gw.url) as c:
                alone = [await c.chat(key_b, "b", HELLO, model=MODEL, max_tokens=8) for _ in range(3)]
                flood = [asyncio.create_task(c.chat(key_a, "a", HELLO, model=MODEL, max_tokens=32))
                         for _ in range(160)]
                await asyncio.sleep(0.3)
                assert gw.gateway.admission.queued() > 100  # a's flood is queued in the gateway
                during = []
                for _ in range(4):
                    during.append(await c.chat(key_b, "b", HELLO, model=MODEL, max_tokens=8))
                    await asyncio.sleep(0.05)
                queued_after_b = gw.gateway.admission.queued()
                flood_results = await asyncio.gather(*flood)
    assert all(r.status == 200 for r in [*alone, *during, *flood_results])
    assert queued_after_b > 50  # b was served while a still had a long queue
    b_worst = max(r.ttft for r in during)
    a_typical = sorted(r.ttft for r in flood_results)[len(flood_results) // 2]
    # b waits about one slot turnover, not behind a's queue
    assert b_worst < a_typical / 3, (b_worst, a_typical)
    assert b_worst < 4 * max(r.ttft for r in alone) + 0.3, (b_worst, [r.ttft for r in alone])
