"""Prefix affinity: prefer the endpoint that most likely still holds this prompt's prefix in its KV cache.

The gateway remembers, per endpoint, the block hashes of prompts it recently routed there (an LRU sized
like the engine's cache), and an index from block hash to the endpoints holding it. A request's score
on an endpoint is the fraction of its blocks that form a prefix remembered there. Walking the request's
hashes through the index costs one lookup per matched block, whatever the number of endpoints.

The LRU takes a prompt's blocks tail first, so the shared head of a prompt (the system prompt) is the
most recent and evicted last — as vLLM frees a finished sequence's blocks last-first.

This scorer never decides alone: the load scorer vetoes endpoints at their window (and fair admission
offers only endpoints with room), so affinity cannot overload the engine that holds a popular prefix.
"""

from __future__ import annotations

from collections import OrderedDict

from router.context import RequestContext
from router.picking.prompt_blocks import prompt_hashes
from router.picking.scorers.base import Scorer
from serving.endpoint import Endpoint


class PrefixAffinityScorer(Scorer):
    name = "prefix"

    def __init__(self, block_chars: int = 256, max_blocks: int = 128, lru_blocks: int = 16384) -> None:
        self.block_chars = block_chars
        self.max_blocks = max_blocks
        self.lru_blocks = lru_blocks
        self._lru: dict[Endpoint, OrderedDict[int, None]] = {}
        self._holders: dict[int, dict[Endpoint, None]] = {}

    def matched_blocks(self, ctx: RequestContext) -> dict[Endpoint, int]:
        """For each endpoint holding some prefix of the request: how many leading blocks.

        Holders of block i+1 are (but for rare evictions) a subset of the holders of block i, since a
        block's hash names its whole prefix and the LRU evicts a prompt's tail before its head. So the
        walk only looks at endpoints when the holder set shrinks: one lookup per block, plus one step per
        endpoint that drops out — not blocks × endpoints.
        """
        hashes = prompt_hashes(ctx, self.block_chars, self.max_blocks)
        holders = self._holders
        current = holders.get(hashes[0]) if hashes else None
        if not current:
            return {}
        match: dict[Endpoint, int] = {}
        depth = 1
        for h in hashes[1:]:
            nxt = holders.get(h)
            if not nxt:
                break
            if len(nxt) != len(current):
                for ep in current:
                    if ep not in nxt:
                        match[ep] = depth
            current = nxt
            depth += 1
        for ep in current:
            match[ep] = depth
        return match

    def score(self, ctx: RequestContext, endpoints: list[Endpoint]) -> list[float]:
        hashes = prompt_hashes(ctx, self.block_chars, self.max_blocks)
        match = self.matched_blocks(ctx) if self._holders else None
        if not match:
            return [0.0] * len(endpoints)
        n = float(len(hashes))
        return [match.get(ep, 0) / n for ep in endpoints]

    def routed(self, ctx: RequestContext, endpoint: Endpoint) -> None:
        hashes = prompt_hashes(ctx, self.block_chars, self.max_blocks)
        if not hashes:
            return
        lru = self._lru.get(endpoint)
        if lru is None:
            lru = self._lru[endpoint] = OrderedDict()
        holders = self._holders
        for h in reversed(hashes):
            if h in lru:
                lru.move_to_end(h)
            else:
                lru[h] = None
                eps = holders.get(h)
                if eps is None:
                    holders[h] = {endpoint: None}
                else:
                    eps[endpoint] = None
        while len(lru) > self.lru_blocks:
            old, _ = lru.popitem(last=False)
            eps = holders[old]
            del eps[endpoint]
            if not eps:
                del holders[old]

    def forget(self, endpoint: Endpoint) -> None:
        """The endpoint left the pool (or restarted with an empty cache)."""
        for h in self._lru.pop(endpoint, ()):
            eps = self._holders.get(h)
            if eps is not None:
                eps.pop(endpoint, None)
                if not eps:
                    del self._holders[h]
