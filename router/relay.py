"""The way back: relay an engine's answer to the client, capturing usage as it passes.

Streams are relayed chunk by chunk, never buffered. Every chunk from the engine carries the running
usage (the gateway asked for ``continuous_usage_stats``), so when the client leaves mid-stream the
tokens generated so far are known and billed; the usage the client did not ask for is stripped
before it sees the chunk.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from router.context import RequestContext
from router.errors import error_body
from serving.backends.base import StreamError, UpstreamResponse, UpstreamStream
from serving.backends.openai_format import strip_usage

Send = Callable[[dict], Awaitable[None]]

_DONE = b"data: [DONE]\n\n"


def response_headers(ctx: RequestContext, content_type: bytes, request_id_header: bytes) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", content_type), (request_id_header, ctx.request_id.encode())]
    headers.extend((k.encode(), v.encode()) for k, v in ctx.headers.items())
    return headers


async def send_once(
    ctx: RequestContext, response: UpstreamResponse, send: Send, request_id_header: bytes,
    before_end: Callable[[], Awaitable[None] | None] | None = None,
) -> None:
    """Send a complete answer. ``before_end`` runs before its last bytes leave (the usage is known); what
    it returns is awaited first."""
    ctx.first_token_at = ctx.last_token_at = time.perf_counter()
    ctx.usage = response.usage
    ctx.last_chunk = response.body
    await send({
        "type": "http.response.start",
        "status": response.status,
        "headers": response_headers(ctx, response.content_type.encode(), request_id_header),
    })
    if before_end is not None:
        pending = before_end()
        if pending is not None:  # what must be done before the client sees the end
            await pending
    await send({"type": "http.response.body", "body": response.body})


async def relay_stream(
    ctx: RequestContext, stream: UpstreamStream, send: Send, request_id_header: bytes,
    before_end: Callable[[], Awaitable[None] | None] | None = None,
) -> None:
    """Relay ``stream`` as SSE. Cancellation (client gone) propagates; the caller closes the stream.
    ``before_end`` runs before ``[DONE]`` is sent (the usage is final); what it returns is awaited first."""
    await send({
        "type": "http.response.start",
        "status": 200,
        "headers": response_headers(ctx, b"text/event-stream", request_id_header)
        + [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")],
    })
    include_usage, continuous, capture = ctx.include_usage, ctx.continuous_usage, ctx.capture
    clock = time.perf_counter
    latest = None  # the last chunk carrying usage: only its usage is read, when the stream ends or is cut
    try:
        try:
            async for chunk in stream:
                t = clock()
                if ctx.first_token_at is None:
                    ctx.first_token_at = t
                    if ctx.on_first_token is not None:
                        ctx.on_first_token()  # the engine is past the prompt: admission may pace the next one
                if chunk.carries_usage:
                    latest = chunk
                if chunk.usage_only:
                    if not include_usage:
                        continue
                    data = chunk.data
                else:
                    ctx.last_token_at, ctx.last_chunk = t, chunk.data
                    ctx.chunks += 1
                    if capture is not None:
                        capture.append(chunk.data)
                    data = chunk.data if continuous else strip_usage(chunk.data)
                await send({"type": "http.response.body", "body": b"data: " + data + b"\n\n", "more_body": True})
                ctx.relay_s += clock() - t
        finally:  # ended, broken or cut by the client: the usage so far is what gets billed
            usage = latest.usage if latest is not None else None
            if usage is not None:
                ctx.usage = usage
    except StreamError as exc:
        ctx.status, ctx.outcome = exc.status, "error"
        if exc.usage is not None:  # the adapter's count of the partial answer (bills what was generated)
            ctx.usage = exc.usage
        event = b"data: " + error_body(str(exc), type=exc.error_type) + b"\n\n"
        await send({"type": "http.response.body", "body": event, "more_body": True})
    if before_end is not None:
        pending = before_end()
        if pending is not None:  # what must be done before the client sees the end
            await pending
    await send({"type": "http.response.body", "body": _DONE})
