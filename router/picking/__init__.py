"""Endpoint-picking policies by name. Adding a policy: one file, one line here.

``round_robin`` and ``least_outstanding`` are the load-blind and the gateway-count baselines;
``least_loaded`` weighs load (gateway in-flight + scraped queue) and KV-cache use; ``prefix_load`` adds
prefix affinity to those, gated by load. Weights and prefix parameters come from ``SchedulerSettings``.
"""

from __future__ import annotations

from collections.abc import Callable

from noor.settings import SchedulerSettings
from router.capacity import Capacity
from router.picking.base import Policy
from router.picking.least_outstanding import LeastOutstanding
from router.picking.round_robin import RoundRobin
from router.picking.scorers import KVCacheScorer, LoadScorer, PrefixAffinityScorer
from router.picking.weighted import WeightedPicker


def _least_loaded(s: SchedulerSettings, cap: Capacity) -> Policy:
    w = s.scorer_weights
    return WeightedPicker([(LoadScorer(cap), w.get("load", 1.0)), (KVCacheScorer(cap), w.get("kv_cache", 0.5))],
                          name="least_loaded")


def _prefix_load(s: SchedulerSettings, cap: Capacity) -> Policy:
    w = s.scorer_weights
    prefix = PrefixAffinityScorer(s.prefix_block_chars, s.prefix_max_blocks, s.prefix_lru_blocks)
    return WeightedPicker([(prefix, w.get("prefix", 2.0)), (LoadScorer(cap), w.get("load", 1.0)),
                           (KVCacheScorer(cap), w.get("kv_cache", 0.5))], name="prefix_load")


POLICIES: dict[str, Callable[[SchedulerSettings, Capacity], Policy]] = {
    LeastOutstanding.name: lambda s, c: LeastOutstanding(),
    RoundRobin.name: lambda s, c: RoundRobin(),
    "least_loaded": _least_loaded,
    "prefix_load": _prefix_load,
}


def make_policy(name: str, settings: SchedulerSettings | None = None, capacity: Capacity | None = None) -> Policy:
    try:
        factory = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown routing policy {name!r}; known: {', '.join(sorted(POLICIES))}") from None
    settings = settings or SchedulerSettings()
    return factory(settings, capacity or Capacity(window=settings.window_per_endpoint or 64,
                                                  kv_threshold=settings.kv_cache_threshold))
