"""The floor for a Python proxy: raw ASGI + one shared aiohttp session, nothing else (no auth, limits,
metering, validation). Run beside Noor in the same benchmark it shows how much of Noor's added latency
is the Python HTTP stack itself (server parse + client round trip) and how much is Noor's own work.

    UPSTREAM=http://127.0.0.1:9100 uvicorn --app-dir benchmarks/overhead mini_proxy:app --loop uvloop --http httptools
"""

from __future__ import annotations

import os

import aiohttp

UPSTREAM = os.environ.get("UPSTREAM", "http://127.0.0.1:9100")
_session: aiohttp.ClientSession | None = None


async def app(scope: dict, receive, send) -> None:
    global _session
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
                await send({"type": "lifespan.startup.complete"})
            else:
                assert _session is not None
                await _session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/health":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})
        return
    assert _session is not None
    async with _session.post(UPSTREAM + scope["path"], data=body, headers={"content-type": "application/json"}) as r:
        await send({"type": "http.response.start", "status": r.status,
                    "headers": [(b"content-type", r.headers.get("content-type", "application/json").encode())]})
        if r.headers.get("content-type", "").startswith("text/event-stream"):
            async for chunk in r.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        else:
            await send({"type": "http.response.body", "body": await r.read()})
