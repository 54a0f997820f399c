"""The one small interface of an endpoint scorer.

``score`` rates each candidate endpoint for one request: higher is better, in [0, 1] so weights mean the
same across scorers. ``VETO`` (any negative score) says "not this one while another is acceptable" —
how load gates affinity: an endpoint at its window is vetoed, whatever its prefix cache holds.
``routed`` tells a stateful scorer where the request went (prefix affinity remembers it).
"""

from __future__ import annotations

import abc

from router.context import RequestContext
from serving.endpoint import Endpoint

VETO = -1.0


class Scorer(abc.ABC):
    name: str = "scorer"

    @abc.abstractmethod
    def score(self, ctx: RequestContext, endpoints: list[Endpoint]) -> list[float]:
        """One score per endpoint, in order: [0, 1], higher is better; negative vetoes."""

    def routed(self, ctx: RequestContext, endpoint: Endpoint) -> None:
        """The request was sent to ``endpoint``."""
