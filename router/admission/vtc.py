"""The Virtual Token Counter: per-tenant FIFO queues served lowest-counter-first.

Sheng et al., "Fairness in Serving Large Language Models" (OSDI 2024). Each tenant has a counter of the
service it received — ``w_in · input tokens + w_out · output tokens``, divided by its weight, so a tenant
of weight 2 may take twice the tokens for the same counter. The backlogged tenant with the lowest counter
sends next. A tenant that was not backlogged is *lifted* to the lowest counter among the backlogged ones
(or, with none backlogged, to the counter last served) when its next request arrives: idling earns no
credit, so a returning tenant cannot starve the others to catch up, and the service gap between two
backlogged tenants stays bounded (the paper proves ≤ 2× the largest request's cost).

Here the counter is charged when a request is admitted, by an estimate, and corrected when it leaves, by
the engine's real usage (``charge`` with the difference). This module is the pure data structure — no
asyncio, no I/O — so its ordering is unit-tested directly and costs O(log tenants) per operation: a heap
of backlogged tenants keyed by counter, with stale entries skipped lazily (an entry carries the version
of its tenant; any counter change or emptying bumps the version).
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")

QUEUED, DISPATCHED, DROPPED = 0, 1, 2


class Entry(Generic[T]):
    """One queued item (a waiting request) and its state: queued, dispatched, or dropped (gone)."""

    __slots__ = ("item", "tenant", "state")

    def __init__(self, item: T, tenant: str) -> None:
        self.item = item
        self.tenant = tenant
        self.state = QUEUED


class TenantState:
    __slots__ = ("id", "counter", "queue", "live", "version", "inflight")

    def __init__(self, tenant_id: str, counter: float) -> None:
        self.id = tenant_id
        self.counter = counter
        self.queue: deque[Entry] = deque()
        self.live = 0  # QUEUED entries in ``queue`` (dropped ones are skipped lazily)
        self.version = 0
        self.inflight = 0  # admitted and not yet released: the state must outlive them for corrections


class VTCQueue(Generic[T]):
    """Backlogged tenants in a heap by counter; each tenant's requests in arrival order."""

    def __init__(self) -> None:
        self.tenants: dict[str, TenantState] = {}
        # (counter, tie, seq, version, tenant): on equal counters a tenant just lifted (tie 0) goes before
        # one just served (tie 1) — it has waited, the other has not — and then arrival order (seq).
        self._heap: list[tuple[float, int, int, int, TenantState]] = []
        self._seq = 0
        #: the counter of the tenant served last: where a tenant arriving to an empty queue is lifted to.
        self.vtime = 0.0
        self.size = 0  # queued entries, all tenants
        self._lifted: TenantState | None = None
        self._aside: list[tuple[float, int, int, int, TenantState]] = []  # skipped by ``pop``, until ``restore``

    def __len__(self) -> int:
        return self.size

    # --- arrival ---------------------------------------------------------------------------------------
    def arrive(self, tenant_id: str) -> TenantState:
        """A request of ``tenant_id`` arrives: lift the tenant if it was not backlogged."""
        t = self.tenants.get(tenant_id)
        if t is None:
            t = self.tenants[tenant_id] = TenantState(tenant_id, 0.0)
        if t.live == 0:
            floor = self.min_counter()
            if floor is None:
                floor = self.vtime
            if t.counter <= floor:
                t.counter = floor
                self._lifted = t
        return t

    def serve_now(self, tenant_id: str) -> TenantState:
        """A request of ``tenant_id`` is served without queueing (nothing waits): arrive and serve."""
        t = self.arrive(tenant_id)
        self._lifted = None
        self.vtime = t.counter
        return t

    def push(self, item: T, tenant_id: str) -> Entry[T]:
        """Queue ``item`` at the back of its tenant's queue (call ``arrive`` semantics included)."""
        t = self.arrive(tenant_id)
        entry: Entry[T] = Entry(item, tenant_id)
        t.queue.append(entry)
        self._add_live(t)
        return entry

    def push_front(self, entry: Entry[T]) -> None:
        """Put back an entry taken by ``pop`` but not served (no lifting, no charge: it keeps its place)."""
        t = self.tenants[entry.tenant]
        entry.state = QUEUED
        t.queue.appendleft(entry)
        self._add_live(t)

    def _add_live(self, t: TenantState) -> None:
        t.live += 1
        self.size += 1
        if t.live == 1:
            self._push_heap(t)

    def _push_heap(self, t: TenantState) -> None:
        t.version += 1
        self._seq += 1
        tie = 0 if self._lifted is t else 1
        self._lifted = None
        heapq.heappush(self._heap, (t.counter, tie, self._seq, t.version, t))

    # --- service ---------------------------------------------------------------------------------------
    def _top(self) -> TenantState | None:
        heap = self._heap
        while heap:
            _, _, _, version, t = heap[0]
            if version == t.version and t.live > 0:
                return t
            heapq.heappop(heap)
        return None

    def min_counter(self) -> float | None:
        t = self._top()
        return None if t is None else t.counter

    def peek(self) -> Entry[T] | None:
        t = self._top()
        if t is None:
            return None
        q = t.queue
        while q[0].state != QUEUED:
            q.popleft()
        return q[0]

    def pop(self, skip: set[str] | frozenset[str] = frozenset()) -> Entry[T] | None:
        """Take the next entry: the oldest of the backlogged tenant with the lowest counter.

        ``skip``: tenants passed over (held back by headroom): the next tenant by counter goes instead.
        Their heap entries are set aside until ``restore`` — once per pass, however many pops follow.
        The caller serves it and then calls ``charge`` (or gives it back with ``push_front``).
        """
        t = self._top()
        while t is not None and t.id in skip:
            self._aside.append(heapq.heappop(self._heap))
            t = self._top()
        if t is None:
            return None
        q = t.queue
        entry = q.popleft()
        while entry.state != QUEUED:
            entry = q.popleft()
        entry.state = DISPATCHED
        t.live -= 1
        self.size -= 1
        if t.live == 0:
            q.clear()
            t.version += 1  # its heap entry is now stale
        self.vtime = t.counter
        return entry

    def restore(self) -> None:
        """Put back the heap entries ``pop`` set aside for skipped tenants (stale ones are harmless)."""
        for item in self._aside:
            heapq.heappush(self._heap, item)
        self._aside.clear()

    def drop(self, entry: Entry[T]) -> bool:
        """Remove a queued entry (deadline passed, client gone). O(1): skipped lazily later."""
        if entry.state != QUEUED:
            return False
        entry.state = DROPPED
        t = self.tenants[entry.tenant]
        t.live -= 1
        self.size -= 1
        if t.live == 0:
            t.queue.clear()
            t.version += 1
        return True

    def charge(self, tenant_id: str, service: float) -> None:
        """Add ``service`` (already divided by the tenant's weight; negative to refund) to its counter."""
        t = self.tenants.get(tenant_id)
        if t is None:
            return
        t.counter += service
        if t.live > 0:
            self._push_heap(t)  # re-key: the old heap entry goes stale

    def forget_idle(self, tenant_id: str) -> None:
        """Drop an idle tenant's state when keeping it changes nothing (it would be lifted to at least
        its counter anyway), so the table holds only tenants that are active or ahead."""
        t = self.tenants.get(tenant_id)
        if t is not None and t.live == 0 and t.inflight == 0:
            floor = self.min_counter()
            if t.counter <= (self.vtime if floor is None else floor):
                del self.tenants[tenant_id]
