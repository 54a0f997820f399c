"""Least outstanding requests: the endpoint with the fewest requests this gateway has in flight on it.

Cheap and reactive (the count moves on every request, no scrape needed); ties go round-robin so equal
endpoints share the load instead of the first one taking every request.
"""

from __future__ import annotations

from router.context import RequestContext
from router.picking.base import Policy
from serving.endpoint import Endpoint


class LeastOutstanding(Policy):
    name = "least_outstanding"

    def __init__(self) -> None:
        self._turn = 0

    def pick(self, ctx: RequestContext, endpoints: list[Endpoint]) -> Endpoint | None:
        self._turn += 1
        n = len(endpoints)
        best = None
        for i in range(n):
            ep = endpoints[(self._turn + i) % n]
            if best is None or ep.inflight < best.inflight:
                best = ep
        return best
