"""Choose the store from its URL: ``sqlite:///path`` (embedded default) or ``redis://host:port/db``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from router.store.base import Store

if TYPE_CHECKING:
    from noor.settings import StoreSettings


def open_store(url: str, options: StoreSettings | None = None) -> Store:
    if url.startswith("sqlite:"):
        from router.store.sqlite import SQLiteStore

        return SQLiteStore.from_url(url)
    if url.startswith(("redis:", "rediss:", "unix:")):
        from router.store.redis import RedisStore

        return RedisStore.from_url(url, options)
    raise ValueError(f"unsupported store URL: {url!r} (use sqlite:///PATH or redis://HOST:PORT/DB)")
