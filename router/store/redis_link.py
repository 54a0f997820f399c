"""One gateway's link to Redis: the asyncio client, and a breaker that makes an outage cheap.

When Redis is away every caller (auth cache, limiter, meter, ledger) must learn it fast and fall back
(cached keys, local limits, the spool). Without a breaker each request would pay a connection attempt
(microseconds when the port is closed, the whole connect timeout when the host is gone); with it, after
one failure every call fails at once for ``retry_after_s``, then one call tries Redis again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("noor.redis")
T = TypeVar("T")

#: What "Redis is away" looks like from redis-py (BusyLoadingError, raised while a restarted Redis
#: loads its data, is a ConnectionError).
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError, OSError)


class StoreUnavailable(ConnectionError):
    """Redis cannot be reached (now, or it failed less than ``retry_after_s`` ago)."""


def make_client(
    url: str, *, connect_timeout_s: float = 0.5, socket_timeout_s: float = 1.0, max_connections: int = 64
) -> aioredis.Redis:
    """A pooled asyncio client.

    The pool makes a caller wait when all its connections are busy, rather than failing: a burst of
    requests must queue for a connection, not be mistaken for Redis being down (it was, in a test: 150
    concurrent reserves opened the breaker). The wait is bounded anyway: a connection is held at most
    for the socket timeout, and once Redis fails the breaker turns callers away before the pool. One retry on
    a fresh connection (a restarted Redis leaves stale ones in the pool), no backoff: the breaker, not
    the client, decides how long to wait.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=None,
        socket_connect_timeout=connect_timeout_s,
        socket_timeout=socket_timeout_s,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
        decode_responses=False,
    )
    return aioredis.Redis.from_pool(pool)


class Breaker:
    """Tracks whether Redis answers; ``call`` runs an operation through it."""

    def __init__(self, retry_after_s: float = 1.0) -> None:
        self.retry_after_s = retry_after_s
        self.down_since: float | None = None
        self._retry_at = 0.0
        self._on_recover: list[Callable[[], None]] = []

    @property
    def is_down(self) -> bool:
        return self.down_since is not None

    def on_recover(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when Redis answers again after an outage."""
        self._on_recover.append(callback)

    def check(self) -> None:
        """Raise ``StoreUnavailable`` while the breaker is open (Redis failed less than retry_after_s ago)."""
        if self.down_since is not None and time.monotonic() < self._retry_at:
            raise StoreUnavailable("Redis is unreachable")

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
            log.error("Redis unreachable (%r); failing fast, retrying every %.1fs", exc, self.retry_after_s)
        self._retry_at = now + self.retry_after_s

    def succeeded(self) -> None:
        if self.down_since is not None:
            log.warning("Redis reachable again after %.1fs", time.monotonic() - self.down_since)
            self.down_since = None
            for callback in self._on_recover:
                try:
                    callback()
                except Exception:
                    log.exception("recovery callback failed")

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn`` unless the breaker is open; a connection failure opens it and raises StoreUnavailable."""
        self.check()
        try:
            result = await fn()
        except REDIS_DOWN as exc:
            self.failed(exc)
            raise StoreUnavailable(f"Redis is unreachable: {exc!r}") from exc
        self.succeeded()
        return result
