"""From per-request records to the figures a sign-off is decided on.

The same function judges a step while the run goes (to stop at the first broken step) and afterwards
for the report, so the live decision and the report cannot disagree.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from loadtest.client import RequestResult
from loadtest.slo import METRICS, SLO, Verdict, judge

QUANTILES = (0.5, 0.9, 0.99)


def percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=float), q * 100)) if len(values) else None


@dataclass(slots=True)
class Summary:
    """Latency percentiles, tokens and errors of a group of requests (a step, a tenant, a step × tenant)."""

    arrivals: int = 0
    completed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    percentiles: dict[str, float | None] = field(default_factory=dict)  # "ttft_p99" → ms
    prompt_tokens: int = 0
    completion_tokens: int = 0
    window_s: float | None = None

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def error_rate(self) -> float:
        return self.error_count / self.arrivals if self.arrivals else 0.0

    @property
    def arrival_rate(self) -> float | None:
        return self.arrivals / self.window_s if self.window_s else None

    @property
    def output_tokens_per_s(self) -> float | None:
        """Output tokens of these requests per second of their arrival window: the load *offered*
        (what was asked for), not what was served in that window (``delivered_tokens_per_s``)."""
        return self.completion_tokens / self.window_s if self.window_s else None

    def p(self, metric: str, q: float) -> float | None:
        return self.percentiles.get(f"{metric}_p{q * 100:g}")

    def to_dict(self) -> dict:
        return {
            "arrivals": self.arrivals, "completed": self.completed, "errors": self.errors,
            "error_rate": self.error_rate, "percentiles": self.percentiles, "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens, "window_s": self.window_s,
            "arrival_rate": self.arrival_rate, "output_tokens_per_s": self.output_tokens_per_s,
        }


def summarize(records: Iterable[RequestResult], window_s: float | None = None, quantiles: Iterable[float] = QUANTILES) -> Summary:
    recs = list(records)
    s = Summary(arrivals=len(recs), window_s=window_s)
    s.errors = dict(Counter(r.error for r in recs if r.error is not None))
    ok = [r for r in recs if r.ok]
    s.completed = len(ok)
    s.prompt_tokens = sum(r.prompt_tokens or 0 for r in ok)
    s.completion_tokens = sum(r.completion_tokens or 0 for r in ok)
    samples = {
        "ttft": [r.ttft_ms for r in ok if r.ttft_ms is not None],
        "tpot": [r.tpot_ms for r in ok if r.tpot_ms is not None],
        "itl": [x for r in ok for x in r.itl_ms],
        "e2e": [r.e2e_ms for r in ok if r.e2e_ms is not None],
    }
    for metric in METRICS:
        for q in sorted(set(quantiles)):
            s.percentiles[f"{metric}_p{q * 100:g}"] = percentile(samples[metric], q)
    return s


def quantiles_for(slo: SLO | None) -> tuple[float, ...]:
    extra = tuple(o.quantile for o in slo.objectives) if slo else ()
    return tuple(sorted(set(QUANTILES + extra)))


def judge_step(records: Iterable[RequestResult], step: int, window_s: float | None, slo: SLO) -> tuple[Summary, Verdict]:
    """Judge the measured requests of ``step`` (warm-up requests do not count)."""
    s = summarize((r for r in records if r.step == step and r.phase == "measure"), window_s, quantiles_for(slo))
    return s, judge(slo, s.percentiles, s.error_rate, s.completed)


def token_times(r: RequestResult) -> list[tuple[float, float]]:
    """When the client received its output tokens: (unix time, tokens). A streamed request's tokens are
    spread over its content chunks (first at TTFT, then each inter-token gap); a non-streamed one's all
    arrive with the response."""
    if not r.ok or not r.completion_tokens or r.e2e_ms is None:
        return []
    if r.ttft_ms is None:
        return [(r.started_at + r.e2e_ms / 1000, float(r.completion_tokens))]
    t = r.started_at + r.ttft_ms / 1000
    times = [t]
    for gap in r.itl_ms:
        t += gap / 1000
        times.append(t)
    per = r.completion_tokens / len(times)
    return [(x, per) for x in times]


def delivered_tokens_per_s(records: Iterable[RequestResult], start: float, end: float) -> float | None:
    """Output tokens the clients received between ``start`` and ``end`` (unix times), per second: the
    throughput actually served in that window, which flattens where the pool saturates while the
    offered load keeps rising."""
    if end <= start:
        return None
    total = sum(n for r in records for t, n in token_times(r) if start <= t < end)
    return total / (end - start)

