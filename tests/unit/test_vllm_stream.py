"""The vLLM adapter reads SSE from whatever pieces the bytes arrive in: events split across reads, many
events in one read, CRLF line ends, comments, a last line without its newline, ``[DONE]``, error events.

A real aiohttp server on a free port writes each test's pieces with pauses between them, so the
adapter really receives them as separate reads.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from serving.backends.base import StreamError, UpstreamRequest
from serving.backends.vllm import VLLMBackend
from tests.servers import free_port

C1 = b'{"id":"a","choices":[{"delta":{"content":"Hel"}}],"usage":{"prompt_tokens":3,"completion_tokens":1}}'
C2 = b'{"id":"a","choices":[{"delta":{"content":"lo"}}],"usage":{"prompt_tokens":3,"completion_tokens":2}}'
USAGE = b'{"id":"a","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}'


@contextlib.asynccontextmanager
async def engine(handler) -> AsyncIterator[VLLMBackend]:
    """An aiohttp server answering chat completions with ``handler``, and the adapter pointed at it."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    backend = VLLMBackend(f"http://127.0.0.1:{port}")
    await backend.start()
    try:
        yield backend
    finally:
        await backend.close()
        await runner.cleanup()


async def _collect(pieces: list[bytes]) -> tuple[list[bytes], list]:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for piece in pieces:
            await resp.write(piece)
            await asyncio.sleep(0.01)
        await resp.write_eof()
        return resp

    async with engine(handler) as backend:
        stream = await backend.stream(UpstreamRequest(kind="chat", body={}, stream=True, request_id="r"))
        chunks = [c async for c in stream]
        await stream.aclose()
        return [c.data for c in chunks], chunks


def _sse(*events: bytes, sep: bytes = b"\n") -> bytes:
    return b"".join(b"data: " + e + sep + sep for e in events)


async def test_events_split_anywhere_come_out_whole():
    raw = _sse(C1, C2, USAGE, b"[DONE]")
    for cut in (1, 7, 50, len(_sse(C1)) - 1, len(_sse(C1)), len(_sse(C1)) + 1, len(raw) - 3):
        data, chunks = await _collect([raw[:cut], raw[cut:]])
        assert data == [C1, C2, USAGE], cut
        assert chunks[1].usage.completion_tokens == 2 and chunks[2].usage_only and not chunks[0].usage_only


async def test_byte_by_byte_and_all_at_once():
    raw = _sse(C1, C2, b"[DONE]")
    assert (await _collect([raw]))[0] == [C1, C2]
    assert (await _collect([raw[i : i + 1] for i in range(0, 40)] + [raw[40:]]))[0] == [C1, C2]


async def test_crlf_comments_and_a_last_line_without_newline():
    raw = b": keep-alive\r\n\r\n" + _sse(C1, sep=b"\r\n") + b"event: message\r\ndata: " + C2
    assert (await _collect([raw]))[0] == [C1, C2]


async def test_nothing_after_done_is_read():
    assert (await _collect([_sse(C1, b"[DONE]", C2)]))[0] == [C1]


async def test_error_event_raises():
    with pytest.raises(StreamError, match="boom"):
        await _collect([_sse(C1, b'{"error":{"message":"boom","type":"server_error"}}')])


async def test_a_stream_cut_by_its_client_closes_the_engine_connection_at_once():
    """Cancelled while waiting for the next chunk (the client left): the generator's own cleanup runs
    first, and must close the connection — not keep it to drain — so the engine aborts the request."""
    left = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for _ in range(500):
                await resp.write(_sse(C1))
                await asyncio.sleep(0.01)
        except (ConnectionError, asyncio.CancelledError):
            left.set()
            raise
        return resp

    async with engine(handler) as backend:
        stream = await backend.stream(UpstreamRequest(kind="chat", body={}, stream=True, request_id="r"))
        got: list = []

        async def consume() -> None:
            async for chunk in stream:
                got.append(chunk)

        task = asyncio.create_task(consume())
        while not got:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await stream.aclose()
        # well before the 1 s a released-at-[DONE] answer may take to drain
        await asyncio.wait_for(left.wait(), 0.5)
