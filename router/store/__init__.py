"""Choose the store from its URL: ``sqlite:///path`` (embedded default) or ``redis://host:port/db``."""

from __future__ import annotations

from router.store.base import Store


def open_store(url: str) -> Store:
    if url.startswith("sqlite:"):
        from router.store.sqlite import SQLiteStore

        return SQLiteStore.from_url(url)
    if url.startswith(("redis:", "rediss:", "unix:")):
        from router.store.redis import RedisStore  # type: ignore[import-not-found]

        return RedisStore.from_url(url)
    raise ValueError(f"unsupported store URL: {url!r} (use sqlite:///PATH or redis://HOST:PORT/DB)")
