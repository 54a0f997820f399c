"""Adapter for engines that already speak the OpenAI API: vLLM (and the simulator, which mimics it).

The upstream client is ``EngineHTTPClient`` (``http_client.py``), one per endpoint: measured here, httpx
costs ~2 ms of CPU per proxied request and caps a one-core gateway near 200 req/s (shared FACTS, "Python
proxy ceiling"), aiohttp's client 139-168 µs, this one 20-40 µs. Bodies pass through as bytes; only usage is
read out of them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncio

import orjson
from prometheus_client.parser import text_string_to_metric_families

from serving.backends.base import (
    Backend,
    EngineSignals,
    StreamChunk,
    StreamError,
    UpstreamError,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamStream,
)
from serving.backends.http_client import EngineHTTPClient, EngineHTTPError, Response
from serving.backends.openai_format import carries_usage, is_usage_only, usage_from_body, usage_from_chunk

_PATHS = {"chat": "/v1/chat/completions", "completion": "/v1/completions", "embedding": "/v1/embeddings"}

#: Engine metric names feeding ``EngineSignals``; per engine kind, so another OpenAI engine can remap.
VLLM_METRICS = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv_cache_usage",
    "vllm:prefix_cache_queries": "prefix_cache_queries",
    "vllm:prefix_cache_hits": "prefix_cache_hits",
}


class OpenAIStream(UpstreamStream):
    """An SSE stream from an OpenAI-speaking engine; closing it drops the connection, which aborts."""

    def __init__(self, response: Response) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[StreamChunk]:
        # Whatever arrived, split into lines here (a line-reading iterator would cost two reads per SSE
        # event: the event and its blank line).
        partial = b""
        at_done = False  # stopped at [DONE]: only the chunked terminator can be left
        try:
            async for data in self._response:
                lines = (partial + data if partial else data).split(b"\n")
                partial = lines.pop()
                for line in lines:
                    if line.startswith(b"data: "):
                        chunk = _chunk(line)
                        if chunk is None:
                            at_done = True
                            return
                        yield chunk
            if partial.startswith(b"data: "):  # a last line without its newline
                chunk = _chunk(partial)
                if chunk is not None:
                    yield chunk
        except EngineHTTPError as exc:
            raise StreamError(f"engine stream broke: {exc}", status=502) from exc
        finally:
            # Kept for the next request if read to its end (or only its terminator is left); closed
            # otherwise, which is how a stream cut by its client aborts the engine's request at once.
            self._response.release(drain=at_done)

    async def aclose(self) -> None:
        # close(), not release(): the connection must go, so the engine sees the client leave and
        # aborts the request instead of generating tokens nobody reads.
        self._response.close()


def _chunk(line: bytes) -> StreamChunk | None:
    """The chunk a ``data: `` line carries; None at ``[DONE]``; ``StreamError`` for an error event."""
    data = line[6:].rstrip()
    if data == b"[DONE]":
        return None
    if data.startswith(b'{"error"') or data.startswith(b'{"object":"error"'):
        raise StreamError(_error_message(data))
    if not carries_usage(data):
        return StreamChunk(data)
    return StreamChunk(data, usage_only=is_usage_only(data), read_usage=usage_from_chunk)


def _error_message(data: bytes) -> str:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return data.decode(errors="replace")
    err = obj.get("error", obj)
    return str(err.get("message", err)) if isinstance(err, dict) else str(err)


class VLLMBackend(Backend):
    """One vLLM (or simulator) endpoint."""

    engine = "vllm"
    metric_names: dict[str, str] = VLLM_METRICS

    def __init__(
        self,
        url: str,
        *,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 600.0,
        health_timeout_s: float = 2.0,
        engine: str | None = None,
    ) -> None:
        super().__init__(url)
        if engine:
            self.engine = engine
        self._client = EngineHTTPClient(self.url, connect_timeout_s=connect_timeout_s, read_timeout_s=read_timeout_s)
        self._probe_timeout_s = health_timeout_s

    async def close(self) -> None:
        await self._client.close()

    async def _post(self, request: UpstreamRequest) -> Response:
        headers = {"content-type": "application/json", "x-request-id": request.request_id, **request.headers}
        try:
            return await self._client.request("POST", _PATHS[request.kind], orjson.dumps(request.body), headers)
        except EngineHTTPError as exc:
            raise UpstreamError(502, b"", retryable=True, message=f"engine unreachable: {exc}") from exc

    @staticmethod
    async def _refuse(response: Response) -> UpstreamError:
        try:
            body = await response.read()
        except EngineHTTPError:
            body = b""
        # 4xx means the request itself is wrong: another endpoint would say the same.
        return UpstreamError(response.status, body, retryable=response.status >= 500 or response.status == 429)

    async def complete(self, request: UpstreamRequest) -> UpstreamResponse:
        response = await self._post(request)
        if response.status != 200:
            raise await self._refuse(response)
        try:
            body = await response.read()
        except EngineHTTPError as exc:
            raise UpstreamError(502, b"", retryable=True, message=f"engine response broke: {exc}") from exc
        return UpstreamResponse(status=200, body=body, usage=usage_from_body(body))

    async def stream(self, request: UpstreamRequest) -> UpstreamStream:
        response = await self._post(request)
        if response.status != 200:
            raise await self._refuse(response)
        return OpenAIStream(response)

    async def _get(self, path: str) -> tuple[int, bytes] | None:
        try:
            async with asyncio.timeout(self._probe_timeout_s):
                response = await self._client.request("GET", path)
                return response.status, await response.read()
        except (EngineHTTPError, TimeoutError):
            return None

    async def health(self) -> bool:
        answer = await self._get("/health")
        return answer is not None and answer[0] == 200

    async def signals(self) -> EngineSignals | None:
        answer = await self._get("/metrics")
        if answer is None or answer[0] != 200:
            return None
        return parse_signals(answer[1].decode("utf-8", errors="replace"), self.metric_names)


def parse_signals(text: str, names: dict[str, str]) -> EngineSignals:
    """Sum each named metric over its label sets (one engine may serve several model names)."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            base = sample.name.removesuffix("_total")
            field = names.get(sample.name) or names.get(base)
            if field and not sample.name.endswith(("_created", "_bucket", "_count", "_sum")):
                values[field] = values.get(field, 0.0) + sample.value
    return EngineSignals(**values)
