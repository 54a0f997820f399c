"""Other upstream clients in Noor's vLLM adapter, to measure the choice of aiohttp's (benchmark only).

``HttpxBackend`` swaps the adapter's aiohttp session for an httpx ``AsyncClient`` — over httpx's own
transport (httpcore) or over aiohttp (``httpx-aiohttp``'s ``AiohttpTransport``) — for non-streamed
requests, everything else unchanged, so ``inproc.py --client ...`` compares the clients alone.
"""

from __future__ import annotations

import httpx
import orjson

from serving.backends.base import UpstreamError, UpstreamRequest, UpstreamResponse
from serving.backends.openai_format import usage_from_body
from serving.backends.vllm import _PATHS, VLLMBackend


class HttpxBackend(VLLMBackend):
    def __init__(self, url: str, *, transport: str = "httpcore", **kwargs) -> None:
        super().__init__(url, **kwargs)
        self._transport_kind = transport
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        await super().start()  # health probes keep using aiohttp
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=1000)
        if self._transport_kind == "aiohttp":
            from httpx_aiohttp import AiohttpTransport

            transport = AiohttpTransport(limits=limits)
        else:
            transport = httpx.AsyncHTTPTransport(limits=limits)
        self._client = httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(600.0, connect=5.0))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        await super().close()

    async def complete(self, request: UpstreamRequest) -> UpstreamResponse:
        assert self._client is not None
        headers = {"content-type": "application/json", "x-request-id": request.request_id, **request.headers}
        try:
            r = await self._client.post(self.url + _PATHS[request.kind], content=orjson.dumps(request.body), headers=headers)
        except httpx.HTTPError as exc:
            raise UpstreamError(502, b"", retryable=True, message=f"engine unreachable: {exc!r}") from exc
        if r.status_code != 200:
            raise UpstreamError(r.status_code, r.content, retryable=r.status_code >= 500 or r.status_code == 429)
        return UpstreamResponse(status=200, body=r.content, usage=usage_from_body(r.content))


def install(kind: str) -> None:
    """Make the gateway build its vLLM endpoints with the client ``kind`` (aiohttp | httpx | httpx-aiohttp)."""
    if kind == "aiohttp":
        return
    import serving.backends as backends

    transport = "aiohttp" if kind == "httpx-aiohttp" else "httpcore"
    original = backends.make_backend

    def make_backend(engine: str, url: str, **options):
        if engine == "vllm":
            return HttpxBackend(url, transport=transport, **options)
        return original(engine, url, **options)

    backends.make_backend = make_backend
    import router.app

    router.app.make_backend = make_backend
