"""Gateway replicas on one Redis, and a chat request to one, for the end-to-end tests of shared state."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import aiohttp
from multidict import CIMultiDict

from tests.processes import ServerProcess, gateway_replica
from tests.redis_server import RedisServer

MODEL = "stub-model"
ADMIN = "replicas-admin"
HELLO = [{"role": "user", "content": "Say hello in one word."}]


@contextlib.contextmanager
def replicas(tmp: Path, redis: RedisServer, catalog: Path, n: int = 2, **settings: str) -> Iterator[list[ServerProcess]]:
    """Start ``n`` gateway processes at once on one Redis; stop them all at the end."""
    procs = [gateway_replica(tmp / f"replica{i}", redis_url=redis.url, catalog=catalog, admin_token=ADMIN, **settings)
             for i in range(n)]
    try:
        for p in procs:
            p.spawn()
        for p in procs:
            p.wait_ready()
        yield procs
    finally:
        for p in procs:
            p.stop()


async def chat(session: aiohttp.ClientSession, gateway: ServerProcess, secret: str, **body) -> tuple[int, CIMultiDict, dict]:
    payload = {"model": MODEL, "messages": HELLO, "max_tokens": 50, **body}
    async with session.post(gateway.url + "/v1/chat/completions", json=payload,
                            headers={"Authorization": f"Bearer {secret}"}) as r:
        data = await r.json(content_type=None) if not body.get("stream") else {"text": await r.text()}
        return r.status, r.headers.copy(), data
