"""A pass-through HTTP proxy that remembers the request headers it forwarded: what a test puts between
the gateway and a real engine to see exactly what the gateway sent on the wire (e.g. ``traceparent``,
which vLLM reads but does not echo back). Responses, streams included, are relayed as they arrive.
"""

from __future__ import annotations

from collections import deque

import aiohttp
from aiohttp import web

_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


class RecordingProxy:
    def __init__(self, upstream: str, keep: int = 1000) -> None:
        self.upstream = upstream.rstrip("/")
        self.seen: deque[tuple[str, dict[str, str]]] = deque(maxlen=keep)  # (path, headers)
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._forward)
        self.app.on_cleanup.append(self._close)
        self._session: aiohttp.ClientSession | None = None

    def headers_for(self, request_id: str) -> dict[str, str] | None:
        """Headers of the forwarded request carrying ``x-request-id: request_id``."""
        for _, headers in self.seen:
            if headers.get("x-request-id") == request_id:
                return headers
        return None

    async def _close(self, _: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        if self._session is None:
            self._session = aiohttp.ClientSession(auto_decompress=False)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        if request.method == "POST":
            self.seen.append((request.path, {k.lower(): v for k, v in headers.items()}))
        body = await request.read()
        async with self._session.request(request.method, self.upstream + request.path_qs, headers=headers, data=body) as up:
            resp = web.StreamResponse(status=up.status, headers={
                k: v for k, v in up.headers.items() if k.lower() not in _HOP | {"content-encoding"}
            })
            await resp.prepare(request)
            async for piece in up.content.iter_any():
                await resp.write(piece)
            await resp.write_eof()
            return resp
