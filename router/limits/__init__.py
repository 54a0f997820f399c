"""Stage 3: limits and budgets — reserve before the engine is called, settle to real usage after.

A limiter reserves a request's worst case (prompt tokens + max_tokens) up front, so a stream can never
run past a limit, and gives back what was not used when the engine's real usage is known. Concrete
limiters live one per file beside this one: ``local.py`` (one process, the embedded default) and
``redis.py`` (shared by replicas); ``choose.py`` picks one from settings.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable

from router.context import RequestContext
from router.limits.reservation import limited
from serving.backends.base import Usage


class Limiter(abc.ABC):
    #: ``reserve`` is a round trip to a shared store (the pipeline may overlap it with the engine's).
    remote: bool = False

    @abc.abstractmethod
    async def reserve(self, ctx: RequestContext) -> None:
        """Reserve the request's cost or raise ``OpenAIError`` 429 (with Retry-After and x-ratelimit-*).

        Stores what ``settle`` needs in ``ctx.reservation`` and response headers in ``ctx.headers``.
        """

    def begin_reserve(self, ctx: RequestContext) -> Awaitable[None]:
        """``reserve``, started now where the limiter can (its store command queued before this returns, to
        share a write with what else this loop pass sends), awaited later. By default, ``reserve`` itself."""
        return self.reserve(ctx)

    @abc.abstractmethod
    async def settle(self, ctx: RequestContext, usage: Usage | None) -> None:
        """Replace the reservation with the real usage (None: nothing was generated)."""

    async def start(self) -> None:
        """Start background work (the Redis limiter renews concurrency leases and replays settlements)."""

    def begin_settle(self, ctx: RequestContext, usage: Usage | None) -> Awaitable[None] | None:
        """``settle``, started now where the limiter can (its store write queued before this returns, to
        leave before the caller's next loop tick), awaited later: the pipeline calls it before the
        response's last bytes, so a client that sends its next request on receiving them finds its
        concurrency slot free. None: nothing for the caller to wait for — settled already, or completed
        by the limiter itself, where no slot waits on it (no task is made for it, which the hot path
        would pay ~10 µs for). By default, ``settle`` itself."""
        return self.settle(ctx, usage)

    def may_defer(self, ctx: RequestContext) -> bool:
        """May ``reserve`` for this request be awaited only after its engine request was opened?

        Waiting for a store's round trip before calling the engine puts that round trip in every
        request's latency; overlapping it with the engine's own time to first byte hides it. The price
        is paid only when the reserve then refuses: the engine request is aborted, its work wasted (the
        client still gets its 429 and nothing else). So a limiter says yes only where a refusal is
        unlikely — by default, where there is nothing to refuse (a tenant without limits).
        """
        ident = ctx.identity
        return ident is None or not limited(ident.limits)

    def holds_slot(self, ctx: RequestContext) -> bool:
        """Does the request hold a concurrency slot that must be free before its client sees the end of
        the response? (The pipeline then waits for the settle before sending the last bytes.)"""
        return False

    async def close(self) -> None:
        pass


class Unlimited(Limiter):
    """No limits: the embedded default until a tenant is given quotas and a limiter is configured."""

    async def reserve(self, ctx: RequestContext) -> None:
        return None

    async def settle(self, ctx: RequestContext, usage: Usage | None) -> None:
        return None
