"""API keys: made with enough entropy that a fast hash is safe, shown once, stored only hashed.

A key is ``sk-noor-`` followed by 32 random bytes in URL-safe base64 (256 bits). With that much entropy
a brute-force search of SHA-256 is hopeless, so the hash can be a plain SHA-256 that costs a
microsecond on every request, rather than a deliberately slow password hash.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid

from router.store.base import ApiKey, Store

KEY_PREFIX = "sk-noor-"
VISIBLE_CHARS = 8  # of the random part, shown in listings so a key can be recognised


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


async def create_key(store: Store, tenant_id: str, *, name: str = "default", models: list[str] | None = None) -> tuple[ApiKey, str]:
    """Make and store a new key; returns it and its secret, which is never stored or shown again."""
    secret = new_secret()
    key = ApiKey(
        id="key_" + uuid.uuid4().hex[:16],
        tenant_id=tenant_id,
        name=name,
        prefix=secret[: len(KEY_PREFIX) + VISIBLE_CHARS],
        key_hash=hash_key(secret),
        models=models,
    )
    await store.add_key(key)
    return key, secret


async def rotate_key(store: Store, key_id: str) -> tuple[ApiKey, str] | None:
    """Replace a key with a new one of the same tenant, name and scope; the old one stops at once."""
    old = await store.get_key(key_id)
    if old is None or not old.active:
        return None
    new = await create_key(store, old.tenant_id, name=old.name, models=old.models)
    await store.revoke_key(key_id)
    return new
