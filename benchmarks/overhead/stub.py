"""A fast stand-in for an OpenAI engine, so a benchmark measures the gateway and not the engine.

Raw asyncio protocol on uvloop with httptools' parser: tens of thousands of requests per second on one
core, so at the rates the gateway is driven at it costs a few per cent of its core. It answers what
Noor's vLLM adapter and LiteLLM's OpenAI provider send:

- ``POST /v1/chat/completions``: a small ``chat.completion`` with usage, or, with ``"stream": true``,
  an SSE stream of ``--chunks`` content chunks (one every ``--interval-ms``) plus the finish chunk,
  the usage chunk when ``stream_options.include_usage`` asks for it, running usage on every chunk
  when ``continuous_usage_stats`` asks for it, and ``[DONE]``. Each chunk's ``system_fingerprint``
  holds the CLOCK_MONOTONIC nanosecond at which the stub wrote it, so a client on the same machine
  measures each chunk's transit time (``benchmarks/overhead/loadgen.py``).
- ``GET /health``, ``GET /metrics`` (empty), ``GET /v1/models``.

    python benchmarks/overhead/stub.py --port 9100 [--chunks 64 --interval-ms 5]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httptools
import orjson
import uvloop

MODEL = "bench-model"
_NS = time.CLOCK_MONOTONIC


def _response(status: bytes, content_type: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: " + content_type + b"\r\ncontent-length: "
        + str(len(body)).encode() + b"\r\n\r\n" + body
    )


_COMPLETION = orjson.dumps({
    "id": "chatcmpl-stub", "object": "chat.completion", "created": 1700000000, "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
                 "finish_reason": "stop", "logprobs": None}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21},
})
_OK_COMPLETION = _response(b"200 OK", b"application/json", _COMPLETION)
_OK_HEALTH = _response(b"200 OK", b"application/json", b"{}")
_OK_METRICS = _response(b"200 OK", b"text/plain; version=0.0.4", b"")
_OK_MODELS = _response(b"200 OK", b"application/json", orjson.dumps(
    {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "stub"}]}))
_NOT_FOUND = _response(b"404 Not Found", b"application/json", b'{"error":{"message":"not found"}}')
_BAD = _response(b"400 Bad Request", b"application/json", b'{"error":{"message":"bad json"}}')
_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
_PROMPT_TOKENS = 12


def _http_chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _event(delta: bytes, finish: bytes, completion_tokens: int, usage: bool) -> bytes:
    tail = (
        b',"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}'
        % (_PROMPT_TOKENS, completion_tokens, _PROMPT_TOKENS + completion_tokens)
        if usage else b""
    )
    return (
        b'data: {"id":"chatcmpl-stub","object":"chat.completion.chunk","created":1700000000,"model":"'
        + MODEL.encode() + b'","system_fingerprint":"%d","choices":[{"index":0,"delta":%s,"logprobs":null,'
        b'"finish_reason":%s}]%s}\n\n' % (time.clock_gettime_ns(_NS), delta, finish, tail)
    )


class StubProtocol(asyncio.Protocol):
    def __init__(self, chunks: int, interval_s: float) -> None:
        self.chunks = chunks
        self.interval_s = interval_s
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []
        self.streams: set[asyncio.Task] = set()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        for task in self.streams:
            task.cancel()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        method = self.parser.get_method()
        path = self.url.split(b"?", 1)[0]
        if method == b"POST" and path in (b"/v1/chat/completions", b"/chat/completions"):
            try:
                req = orjson.loads(b"".join(self.body))
            except orjson.JSONDecodeError:
                self.transport.write(_BAD)
                return
            if req.get("stream"):
                opts = req.get("stream_options") or {}
                task = asyncio.ensure_future(self._stream(bool(opts.get("include_usage")), bool(opts.get("continuous_usage_stats"))))
                self.streams.add(task)
                task.add_done_callback(self.streams.discard)
            else:
                self.transport.write(_OK_COMPLETION)
        elif path == b"/health":
            self.transport.write(_OK_HEALTH)
        elif path == b"/metrics":
            self.transport.write(_OK_METRICS)
        elif path in (b"/v1/models", b"/models"):
            self.transport.write(_OK_MODELS)
        else:
            self.transport.write(_NOT_FOUND)

    async def _stream(self, include_usage: bool, continuous: bool) -> None:
        t = self.transport
        assert t is not None
        t.write(_STREAM_HEAD + _http_chunk(_event(b'{"role":"assistant","content":""}', b"null", 0, continuous)))
        for i in range(1, self.chunks + 1):
            if self.interval_s:
                await asyncio.sleep(self.interval_s)
            if t.is_closing():
                return
            t.write(_http_chunk(_event(b'{"content":" tok"}', b"null", i, continuous)))
        tail = _event(b"{}", b'"stop"', self.chunks, continuous)
        if include_usage:
            tail += (
                b'data: {"id":"chatcmpl-stub","object":"chat.completion.chunk","created":1700000000,"model":"'
                + MODEL.encode() + b'","choices":[],"usage":{"prompt_tokens":%d,"completion_tokens":%d,'
                b'"total_tokens":%d}}\n\n' % (_PROMPT_TOKENS, self.chunks, _PROMPT_TOKENS + self.chunks)
            )
        t.write(_http_chunk(tail + b"data: [DONE]\n\n") + b"0\r\n\r\n")


async def serve(host: str, port: int, chunks: int, interval_ms: float, reuse_port: bool = False) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: StubProtocol(chunks, interval_ms / 1000.0), host, port, backlog=4096,
                                      reuse_port=reuse_port or None)
    print(f"stub listening on http://{host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--chunks", type=int, default=64, help="content chunks per stream")
    ap.add_argument("--interval-ms", type=float, default=5.0, help="pause before each content chunk")
    ap.add_argument("--reuse-port", action="store_true",
                    help="share the port with other stubs (SO_REUSEPORT: the kernel spreads connections over them), "
                         "for rates one process cannot answer")
    args = ap.parse_args()
    uvloop.run(serve(args.host, args.port, args.chunks, args.interval_ms, args.reuse_port))


if __name__ == "__main__":
    main()
