"""Gauges read at scrape time: endpoints, engines, queues and in-flight requests.

These numbers already live in the pools (health, in-flight counts, the engine signals the pool scrapes
for picking) and in the admission (queue depths). Reading them when Prometheus asks costs nothing per
request, where keeping gauges up to date would cost something on every one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from router.admission import Admission
from serving.pool import Pool

#: EngineSignals field → (metric name, help)
_SIGNALS = {
    "running": ("noor_engine_requests_running", "Requests the engine reports running (its own count, all gateways)."),
    "waiting": ("noor_engine_requests_waiting", "Requests the engine reports waiting in its own queue."),
    "kv_cache_usage": ("noor_engine_kv_cache_usage_ratio", "Fraction of the engine's KV cache in use (0-1)."),
}
#: The engine's own counters, re-exported as counters (rate() copes with an engine restart's reset).
_COUNTERS = {
    "prefix_cache_queries": ("noor_engine_prefix_cache_queries", "Engine's prefix-cache queries (tokens), as scraped."),
    "prefix_cache_hits": ("noor_engine_prefix_cache_hits", "Engine's prefix-cache hits (tokens), as scraped."),
}


class GatewayCollector(Collector):
    def __init__(self, pools: Mapping[str, Pool], admission: Admission, in_progress: Callable[[], int]) -> None:
        self._pools = pools
        self._admission = admission
        self._in_progress = in_progress

    def describe(self) -> list[Metric]:
        # Names are fixed; returning none keeps registration from calling collect() early.
        return []

    def collect(self) -> Iterator[Metric]:
        now = time.monotonic()
        labels = ["pool", "endpoint"]
        healthy = GaugeMetricFamily("noor_endpoint_healthy", "1 if the endpoint is in rotation.", labels=[*labels, "engine"])
        inflight = GaugeMetricFamily("noor_endpoint_inflight", "Requests this gateway has in flight on the endpoint.", labels=labels)
        age = GaugeMetricFamily("noor_engine_signals_age_seconds", "Age of the engine signals last scraped.", labels=labels)
        signals: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            f: GaugeMetricFamily(name, doc, labels=labels) for f, (name, doc) in _SIGNALS.items()
        }
        signals |= {f: CounterMetricFamily(name, doc, labels=labels) for f, (name, doc) in _COUNTERS.items()}
        pool_sizes = GaugeMetricFamily("noor_pool_endpoints", "Endpoints per pool, by state.", labels=["pool", "state"])
        for pool in list(self._pools.values()):
            up = 0
            eps = list(pool.endpoints)  # copies: the own-port server scrapes from its own thread
            for ep in eps:
                key = [pool.name, ep.name]
                up += ep.healthy
                healthy.add_metric([*key, ep.engine], 1.0 if ep.healthy else 0.0)
                inflight.add_metric(key, float(ep.inflight))
                sig = ep.signals
                if sig is not None:
                    age.add_metric(key, max(0.0, now - sig.scraped_at))
                    for f, family in signals.items():
                        family.add_metric(key, float(getattr(sig, f)))
            pool_sizes.add_metric([pool.name, "healthy"], float(up))
            pool_sizes.add_metric([pool.name, "unhealthy"], float(len(eps) - up))
        yield from (healthy, inflight, pool_sizes, age, *signals.values())

        depth = GaugeMetricFamily("noor_queue_depth", "Requests waiting for admission, by pool and priority.", labels=["pool", "priority"])
        for (pool_name, priority), n in sorted(dict(self._admission.queue_depths()).items()):
            depth.add_metric([pool_name, priority], float(n))
        yield depth
        yield GaugeMetricFamily("noor_requests_in_progress", "Requests the gateway is serving now.", value=float(self._in_progress()))
