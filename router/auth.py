"""Stage 1 of the request path: the API key → the tenant it speaks for.

Keys are looked up by hash and cached in the process. The cache is dropped whenever the store's auth
epoch moves (any tenant or key changed, from any process or replica), so a revoked key fails on its
very next request, while an unchanged store costs one cheap epoch read per request. If the store is
unreachable, a key already in the cache keeps working and an unknown key gets 503, never a false 401.
"""

from __future__ import annotations

import logging
import time

from router.errors import OpenAIError, unauthorized
from router.keys import hash_key
from router.store.base import Identity, Store

log = logging.getLogger("noor.auth")


class Authenticator:
    def __init__(self, store: Store, *, ttl_s: float = 30.0, max_entries: int = 100_000) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._cache: dict[str, tuple[Identity, float]] = {}
        self._epoch: object = None

    async def authenticate(self, authorization: str | None) -> Identity:
        if not authorization:
            raise unauthorized("You didn't provide an API key. Send it as 'Authorization: Bearer sk-noor-...'.")
        scheme, _, secret = authorization.partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            raise unauthorized("Malformed Authorization header: expected 'Bearer <key>'.")
        key_hash = hash_key(secret)
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
