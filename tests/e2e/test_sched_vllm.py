"""Fair admission in front of the real vLLM engine (CPU build, SmolLM2): the window holds at the engine
and one tenant's flood does not starve another. Kept short: ~30 small requests."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from benchmarks.harness import client, serve_gateway
from serving.backends.vllm import VLLM_METRICS, parse_signals
from tests.e2e.conftest import MODEL_A

pytestmark = pytest.mark.e2e

ASK = [{"role": "user", "content": "Write one sentence about rivers."}]


async def test_window_holds_and_a_flood_does_not_starve_another_tenant(vllm_url):
    window = 4
    async with serve_gateway([vllm_url], engine="vllm", engine_model=MODEL_A, window=window,
                             metrics_interval_s=0.25, deadline_s=300) as gw:
        key_a, key_b = await gw.tenant("flood"), await gw.tenant("steady")
        held: list[float] = []
        queued: list[int] = []
        stop = asyncio.Event()

        async def watch(session: aiohttp.ClientSession) -> None:  # the engine's own view, from its /metrics
            while not stop.is_set():
                async with session.get(vllm_url + "/metrics") as r:
                    sig = parse_signals(await r.text(), VLLM_METRICS)
                held.append(sig.running + sig.waiting)
                queued.append(gw.gateway.admission.queued())
                await asyncio.sleep(0.1)

        async with client(gw.url) as c, aiohttp.ClientSession() as session:
            watcher = asyncio.create_task(watch(session))
            flood = [asyncio.create_task(c.chat(key_a, "flood", ASK, model=gw.model, max_tokens=16))
                     for _ in range(28)]
            await asyncio.sleep(1.0)
            steady = []
            for _ in range(3):
                steady.append(await c.chat(key_b, "steady", ASK, model=gw.model, max_tokens=8))
            queued_after_b = gw.gateway.admission.queued()
            flooded = await asyncio.gather(*flood)
            stop.set()
            await watcher
    assert all(r.status == 200 for r in [*flooded, *steady]), [(r.tenant, r.status) for r in [*flooded, *steady]]
    assert max(held) <= window, held  # the engine never held more than the window, its queue included
    assert max(queued) >= 28 - window - 4  # the rest of the flood waited in the gateway
    assert queued_after_b > 0  # b was served while a still had requests queued
    b_worst = max(r.ttft for r in steady)
    a_median = sorted(r.ttft for r in flooded)[len(flooded) // 2]
    assert b_worst < a_median / 2, (b_worst, a_median)
