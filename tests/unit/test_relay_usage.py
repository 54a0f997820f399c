"""The relay reads usage only from the last chunk that carries it, and still bills a stream the client cut.

A unit test of ``relay_stream`` alone (a list of chunks as the engine stream); the end-to-end proof that
cut streams are billed is in tests/e2e (real vLLM, the official SDK).
"""

from __future__ import annotations

import asyncio

import pytest

from router.context import RequestContext
from router.relay import relay_stream
from serving.backends.base import StreamChunk, StreamError, Usage, UpstreamStream
from serving.backends.openai_format import usage_from_chunk


def chunk(n: int, *, usage_only: bool = False) -> bytes:
    choices = b"[]" if usage_only else b'[{"delta":{"content":"x"}}]'
    return b'{"choices":' + choices + b',"usage":{"prompt_tokens":5,"completion_tokens":' + str(n).encode() + b"}}"


class Chunks(UpstreamStream):
    def __init__(self, chunks: list[StreamChunk], error: StreamError | None = None) -> None:
        self.chunks, self.error = chunks, error

    async def __aiter__(self):
        for c in self.chunks:
            yield c
        if self.error is not None:
            raise self.error

    async def aclose(self) -> None:
        pass


def counted(parsed: list[bytes]):
    def read(data: bytes) -> Usage | None:
        parsed.append(data)
        return usage_from_chunk(data)

    return read


def lazy(data: bytes, parsed: list[bytes], *, usage_only: bool = False) -> StreamChunk:
    return StreamChunk(data, usage_only=usage_only, read_usage=counted(parsed))


async def test_only_the_last_usage_is_parsed_and_the_client_sees_no_usage_it_did_not_ask_for():
    parsed: list[bytes] = []
    chunks = [lazy(chunk(i), parsed) for i in range(1, 6)] + [lazy(chunk(5, usage_only=True), parsed, usage_only=True)]
    sent: list[bytes] = []

    async def send(message: dict) -> None:
        sent.append(message.get("body", b""))

    ctx = RequestContext(request_id="r", kind="chat", body={})
    await relay_stream(ctx, Chunks(chunks), send, b"x-request-id")
    assert parsed == [chunk(5, usage_only=True)]  # one parse for the whole stream
    assert ctx.usage == Usage(5, 5) and ctx.chunks == 5
    assert all(b"usage" not in body for body in sent)  # stripped, and the usage-only chunk withheld
    assert sent[-1] == b"data: [DONE]\n\n"


async def test_a_cut_stream_bills_the_usage_of_the_last_chunk_relayed():
    parsed: list[bytes] = []
    chunks = [lazy(chunk(i), parsed) for i in range(1, 11)]
    sends = 0

    async def send(message: dict) -> None:
        nonlocal sends
        sends += 1
        if sends == 4:  # response start, then three chunks: the client goes away
            raise asyncio.CancelledError

    ctx = RequestContext(request_id="r", kind="chat", body={})
    with pytest.raises(asyncio.CancelledError):
        await relay_stream(ctx, Chunks(chunks), send, b"x-request-id")
    assert ctx.usage == Usage(5, 3) and parsed == [chunk(3)]


async def test_an_engine_error_mid_stream_keeps_the_adapters_own_count():
    chunks = [StreamChunk(chunk(1), Usage(5, 1)), StreamChunk(chunk(2), Usage(5, 2))]

    async def send(message: dict) -> None:
        pass

    ctx = RequestContext(request_id="r", kind="chat", body={})
    await relay_stream(ctx, Chunks(chunks, StreamError("boom", usage=Usage(5, 3))), send, b"x-request-id")
    assert ctx.usage == Usage(5, 3) and ctx.outcome == "error"
