"""The scheduler over simulated engines in virtual time: exact, repeatable, and free of this machine's load.

The HTTP benchmarks measure the whole gateway, but on a small shared machine their clock is the wall
clock, and a busy CPU distorts them. Here the same scheduler objects (``FairAdmission`` or
``DirectAdmission``, the picking policies, ``Capacity``) drive the simulator's engine model
(``serving.simulator.engine.Engine``: vLLM V1's continuous batching, KV blocks, prefix cache) on an
asyncio loop whose clock is virtual: when every task waits, the clock jumps to the next timer instead of
sleeping. Only the HTTP hops are missing (they add ~1 ms, see the HTTP runs); every admission decision,
queue wait, deadline, engine step and scrape happens at its virtual time.

    async def main(): ...
    run_virtual(main())   # instead of asyncio.run
"""

from __future__ import annotations

import asyncio
import selectors
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from router.admission import Admission
from router.context import RequestContext
from router.errors import OpenAIError
from serving.backends.base import Backend, EngineSignals, Usage
from serving.endpoint import Endpoint
from serving.pool import Pool
from serving.simulator.engine import Engine, Sequence
from serving.simulator.profiles import Profile


class _JumpingSelector(selectors.DefaultSelector):
    """Where the loop would sleep until its next timer, advance the virtual clock instead."""

    loop: VirtualLoop

    def select(self, timeout: float | None = None):  # type: ignore[override]
        if timeout is not None and timeout > 0:
            self.loop.now += timeout
            timeout = 0
        return super().select(timeout)


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        selector = _JumpingSelector()
        super().__init__(selector)
        selector.loop = self
        self.now = 0.0

    def time(self) -> float:
        return self.now


def run_virtual(coro: Coroutine[Any, Any, Any]) -> Any:
    loop = VirtualLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


class EngineBackend(Backend):
    """Holds one simulated engine; the scheduler only looks at endpoints, requests go to ``engine``."""

    engine = "sim"

    def __init__(self, url: str, engine: Engine) -> None:
        super().__init__(url)
        self.sim = engine
        self.wake = asyncio.Event()

    async def complete(self, request):  # pragma: no cover - not used in virtual runs
        raise NotImplementedError

    async def stream(self, request):  # pragma: no cover - not used in virtual runs
        raise NotImplementedError

    async def health(self) -> bool:
        return True


@dataclass(slots=True)
class Outcome:
    tenant: str
    sent: float
    ttft: float | None = None
    latency: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    status: int = 200
    endpoint: str = ""
    reply: str = ""
    gateway_wait: float | None = None  # in the gateway's queue
    engine_wait: float | None = None  # in the engine's own waiting queue


class VirtualCluster:
    """``n`` simulated engines as one pool, stepped and scraped in virtual time."""

    def __init__(self, n: int, profile: Profile, *, scrape_interval_s: float = 0.25, seed: int = 0) -> None:
        self.profile = profile
        self.pool = Pool("virtual", engine="sim")
        for i in range(n):
            backend = EngineBackend(f"sim://{i}", Engine(profile, seed=seed + i))
            self.pool.endpoints.append(Endpoint(name=f"sim{i}", pool="virtual", backend=backend, healthy=True))
        self.scrape_interval_s = scrape_interval_s
        self._tasks: list[asyncio.Task] = []
        self.outcomes: list[Outcome] = []  # every request's, in order sent (cut-off ones included)
        self.max_held: dict[str, int] = {ep.name: 0 for ep in self.pool.endpoints}  # running + waiting, peak

    @property
    def engines(self) -> list[Engine]:
        return [ep.backend.sim for ep in self.pool.endpoints]  # type: ignore[attr-defined]

    async def __aenter__(self) -> VirtualCluster:
        self._tasks = [asyncio.create_task(self._step(ep)) for ep in self.pool.endpoints]
        self._tasks.append(asyncio.create_task(self._scrape()))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _step(self, ep: Endpoint) -> None:
        backend: EngineBackend = ep.backend  # type: ignore[assignment]
        engine, loop = backend.sim, asyncio.get_running_loop()
        while True:
            if not engine.has_work():
                backend.wake.clear()
                await backend.wake.wait()
            step = engine.schedule(loop.time())
            if step is None:
                backend.wake.clear()
                await backend.wake.wait()
                continue
            await asyncio.sleep(step.duration)
            for seq in engine.complete(step, loop.time()):
                if seq.listener is not None:
                    seq.listener.set()

    async def _scrape(self) -> None:
        """What the pool's scraper does over HTTP: engine signals onto the endpoints, then the listeners."""
        while True:
            for ep in self.pool.endpoints:
                e: Engine = ep.backend.sim  # type: ignore[attr-defined]
                ep.signals = EngineSignals(running=e.num_running, waiting=e.num_waiting,
                                           kv_cache_usage=e.kv_cache_usage(),
                                           prefix_cache_queries=e.stats.prefix_cache_queries,
                                           prefix_cache_hits=e.stats.prefix_cache_hits,
                                           scraped_at=time.monotonic())  # real clock: what staleness reads
                ep.inflight_at_scrape = ep.inflight
            self.pool._notify()
            await asyncio.sleep(self.scrape_interval_s)

    async def request(self, admission: Admission, ctx: RequestContext, prompt_ids: list[int], max_tokens: int,
                      tenant: str) -> Outcome:
        """One request through admission onto an engine, to its last token; TTFT in virtual seconds."""
        loop = asyncio.get_running_loop()
        out = Outcome(tenant, loop.time())
        self.outcomes.append(out)
        try:
            ep = await admission.admit(ctx, self.pool)
        except OpenAIError as exc:
            out.status = exc.status
            return out
        out.gateway_wait = loop.time() - out.sent
        backend: EngineBackend = ep.backend  # type: ignore[assignment]
        seq: Sequence | None = None
        try:
            seq = backend.sim.add_request(prompt_ids, max_tokens=max_tokens, now=loop.time(), ignore_eos=True)
            seq.listener = asyncio.Event()
            backend.wake.set()
            held = backend.sim.num_running + backend.sim.num_waiting
            if held > self.max_held[ep.name]:
                self.max_held[ep.name] = held
            while not seq.finished:
                seq.listener.clear()
                await seq.listener.wait()
                if out.ttft is None and seq.first_token_at is not None:
                    out.ttft = seq.first_token_at - out.sent
                    if ctx.on_first_token is not None:  # as the relay does
                        ctx.on_first_token()
            out.latency = loop.time() - out.sent
            if seq.admitted_at is not None:
                out.engine_wait = seq.admitted_at - out.sent - out.gateway_wait
            out.prompt_tokens, out.completion_tokens = seq.num_prompt_tokens, seq.num_output_tokens
            out.reply = "".join(seq.output_texts)
            out.cached_tokens = seq.cached_tokens
            out.endpoint = ep.name
            ctx.usage = Usage(out.prompt_tokens, out.completion_tokens)
            return out
        except asyncio.CancelledError:
            if seq is not None and not seq.finished:
                backend.sim.abort(seq, loop.time())
                ctx.usage = Usage(seq.num_prompt_tokens, seq.num_output_tokens)
            raise
        finally:
            admission.release(ctx, ep)
