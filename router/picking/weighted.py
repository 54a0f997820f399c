"""The weighted picker: combine scorers with weights and take the best endpoint.

``total(ep) = Σ weight · score(ep)`` over the scorers; the highest total wins. A negative score from any
scorer vetoes the endpoint unless every endpoint is vetoed (then the least bad one still serves: a
direct admission has nowhere else to put the request). Ties are broken by a rotating start, so equal
endpoints share the load instead of the first one taking everything. Every scorer is told where the
request went (prefix affinity learns from it).
"""

from __future__ import annotations

from collections.abc import Sequence

from router.context import RequestContext
from router.picking.base import Policy
from router.picking.scorers.base import Scorer
from serving.endpoint import Endpoint


class WeightedPicker(Policy):
    name = "weighted"

    def __init__(self, scorers: Sequence[tuple[Scorer, float]], name: str | None = None) -> None:
        self.scorers = [(s, float(w)) for s, w in scorers if w != 0]
        if name:
            self.name = name
        self._turn = 0

    def totals(self, ctx: RequestContext, endpoints: list[Endpoint]) -> list[float]:
        """Each endpoint's combined score; vetoed endpoints get ``-inf`` (unless all are vetoed)."""
        per_scorer = [(weight, scorer.score(ctx, endpoints)) for scorer, weight in self.scorers]
        totals = [0.0] * len(endpoints)
        vetoes = False
        for weight, scores in per_scorer:
            totals = [t + weight * s for t, s in zip(totals, scores, strict=True)]
            vetoes = vetoes or min(scores) < 0.0
        if vetoes:
            mask = [min(col) < 0.0 for col in zip(*(scores for _, scores in per_scorer), strict=True)]
            if not all(mask):
                totals = [float("-inf") if m else t for t, m in zip(totals, mask, strict=True)]
        return totals

    def pick(self, ctx: RequestContext, endpoints: list[Endpoint]) -> Endpoint | None:
        n = len(endpoints)
        if n == 1:
            best = endpoints[0]
        else:
            totals = self.totals(ctx, endpoints)
            self._turn = turn = (self._turn + 1) % n
            best_i, best_t = turn, totals[turn]
            for i in range(turn + 1, turn + n):
                j = i % n
                if totals[j] > best_t:
                    best_i, best_t = j, totals[j]
            best = endpoints[best_i]
        for scorer, _ in self.scorers:
            scorer.routed(ctx, best)
        return best
