"""KV-cache use: prefer the endpoint whose cache is emptiest (fewer preemptions, room for long prompts).

Read from the engine's scraped ``kv_cache_usage``; stale signals count as a full cache. An engine that
exports no signals scores the same as every other such engine (neutral).
"""

from __future__ import annotations

import time

from router.capacity import Capacity
from router.context import RequestContext
from router.picking.scorers.base import Scorer
from serving.endpoint import Endpoint


class KVCacheScorer(Scorer):
    name = "kv_cache"

    def __init__(self, capacity: Capacity) -> None:
        self.capacity = capacity

    def score(self, ctx: RequestContext, endpoints: list[Endpoint]) -> list[float]:
        stale_after = self.capacity.stale_after_s
        now = time.monotonic()
        out = []
        for ep in endpoints:
            sig = ep.signals
            if sig is None:
                out.append(1.0)
            elif now - sig.scraped_at > stale_after:
                out.append(0.0)
            else:
                use = sig.kv_cache_usage
                out.append(1.0 - use if use < 1.0 else 0.0)
        return out
