"""Which limiter a gateway runs, from settings and the store it uses."""

from __future__ import annotations

from noor.settings import LimitsSettings
from router.limits import Limiter, Unlimited
from router.store.base import Store


def make_limiter(settings: LimitsSettings, store: Store) -> Limiter:
    """``auto``: the Redis limiter when the store is Redis (limits shared by every replica), else the
    in-process one (exact for the single gateway of the embedded default). Tenants without limits cost
    nothing either way."""
    if not settings.enabled:
        return Unlimited()
    from router.store.redis import RedisStore

    backend = settings.backend
    if backend == "auto":
        backend = "redis" if isinstance(store, RedisStore) else "local"
    if backend == "redis":
        if not isinstance(store, RedisStore):
            raise ValueError("limits.backend=redis needs a redis:// store URL")
        from router.limits.redis import RedisLimiter

        return RedisLimiter.from_store(store, settings)
    from router.limits.local import LocalLimiter

    return LocalLimiter(window_s=settings.window_s)
