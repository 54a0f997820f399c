"""Headroom: the last few slots of a busy endpoint are kept for tenants below their fair share.

Why: under a flood every slot of every engine is busy, so without headroom a request of a light tenant
waits for some request to finish before it may even enter an engine — VTC makes it the *next* to go,
but not an *immediate* one. Here a tenant that already holds at least its fair share of an endpoint's
window may not take that endpoint's last ``slots`` slots, and (with prefill pacing) may not start a
prompt while one is in progress there; a tenant below its share may. So the flooding tenant fills each
engine to ``window - slots`` and the light tenant's request starts at once, in the next engine step.

Fair share: the endpoint's window split among the pool's *active* tenants (a request queued or in flight
in the pool), in proportion to their weights. A tenant alone in the pool has the whole window as its
share, so it is never held back: the headroom exists only while someone else could use it.

What it costs, and what "work-conserving" still means: while another tenant is active, an engine busy
with ``window - slots`` requests of an over-share tenant may hold up to ``slots`` slots unused and that
tenant's excess waits in the gateway. The engine is busy, not idle — an idle engine (or any engine below
``window - slots``) still takes whatever waits — and the unused slots are a fraction ``slots / window``
of the batch (docs/scheduling.md has the measured throughput cost).

Pure bookkeeping, O(1) per event: per tenant, its requests in the pool; per endpoint and tenant, its
requests in flight there.
"""

from __future__ import annotations

from serving.endpoint import Endpoint


class Shares:
    """Who is active in one pool, and how much of each endpoint each tenant holds."""

    __slots__ = ("active", "weights", "active_weight", "held")

    def __init__(self) -> None:
        self.active: dict[str, int] = {}  # tenant -> its requests queued or in flight in the pool
        self.weights: dict[str, float] = {}  # tenant -> its weight (of the active tenants only)
        self.active_weight = 0.0
        self.held: dict[Endpoint, dict[str, int]] = {}  # endpoint -> tenant -> in flight there

    def enter(self, tenant: str, weight: float) -> None:
        """A request of ``tenant`` arrived in the pool (before it queues or is placed)."""
        n = self.active.get(tenant, 0)
        if n == 0:
            self.weights[tenant] = weight
            self.active_weight += weight
        self.active[tenant] = n + 1

    def leave(self, tenant: str) -> bool:
        """A request of ``tenant`` left the pool (released, expired, cancelled, failed).

        True when the tenant is no longer active: every other tenant's share grew.
        """
        n = self.active.get(tenant, 0) - 1
        if n > 0:
            self.active[tenant] = n
            return False
        self.active.pop(tenant, None)
        self.active_weight -= self.weights.pop(tenant, 0.0)
        if not self.active:
            self.active_weight = 0.0  # no float drift across idle periods
        return True

    def placed(self, tenant: str, ep: Endpoint) -> None:
        per = self.held.get(ep)
        if per is None:
            per = self.held[ep] = {}
        per[tenant] = per.get(tenant, 0) + 1

    def released(self, tenant: str, ep: Endpoint) -> None:
        per = self.held.get(ep)
        if per is not None:
            n = per.get(tenant, 0) - 1
            if n > 0:
                per[tenant] = n
            else:
                per.pop(tenant, None)

    def at_share(self, tenant: str, ep: Endpoint, window: int) -> bool:
        """``tenant`` holds at least its weighted share of ``ep``'s window (false for a tenant alone)."""
        per = self.held.get(ep)
        held = per.get(tenant, 0) if per else 0
        if held == 0:
            return False
        weight = self.weights.get(tenant, 1.0)
        return held * self.active_weight >= window * weight
