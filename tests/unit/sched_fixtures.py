"""Small builders for scheduler unit tests: endpoints that are never called, contexts with identities."""

from __future__ import annotations

import itertools

from router.context import RequestContext
from router.store.base import Identity, TenantLimits
from serving.backends.base import Backend, EngineSignals
from serving.endpoint import Endpoint
from serving.pool import Pool

_ids = itertools.count()


class IdleBackend(Backend):
    """A backend the scheduler only looks at: admission and picking never call an engine."""

    engine = "none"

    async def complete(self, request):  # pragma: no cover - never called
        raise AssertionError("the scheduler must not call the engine")

    async def stream(self, request):  # pragma: no cover - never called
        raise AssertionError("the scheduler must not call the engine")

    async def health(self) -> bool:
        return True


def make_pool(n: int, name: str = "p") -> Pool:
    pool = Pool(name, engine="none")
    for i in range(n):
        pool.endpoints.append(Endpoint(name=f"e{i}", pool=name, backend=IdleBackend(f"http://e{i}"), healthy=True))
    return pool


def ctx(tenant: str = "a", *, prompt: int = 100, max_tokens: int = 100, weight: float = 1.0,
        priority: str = "interactive", body: dict | None = None) -> RequestContext:
    c = RequestContext(request_id=f"r{next(_ids)}", kind="chat", body=body or {})
    c.identity = Identity(key_id="k", tenant_id=tenant, tenant_name=tenant, models=frozenset({"*"}),
                          limits=TenantLimits(), weight=weight, priority=priority)
    c.prompt_tokens, c.max_tokens = prompt, max_tokens
    return c


def signals(running: float = 0, waiting: float = 0, kv: float = 0.0, age: float = 0.0) -> EngineSignals:
    import time

    return EngineSignals(running=running, waiting=waiting, kv_cache_usage=kv, scraped_at=time.monotonic() - age)
