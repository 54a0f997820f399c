"""``/metrics`` of a simulated engine, in Prometheus text format with vLLM's metric names and labels.

The values are read from the engine when scraped (a custom collector), so nothing is updated per token.
Labels are vLLM's: ``model_name`` (the served name) and ``engine`` (``"0"``, one engine per server).
Times in the histograms are simulated seconds (equal to wall seconds when ``time_scale`` is 1).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .engine import Engine, Histogram

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class EngineCollector(Collector):
    """Exposes one engine's state and counters under vLLM's names."""

    def __init__(self, engine: Engine, model_name: str) -> None:
        self.engine = engine
        self.labels = ["model_name", "engine"]
        self.values = [model_name, "0"]

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        g = GaugeMetricFamily(name, doc, labels=self.labels)
        g.add_metric(self.values, value)
        return g

    def _counter(self, name: str, doc: str, value: float) -> CounterMetricFamily:
        c = CounterMetricFamily(name, doc, labels=self.labels)
        c.add_metric(self.values, value)
        return c

    def _histogram(self, name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
        m = HistogramMetricFamily(name, doc, labels=self.labels)
        buckets = [("+Inf" if b == float("inf") else repr(float(b)), n) for b, n in h.cumulative()]
        m.add_metric(self.values, buckets, h.sum)
        return m

    def collect(self) -> Iterator[Metric]:
        e = self.engine
        s = e.stats
        p = e.profile
        yield self._gauge("vllm:num_requests_running", "Number of requests in model execution batches.", e.num_running)
        yield self._gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", e.num_waiting)
        yield self._gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", e.kv_cache_usage())
        yield self._counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            s.prefix_cache_queries,
        )
        yield self._counter(
            "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.", s.prefix_cache_hits
        )
        yield self._counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.", s.preemptions)
        yield self._counter("vllm:prompt_tokens", "Number of prefill tokens processed.", s.prompt_tokens)
        yield self._counter("vllm:generation_tokens", "Number of generation tokens processed.", s.generation_tokens)
        success = CounterMetricFamily(
            "vllm:request_success", "Count of successfully processed requests.", labels=[*self.labels, "finished_reason"]
        )
        for reason, n in s.finished.items():
            success.add_metric([*self.values, reason], n)
        yield success
        yield self._histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", s.ttft)
        yield self._histogram(
            "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", s.e2e
        )
        info = GaugeMetricFamily(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            labels=["block_size", "num_gpu_blocks", "kv_cache_size_tokens", "enable_prefix_caching", "engine"],
        )
        info.add_metric(
            [str(p.block_size), str(p.num_blocks), str(p.kv_capacity_tokens), str(p.enable_prefix_caching), "0"], 1.0
        )
        yield info


def make_registry(engine: Engine, model_name: str) -> CollectorRegistry:
    """A registry of its own per simulated engine, so that many fit in one process."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(engine, model_name))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
