"""Stage 1 of the request path: the API key → the tenant it speaks for.

Keys are looked up by hash and cached in the process. The cache is dropped whenever the store's auth
epoch moves (any tenant or key changed, from any process or replica), so a revoked key fails on its
very next request, while an unchanged store costs one cheap epoch read per request. If the store is
unreachable, a key already in the cache keeps working and an unknown key gets 503, never a false 401.

Where that epoch read is a round trip (Redis), ``authenticate_early`` lets the request path go on
with a cached identity while the read is in flight, and check it before anything is served: the read
then shares its round trip with the limiter's (one write, one wait) instead of preceding it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from router.errors import OpenAIError, unauthorized
from router.keys import hash_key
from router.store.base import Identity, Store

log = logging.getLogger("noor.auth")

Confirm = Callable[[], Awaitable[None]]


class StaleIdentity(Exception):
    """Tenants or keys changed while a request went ahead on a cached identity: authenticate it again."""


class Authenticator:
    def __init__(self, store: Store, *, ttl_s: float = 30.0, max_entries: int = 100_000) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._cache: dict[str, tuple[Identity, float]] = {}
        self._epoch: object = None

    async def authenticate_early(self, authorization: str | None) -> tuple[Identity, Confirm | None]:
        """The identity of a cached key at once, and ``confirm``, to await before serving the request.

        ``confirm`` raises ``StaleIdentity`` if tenants or keys changed since the key was cached (the
        request must then start over with ``authenticate``); an unreachable store leaves the cached
        identity standing, as ``authenticate`` does. A key not cached, or a store whose epoch is read
        locally, gets ``authenticate``'s answer and no ``confirm``.
        """
        if not self._store.auth_epoch_is_remote:
            return await self.authenticate(authorization), None
        key_hash = _key_hash(authorization)
        hit = self._cache.get(key_hash)
        if hit is None or time.monotonic() - hit[1] >= self._ttl_s:
            return await self.authenticate(authorization), None
        cached_under = self._epoch
        read = self._store.auth_epoch_soon()  # sent with the request's next store command

        async def confirm() -> None:
            try:
                epoch = await read
            except Exception:
                log.warning("store unreachable for the auth epoch; serving from the key cache", exc_info=True)
                return
            if epoch != cached_under:
                raise StaleIdentity

        return hit[0], confirm

    async def authenticate(self, authorization: str | None) -> Identity:
        key_hash = _key_hash(authorization)
        now = time.monotonic()
        try:
            epoch = await self._store.auth_epoch()
        except Exception:
            log.warning("store unreachable for the auth epoch; serving from the key cache", exc_info=True)
            return self._cached_or_unavailable(key_hash)
        if epoch != self._epoch:
            self._cache.clear()
            self._epoch = epoch
        hit = self._cache.get(key_hash)
        if hit is not None and now - hit[1] < self._ttl_s:
            return hit[0]
        try:
            identity = await self._store.resolve_key(key_hash)
        except Exception:
            log.warning("store unreachable for a key lookup", exc_info=True)
            return self._cached_or_unavailable(key_hash)
        if identity is None:
            self._cache.pop(key_hash, None)
            raise unauthorized()
        if len(self._cache) >= self._max_entries:
            self._cache.clear()
        self._cache[key_hash] = (identity, now)
        return identity

    def _cached_or_unavailable(self, key_hash: str) -> Identity:
        hit = self._cache.get(key_hash)
        if hit is not None:
            return hit[0]
        raise OpenAIError(503, "The key store is unreachable; try again shortly.", code="store_unavailable")


def _key_hash(authorization: str | None) -> str:
    if not authorization:
        raise unauthorized("You didn't provide an API key. Send it as 'Authorization: Bearer sk-noor-...'.")
    scheme, _, secret = authorization.partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise unauthorized("Malformed Authorization header: expected 'Bearer <key>'.")
    return hash_key(secret)
