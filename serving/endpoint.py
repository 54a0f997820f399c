"""One engine endpoint as the gateway sees it: its adapter, its health and its load.

The gateway's own in-flight count moves on every request, between scrapes of the engine's metrics, so
routing reacts at once; the scraped signals tell what the engine itself holds (including requests from
other gateway replicas).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from serving.backends.base import Backend, EngineSignals


@dataclass(eq=False)
class Endpoint:
    name: str
    pool: str
    backend: Backend
    healthy: bool = False
    consecutive_failures: int = 0
    inflight: int = 0
    signals: EngineSignals | None = None
    #: ``inflight`` when ``signals`` were scraped: what the engine reported beyond it came from elsewhere
    #: (other gateway replicas), so load = inflight now + that excess, fresh between scrapes.
    inflight_at_scrape: int = 0
    last_checked: float = field(default_factory=time.monotonic)

    @property
    def url(self) -> str:
        return self.backend.url

    @property
    def engine(self) -> str:
        return self.backend.engine

    def mark(self, ok: bool, *, unhealthy_after: int) -> None:
        """Record one health observation; a failing endpoint leaves rotation after a few in a row."""
        self.last_checked = time.monotonic()
        if ok:
            self.consecutive_failures = 0
            self.healthy = True
        else:
            self.consecutive_failures += 1
            if self.consecutive_failures >= unhealthy_after:
                self.healthy = False
