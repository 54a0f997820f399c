"""Round-robin: each endpoint in turn, blind to load. Kept as the baseline the other policies beat."""

from __future__ import annotations

from router.context import RequestContext
from router.picking.base import Policy
from serving.endpoint import Endpoint


class RoundRobin(Policy):
    name = "round_robin"

    def __init__(self) -> None:
        self._turn = 0

    def pick(self, ctx: RequestContext, endpoints: list[Endpoint]) -> Endpoint | None:
        self._turn += 1
        return endpoints[self._turn % len(endpoints)]
