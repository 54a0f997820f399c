"""The one small interface every endpoint-picking policy implements (one policy per file)."""

from __future__ import annotations

import abc

from router.context import RequestContext
from serving.endpoint import Endpoint


class Policy(abc.ABC):
    name: str = "base"

    @abc.abstractmethod
    def pick(self, ctx: RequestContext, endpoints: list[Endpoint]) -> Endpoint | None:
        """Choose one of ``endpoints`` (all healthy, never empty) for ``ctx``; None if none should take it."""
