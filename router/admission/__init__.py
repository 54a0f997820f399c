"""Stage 4: admission — when, and onto which endpoint, a request may enter an engine.

``admit`` returns the endpoint the request was placed on (and counts it in flight); ``release`` ends
that. A queueing admission (fair, per tenant) waits here until an endpoint has batch capacity; the
direct one places the request at once on what the picking policy chooses.
"""

from __future__ import annotations

import abc

from router.context import RequestContext
from serving.endpoint import Endpoint
from serving.pool import Pool


class Admission(abc.ABC):
    @abc.abstractmethod
    async def admit(self, ctx: RequestContext, pool: Pool, exclude: frozenset[Endpoint] = frozenset()) -> Endpoint:
        """Place the request on an endpoint of ``pool`` not in ``exclude``; raise ``OpenAIError`` if none."""

    @abc.abstractmethod
    def release(self, ctx: RequestContext, endpoint: Endpoint) -> None:
        """The request left ``endpoint`` (finished, failed or cancelled); ``ctx.usage`` holds what it used."""

    def queue_depths(self) -> dict[tuple[str, str], int]:
        """Requests waiting now, by (pool, priority); read only when metrics are scraped.

        A queueing admission also stamps ``ctx.dequeued_at`` when a request leaves its queue, so the
        queue wait and the endpoint pick are told apart. No queue: nothing waits.
        """
        return {}

    async def close(self) -> None:
        pass
