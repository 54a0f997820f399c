"""A tiny, fast engine speaking vLLM's OpenAI API, for tests and benchmarks that need a real server
but not a real model: chat/completions (streamed with continuous usage, or not), /health, /metrics
with vLLM's metric names, and an OTLP/HTTP sink (``POST /v1/traces``) so an exporter has somewhere to
send. It remembers the headers of the requests it served (``seen``), so a test can check what the
gateway put on the wire.

Run standalone (benchmarks): ``python -m tests.stub_engine --port P [--tokens N] [--token-delay-ms D]``.
Each output token is the word "tok"; prompt tokens are counted as whitespace-separated words.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections import deque

import orjson
from aiohttp import web


def _prompt_tokens(body: dict) -> int:
    if "messages" in body:
        text = " ".join(str(m.get("content", "")) for m in body["messages"] if isinstance(m, dict))
    else:
        prompt = body.get("prompt", "")
        text = prompt if isinstance(prompt, str) else " ".join(map(str, prompt))
    return max(1, len(text.split()))


class StubEngine:
    def __init__(self, *, tokens: int = 8, token_delay_s: float = 0.0, keep_headers: int = 1000) -> None:
        self.tokens = tokens
        self.token_delay_s = token_delay_s
        self.seen: deque[dict[str, str]] = deque(maxlen=keep_headers)
        self.spans_received = 0
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self._generate)
        self.app.router.add_post("/v1/completions", self._generate)
        self.app.router.add_get("/health", self._health)
        self.app.router.add_get("/metrics", self._metrics)
        self.app.router.add_post("/v1/traces", self._traces)
        self.running = 0

    async def _health(self, _: web.Request) -> web.Response:
        return web.Response(text="")

    async def _metrics(self, _: web.Request) -> web.Response:
        text = (
            "# TYPE vllm:num_requests_running gauge\n"
            f'vllm:num_requests_running{{model_name="stub"}} {self.running}\n'
            "# TYPE vllm:num_requests_waiting gauge\n"
            'vllm:num_requests_waiting{model_name="stub"} 0\n'
            "# TYPE vllm:kv_cache_usage_perc gauge\n"
            'vllm:kv_cache_usage_perc{model_name="stub"} 0.25\n'
        )
        return web.Response(text=text, content_type="text/plain")

    async def _traces(self, request: web.Request) -> web.Response:
        await request.read()
        self.spans_received += 1
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        self.seen.append({k.lower(): v for k, v in request.headers.items()})
        body = orjson.loads(await request.read())
        chat = request.path.endswith("/chat/completions")
        n = int(body.get("max_tokens") or body.get("max_completion_tokens") or self.tokens)
        n = min(n, self.tokens) if not body.get("ignore_eos") else n
        prompt = _prompt_tokens(body)
        rid, model, created = "cmpl-stub", body.get("model", "stub"), int(time.time())
        obj = "chat.completion" if chat else "text_completion"
        self.running += 1
        try:
            if not body.get("stream"):
                if self.token_delay_s:
                    await asyncio.sleep(self.token_delay_s * n)
                text = " ".join(["tok"] * n)
                choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
                          if chat else {"index": 0, "text": text, "finish_reason": "length"})
                return web.Response(body=orjson.dumps({
                    "id": rid, "object": obj, "created": created, "model": model, "choices": [choice],
                    "usage": {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n},
                }), content_type="application/json")
            resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await resp.prepare(request)
            chunk_obj = obj + ".chunk" if chat else obj
            for i in range(n):
                if self.token_delay_s:
                    await asyncio.sleep(self.token_delay_s)
                finish = "length" if i == n - 1 else None
                choice = ({"index": 0, "delta": {"content": "tok "}, "finish_reason": finish}
                          if chat else {"index": 0, "text": "tok ", "finish_reason": finish})
                usage = {"prompt_tokens": prompt, "completion_tokens": i + 1, "total_tokens": prompt + i + 1}
                data = {"id": rid, "object": chunk_obj, "created": created, "model": model, "choices": [choice], "usage": usage}
                await resp.write(b"data: " + orjson.dumps(data) + b"\n\n")
            final = {"id": rid, "object": chunk_obj, "created": created, "model": model, "choices": [],
                     "usage": {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}}
            await resp.write(b"data: " + orjson.dumps(final) + b"\n\ndata: [DONE]\n\n")
            await resp.write_eof()
            return resp
        finally:
            self.running -= 1


class ThreadedApp:
    """Serve an aiohttp ``Application`` on 127.0.0.1 from a daemon thread with its own event loop."""

    def __init__(self, app: web.Application, port: int | None = None) -> None:
        from tests.servers import free_port

        self.app = app
        self.port = port or free_port()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._stop = asyncio.Event()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def __enter__(self) -> ThreadedApp:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("server did not start")
        return self

    def __exit__(self, *exc) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)


class RunningStub:
    """``async with RunningStub(port=...) as stub``: the stub served on 127.0.0.1 in this event loop."""

    def __init__(self, port: int, **kwargs) -> None:
        self.engine = StubEngine(**kwargs)
        self.port = port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> StubEngine:
        self._runner = web.AppRunner(self.engine.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self.engine

    async def __aexit__(self, *exc) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--token-delay-ms", type=float, default=0.0)
    args = ap.parse_args()
    engine = StubEngine(tokens=args.tokens, token_delay_s=args.token_delay_ms / 1000.0, keep_headers=1)
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        loop = asyncio.new_event_loop()
    web.run_app(engine.app, host="127.0.0.1", port=args.port, access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main()
