"""Load: prefer the endpoint with the most batch room left; veto those at their window.

Load is the gateway's in-flight count plus what the engine reported beyond it at the last scrape
(``Capacity.load``), so it moves on every request and still sees other gateways' traffic. An endpoint
whose signals went stale counts as saturated: it was scraped once, so silence means trouble.
"""

from __future__ import annotations

import time

from router.capacity import Capacity
from router.context import RequestContext
from router.picking.scorers.base import VETO, Scorer
from serving.endpoint import Endpoint


class LoadScorer(Scorer):
    name = "load"

    def __init__(self, capacity: Capacity) -> None:
        self.capacity = capacity

    def score(self, ctx: RequestContext, endpoints: list[Endpoint]) -> list[float]:
        cap = self.capacity
        now = time.monotonic()
        window = float(cap.window)
        stale_after = cap.stale_after_s
        out = []
        for ep in endpoints:  # Capacity.load and .stale, inlined: this runs for every endpoint per pick
            load = ep.inflight
            sig = ep.signals
            if sig is not None:
                if now - sig.scraped_at > stale_after:
                    out.append(VETO)
                    continue
                outside = sig.running + sig.waiting - ep.inflight_at_scrape
                if outside > 0:
                    load += outside
            free = 1.0 - load / window
            out.append(free if free > 0.0 else VETO)
        return out
