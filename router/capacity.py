"""How loaded an endpoint is, and whether it has room for one more request — shared by admission and picking.

Two sources, combined so each covers the other's blind spot:

* the gateway's own in-flight count (``Endpoint.inflight``) moves on every request, so a release frees
  room at once, between scrapes;
* the engine's scraped ``running + waiting`` also counts requests from elsewhere (other gateway
  replicas). What it reported beyond our own in-flight count at scrape time is taken as that outside
  load and added to our live count until the next scrape.

Signals older than ``stale_after_s`` are not trusted: admission falls back to the in-flight count alone
(so a broken scrape never starves a queue), while the picking scorers count such an endpoint as
saturated (so it gets traffic only when nothing better is left).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from serving.backends.base import EngineSignals
from serving.endpoint import Endpoint


@dataclass(slots=True)
class Capacity:
    """The batch window of each endpoint and the KV-cache threshold above which it takes no more."""

    #: running + waiting requests an endpoint may hold (derived from the engine's ``max_num_seqs``).
    window: int = 64
    kv_threshold: float = 0.95
    #: scraped signals older than this are stale (a few scrape intervals).
    stale_after_s: float = 3.0

    def fresh(self, ep: Endpoint, now: float) -> EngineSignals | None:
        """The endpoint's signals if recent enough to trust, else None."""
        sig = ep.signals
        if sig is None or now - sig.scraped_at > self.stale_after_s:
            return None
        return sig

    def stale(self, ep: Endpoint, now: float) -> bool:
        """Signals were scraped once but not recently: the engine or its metrics are in trouble."""
        sig = ep.signals
        return sig is not None and now - sig.scraped_at > self.stale_after_s

    def load(self, ep: Endpoint, now: float | None = None) -> float:
        """Requests on the endpoint now: ours in flight, plus what others held at the last fresh scrape."""
        sig = ep.signals
        if sig is None:
            return ep.inflight
        if (now if now is not None else time.monotonic()) - sig.scraped_at > self.stale_after_s:
            return ep.inflight
        outside = sig.running + sig.waiting - ep.inflight_at_scrape
        return ep.inflight + outside if outside > 0 else ep.inflight

    def has_room(self, ep: Endpoint, now: float) -> bool:
        """Below the window, and below the KV threshold — unless we have nothing on it at all, so a stale
        KV reading can never keep an endpoint idle while requests wait (work conservation)."""
        window = self.window
        inflight = ep.inflight
        sig = ep.signals
        if sig is None or now - sig.scraped_at > self.stale_after_s:
            return inflight < window
        outside = sig.running + sig.waiting - ep.inflight_at_scrape
        load = inflight + outside if outside > 0 else inflight
        if load >= window:
            return False
        return inflight == 0 or sig.kv_cache_usage < self.kv_threshold

    def with_room(self, endpoints: list[Endpoint], now: float, exclude: frozenset[Endpoint] = frozenset()) -> list[Endpoint]:
        """The healthy endpoints (not in ``exclude``) that have room: ``has_room`` as one tight loop, since
        admission runs it on every decision."""
        window, kv_max, stale_after = self.window, self.kv_threshold, self.stale_after_s
        out = []
        for ep in endpoints:
            inflight = ep.inflight
            if inflight >= window or not ep.healthy or (exclude and ep in exclude):
                continue
            sig = ep.signals
            if sig is not None and now - sig.scraped_at <= stale_after:
                outside = sig.running + sig.waiting - ep.inflight_at_scrape
                if outside > 0 and inflight + outside >= window:
                    continue
                if inflight and sig.kv_cache_usage >= kv_max:
                    continue
            out.append(ep)
        return out
