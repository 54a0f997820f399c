"""Direct admission: no gateway queue; the engine's own queue absorbs bursts.

The picking policy chooses among healthy endpoints; the request is counted in flight on it. With no
queue, the request leaves "the queue" the moment it arrives: it stamps ``ctx.dequeued_at`` at once, so
telemetry reports a zero queue wait and the whole admit call as the endpoint pick.
"""

from __future__ import annotations

import time

from router.admission import Admission
from router.context import RequestContext
from router.errors import no_capacity
from router.picking.base import Policy
from serving.endpoint import Endpoint
from serving.pool import Pool


class DirectAdmission(Admission):
    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    async def admit(self, ctx: RequestContext, pool: Pool, exclude: frozenset[Endpoint] = frozenset()) -> Endpoint:
        ctx.dequeued_at = time.perf_counter()
        candidates = [ep for ep in pool.endpoints if ep.healthy and ep not in exclude]
        endpoint = self.policy.pick(ctx, candidates) if candidates else None
        if endpoint is None:
            raise no_capacity(f"No healthy engine in pool '{pool.name}' can serve this request right now.")
        endpoint.inflight += 1
        return endpoint

    def release(self, ctx: RequestContext, endpoint: Endpoint) -> None:
        endpoint.inflight -= 1
