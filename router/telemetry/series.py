"""Counter and histogram families whose per-request cost is a dict update.

prometheus-client's own metric objects take a lock per value and validate on every call: ~1 µs per
``inc``/``observe`` here, ten of them per request. The gateway updates its metrics from one thread
(the event loop), so plain dicts of floats are enough; prometheus-client still renders them (these
families are read by ``GatewayMetrics.collect`` at scrape time). Reads from another thread (the
own-port metrics server) copy each dict first — ``list(d.items())`` runs under the GIL in one step.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString


class CounterVec:
    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        self.name, self.documentation, self.labels = name, documentation, list(labels)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, key: tuple[str, ...], amount: float = 1.0) -> None:
        values = self.values
        values[key] = values.get(key, 0.0) + amount

    def get(self, key: tuple[str, ...]) -> float:
        return self.values.get(key, 0.0)

    def family(self) -> CounterMetricFamily:
        fam = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, value in list(self.values.items()):
            fam.add_metric(list(key), value)
        return fam


class HistogramVec:
    def __init__(self, name: str, documentation: str, labels: Sequence[str], buckets: Sequence[float]) -> None:
        self.name, self.documentation, self.labels = name, documentation, list(labels)
        self.bounds = tuple(float(b) for b in buckets)
        self._les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        # per label key: observations per bucket (not cumulative; the last is +Inf), then their sum
        self.series: dict[tuple[str, ...], list[float]] = {}

    def observe(self, key: tuple[str, ...], value: float) -> None:
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = [0.0] * (len(self.bounds) + 2)
        s[bisect_left(self.bounds, value)] += 1  # bucket "le" bound: the first bound >= value
        s[-1] += value

    def count(self, key: tuple[str, ...]) -> float:
        s = self.series.get(key)
        return sum(s[:-1]) if s else 0.0

    def family(self) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, s in list(self.series.items()):
            s = list(s)
            cumulative, buckets = 0.0, []
            for le, n in zip(self._les, s[:-1], strict=True):
                cumulative += n
                buckets.append((le, cumulative))
            fam.add_metric(list(key), buckets, s[-1])
        return fam
