"""Pools: named sets of engine endpoints serving the same models, kept honest by health checks.

A pool probes each endpoint's health and scrapes its load signals in the background, off the request
path, so picking an endpoint costs no I/O. A request that fails on an endpoint before any byte reached
its client counts as a failed probe too, so a dead engine leaves rotation at once rather than at the
next check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from serving.backends.base import Backend
from serving.endpoint import Endpoint

log = logging.getLogger("noor.pool")

BackendFactory = Callable[[str, str], Backend]  # (engine kind, url) -> Backend


class Pool:
    def __init__(
        self,
        name: str,
        *,
        engine: str,
        health_interval_s: float = 2.0,
        metrics_interval_s: float = 1.0,
        unhealthy_after: int = 2,
    ) -> None:
        self.name = name
        self.engine = engine
        self.endpoints: list[Endpoint] = []
        self._health_interval_s = health_interval_s
        self._metrics_interval_s = metrics_interval_s
        self._unhealthy_after = unhealthy_after
        self._tasks: list[asyncio.Task] = []
        #: Called after every health check and scrape: a queue waiting for capacity that changed outside
        #: this gateway (an engine drained, recovered, freed KV cache) moves at once, without polling.
        self.listeners: list[Callable[[], None]] = []

    async def add(self, backend: Backend, name: str | None = None) -> Endpoint:
        """Add an endpoint and probe it once, so it serves as soon as it is healthy."""
        await backend.start()
        ep = Endpoint(name=name or backend.url, pool=self.name, backend=backend)
        ep.mark(await backend.health(), unhealthy_after=1)
        self.endpoints.append(ep)
        return ep

    async def remove(self, endpoint: Endpoint) -> None:
        self.endpoints.remove(endpoint)
        await endpoint.backend.close()

    def healthy(self) -> list[Endpoint]:
        return [ep for ep in self.endpoints if ep.healthy]

    def report_failure(self, endpoint: Endpoint) -> None:
        """A request could not reach the endpoint: treat it as a failed probe."""
        endpoint.mark(False, unhealthy_after=self._unhealthy_after)

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._every(self._health_interval_s, self._check_health), name=f"health:{self.name}"),
            asyncio.create_task(self._every(self._metrics_interval_s, self._scrape), name=f"scrape:{self.name}"),
        ]

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        for ep in self.endpoints:
            await ep.backend.close()

    async def _every(self, interval: float, step: Callable[[], object]) -> None:
        while True:
            try:
                await step()  # type: ignore[misc]
            except Exception:  # a probe must never kill the loop
                log.exception("pool %s: background step failed", self.name)
            await asyncio.sleep(interval)

    async def _check_health(self) -> None:
        results = await asyncio.gather(*(ep.backend.health() for ep in self.endpoints))
        for ep, ok in zip(self.endpoints, results, strict=True):
            was = ep.healthy
            ep.mark(ok, unhealthy_after=self._unhealthy_after)
            if was != ep.healthy:
                log.warning("pool %s: endpoint %s is now %s", self.name, ep.name, "healthy" if ep.healthy else "unhealthy")
        self._notify()

    async def _scrape(self) -> None:
        # One list for both: health may change while the scrapes are in flight.
        targets = [ep for ep in self.endpoints if ep.healthy]
        results = await asyncio.gather(*(ep.backend.signals() for ep in targets))
        for ep, sig in zip(targets, results, strict=True):
            if sig is not None:
                ep.signals = sig
                ep.inflight_at_scrape = ep.inflight
        self._notify()

    def _notify(self) -> None:
        for listener in self.listeners:
            try:
                listener()
            except Exception:
                log.exception("pool %s: listener failed", self.name)
