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
        """Each endpoint's combined score; vetoed endpoints get ``-inf``."""
        n = len(endpoints)
        totals = [0.0] * n
        vetoed = [False] * n
        for scorer, weight in self.scorers:
            for i, s in enumerate(scorer.score(ctx, endpoints)):
                if s < 0.0:
                    vetoed[i] = True
                else:
                    totals[i] += weight * s
        if any(vetoed) and not all(vetoed):
            totals = [float("-inf") if v else t for t, v in zip(totals, vetoed, strict=True)]
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
