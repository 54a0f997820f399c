"""A fast OpenAI-speaking upstream for load tests and benchmarks (never the proof a model works).

It answers ``/v1/chat/completions`` and ``/v1/completions`` like vLLM does — streamed or not, with the
closing usage chunk and ``continuous_usage_stats`` when asked — generating exactly ``max_tokens`` tokens
(capped by ``--max-out``), optionally slowly (``--delay-ms`` per request, or ``stub_delay_ms`` in the
body; ``--token-ms`` per token), and
reports a fixed prompt count (``--prompt-tokens``). ``GET /stats`` tells how many requests it saw and the
most it had in flight at once, which is how tests see a concurrency cap from the engine's side.

    python -m tests.stub_upstream --port 9000 [--delay-ms 0] [--token-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import orjson
from aiohttp import web


class Stub:
    def __init__(self, *, delay_ms: float = 0.0, token_ms: float = 0.0, prompt_tokens: int = 5, max_out: int = 4096) -> None:
        self.delay_s = delay_ms / 1000
        self.token_s = token_ms / 1000
        self.prompt_tokens = prompt_tokens
        self.max_out = max_out
        self.requests = 0
        self.inflight = 0
        self.max_inflight = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.generate)
        app.router.add_post("/v1/completions", self.generate)
        app.router.add_get("/health", lambda _: web.Response(text=""))
        app.router.add_get("/metrics", lambda _: web.Response(text="vllm:num_requests_running 0\nvllm:num_requests_waiting 0\n"))
        app.router.add_get("/stats", self.stats)
        app.router.add_post("/stats/reset", self.reset)
        return app

    async def stats(self, _: web.Request) -> web.Response:
        return web.json_response({"requests": self.requests, "inflight": self.inflight, "max_inflight": self.max_inflight})

    async def reset(self, _: web.Request) -> web.Response:
        self.requests = self.max_inflight = 0
        return web.json_response({})

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.requests += 1
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            return await self._answer(request, body)
        finally:
            self.inflight -= 1

    async def _answer(self, request: web.Request, body: dict) -> web.StreamResponse:
        chat = request.path.endswith("/chat/completions")
        n = min(int(body.get("max_completion_tokens") or body.get("max_tokens") or 16), self.max_out)
        rid, model, created = "cmpl-" + uuid.uuid4().hex, body.get("model", "stub"), int(time.time())
        delay_s = float(body.get("stub_delay_ms", self.delay_s * 1000)) / 1000
        if delay_s:
            await asyncio.sleep(delay_s)

        def usage(k: int) -> dict:
            return {"prompt_tokens": self.prompt_tokens, "completion_tokens": k, "total_tokens": self.prompt_tokens + k}

        if not body.get("stream"):
            if self.token_s:
                await asyncio.sleep(self.token_s * n)
            text = " ".join(["tok"] * n)
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
                      if chat else {"index": 0, "text": text, "finish_reason": "length"})
            obj = {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
                   "model": model, "choices": [choice], "usage": usage(n)}
            return web.Response(body=orjson.dumps(obj), content_type="application/json")

        opts = body.get("stream_options") or {}
        continuous, include = bool(opts.get("continuous_usage_stats")), bool(opts.get("include_usage"))
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        kind = "chat.completion.chunk" if chat else "text_completion"
        for i in range(n):
            if self.token_s:
                await asyncio.sleep(self.token_s)
            delta = {"index": 0, "delta": {"content": "tok "}, "finish_reason": None} if chat else {"index": 0, "text": "tok ", "finish_reason": None}
            if i == n - 1:
                delta["finish_reason"] = "length"
            chunk = {"id": rid, "object": kind, "created": created, "model": model, "choices": [delta]}
            if continuous:
                chunk["usage"] = usage(i + 1)
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        if include:
            last = {"id": rid, "object": kind, "created": created, "model": model, "choices": [], "usage": usage(n)}
            await resp.write(b"data: " + orjson.dumps(last) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--token-ms", type=float, default=0.0)
    ap.add_argument("--prompt-tokens", type=int, default=5)
    ap.add_argument("--max-out", type=int, default=4096)
    a = ap.parse_args()
    stub = Stub(delay_ms=a.delay_ms, token_ms=a.token_ms, prompt_tokens=a.prompt_tokens, max_out=a.max_out)
    web.run_app(stub.app(), host="127.0.0.1", port=a.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
