"""Other upstream clients in Noor's vLLM adapter, to measure the choice of its own (benchmark only).

Each backend here swaps the adapter's ``EngineHTTPClient`` for another client for non-streamed
requests, everything else unchanged, so ``inproc.py --client ...`` compares the clients alone:
``aiohttp`` (one pooled ``ClientSession``, as the adapter had it until 28 Nov 2026), ``httpx`` over its
own transport (httpcore), and ``httpx-aiohttp`` (httpx over ``httpx-aiohttp``'s ``AiohttpTransport``).
"""

from __future__ import annotations

import aiohttp
import httpx
import orjson

from serving.backends.base import UpstreamError, UpstreamRequest, UpstreamResponse
from serving.backends.openai_format import usage_from_body
from serving.backends.vllm import _PATHS, VLLMBackend


class AiohttpBackend(VLLMBackend):
    async def start(self) -> None:
        await super().start()
        self._aiohttp = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=None, enable_cleanup_closed=True),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5.0, sock_read=600.0), auto_decompress=False,
        )

    async def close(self) -> None:
        await self._aiohttp.close()
        await super().close()

    async def complete(self, request: UpstreamRequest) -> UpstreamResponse:
        headers = {"content-type": "application/json", "x-request-id": request.request_id, **request.headers}
        try:
            r = await self._aiohttp.post(self.url + _PATHS[request.kind], data=orjson.dumps(request.body), headers=headers)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise UpstreamError(502, b"", retryable=True, message=f"engine unreachable: {exc!r}") from exc
        body = await r.read()
        r.release()
        if r.status != 200:
            raise UpstreamError(r.status, body, retryable=r.status >= 500 or r.status == 429)
        return UpstreamResponse(status=200, body=body, usage=usage_from_body(body))


class HttpxBackend(VLLMBackend):
    def __init__(self, url: str, *, transport: str = "httpcore", **kwargs) -> None:
        super().__init__(url, **kwargs)
        self._transport_kind = transport
        self._httpx: httpx.AsyncClient | None = None

    async def start(self) -> None:
        await super().start()  # health probes keep using the engine client
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=1000)
        if self._transport_kind == "aiohttp":
            from httpx_aiohttp import AiohttpTransport

            transport = AiohttpTransport(limits=limits)
        else:
            transport = httpx.AsyncHTTPTransport(limits=limits)
        self._httpx = httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(600.0, connect=5.0))

    async def close(self) -> None:
        if self._httpx is not None:
            await self._httpx.aclose()
        await super().close()

    async def complete(self, request: UpstreamRequest) -> UpstreamResponse:
        assert self._httpx is not None
        headers = {"content-type": "application/json", "x-request-id": request.request_id, **request.headers}
        try:
            r = await self._httpx.post(self.url + _PATHS[request.kind], content=orjson.dumps(request.body), headers=headers)
        except httpx.HTTPError as exc:
            raise UpstreamError(502, b"", retryable=True, message=f"engine unreachable: {exc!r}") from exc
        if r.status_code != 200:
            raise UpstreamError(r.status_code, r.content, retryable=r.status_code >= 500 or r.status_code == 429)
        return UpstreamResponse(status=200, body=r.content, usage=usage_from_body(r.content))


KINDS = ("engine", "aiohttp", "httpx", "httpx-aiohttp")


def install(kind: str) -> None:
    """Make the gateway build its vLLM endpoints with the client ``kind`` (one of ``KINDS``)."""
    if kind == "engine":
        return
    import serving.backends as backends

    original = backends.make_backend

    def make_backend(engine: str, url: str, **options):
        if engine == "vllm":
            if kind == "aiohttp":
                return AiohttpBackend(url, **options)
            return HttpxBackend(url, transport="aiohttp" if kind == "httpx-aiohttp" else "httpcore", **options)
        return original(engine, url, **options)

    backends.make_backend = make_backend
    import router.app

    router.app.make_backend = make_backend
