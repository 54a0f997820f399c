"""The HTTP face of a simulated engine: vLLM's OpenAI-compatible API and ``/metrics``, on aiohttp.

aiohttp rather than FastAPI because dozens of replicas share one process and one event loop: a bare
``aiohttp.web`` app costs far less CPU per request and per streamed chunk, and that CPU is what limits
how many replicas one small machine can simulate.

What a client sees is shaped like vLLM 0.32's server (``vllm/entrypoints/openai``): the same JSON keys in
responses and stream chunks (``id``, ``object``, ``created``, ``model``, ``choices[{index, delta|text,
logprobs: null, finish_reason}]``), the role chunk first on chat streams, ``stream_options.include_usage``
(a last chunk with empty ``choices`` and ``usage``), ``continuous_usage_stats`` (usage on every chunk),
``data: [DONE]``, vLLM's error body ``{"error": {message, type, param, code}}``, ``max_tokens``
(``max_completion_tokens`` on chat), ``ignore_eos``, ``min_tokens``. Like vLLM, several tokens that
pile up while a client reads slowly are sent as one chunk; usage always counts tokens, not chunks.

A client that goes away aborts its sequence at once (its batch slot and KV blocks are freed): the
server runs with ``handler_cancellation`` so a disconnect cancels the handler, and a failed write of a
stream chunk ends it the same way.

Time: the engine's steps take ``duration * time_scale`` wall seconds (``time_scale < 1`` runs faster than
the modelled hardware). Steps are scheduled on absolute deadlines so a busy event loop delays tokens but
does not lower the simulated throughput; a backlog of more than ``MAX_LAG_S`` is forgiven.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from . import metrics, tokenizer
from .engine import Engine, RequestTooLong, Sequence
from .profiles import Profile

log = logging.getLogger(__name__)

MAX_LAG_S = 0.25
SHUTDOWN_TIMEOUT_S = 2.0
SIM_VERSION = "0.32.0+noor.sim"


class HTTPError(Exception):
    """An error answered in vLLM's shape."""

    def __init__(self, status: int, message: str, *, type_: str = "BadRequestError", param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param = status, message, type_, param

    def response(self) -> web.Response:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.status}}
        return web.Response(status=self.status, body=orjson.dumps(body), content_type="application/json")


def _random_id() -> str:
    return os.urandom(16).hex()


def _int_field(body: Mapping[str, Any], name: str, default: int | None, *, minimum: int) -> int | None:
    value = body.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise HTTPError(400, f"{name} must be an integer", param=name)
    if value < minimum:
        raise HTTPError(400, f"{name} must be at least {minimum}, got {value}.", param=name)
    return value


class SimulatorServer:
    """One simulated vLLM engine behind its own HTTP listener (several can share an event loop)."""

    def __init__(
        self,
        profile: Profile,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        time_scale: float = 1.0,
        served_model_name: str | None = None,
        seed: int = 0,
    ) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.profile = profile
        self.host, self.port = host, port
        self.time_scale = time_scale
        self.model_name = served_model_name or profile.served_model_name
        self.engine = Engine(profile, seed=seed)
        self.registry = metrics.make_registry(self.engine, self.model_name)
        self.created = int(time.time())
        self._runner: web.AppRunner | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._t0 = 0.0

    # --- lifecycle -----------------------------------------------------------------------------------
    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/version", self.version)
        app.router.add_get("/sim/stats", self.sim_stats)
        app.router.add_post("/reset_prefix_cache", self.reset_prefix_cache)
        return app

    async def start(self) -> str:
        """Bind, start the engine loop; returns the base URL (``http://host:port``, no ``/v1``)."""
        loop = asyncio.get_running_loop()
        self._t0 = loop.time()
        self._runner = web.AppRunner(
            self.make_app(), access_log=None, handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT_S
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._loop_task = asyncio.create_task(self._run_engine(), name=f"sim-engine-{self.port}")
        self._loop_task.add_done_callback(self._engine_done)
        return self.url

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def stop(self) -> None:
        """Stop the engine, end in-flight requests (as aborted), close the listener."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            try:
                await self._loop_task
            except asyncio.CancelledError:
                pass
            self._loop_task = None
        now = self.sim_now()
        for seq in [*self.engine.running, *self.engine.waiting]:
            self.engine.abort(seq, now)
            if seq.listener is not None:
                seq.listener.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @staticmethod
    def _engine_done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("simulated engine loop died", exc_info=task.exception())

    # --- the engine loop -----------------------------------------------------------------------------
    def sim_now(self) -> float:
        """Simulated seconds since start."""
        return (asyncio.get_running_loop().time() - self._t0) / self.time_scale

    async def _run_engine(self) -> None:
        loop = asyncio.get_running_loop()
        engine, scale = self.engine, self.time_scale
        next_start = loop.time()
        while True:
            if not engine.has_work():
                self._wake.clear()
                await self._wake.wait()
                next_start = loop.time()
            start = max(next_start, loop.time() - MAX_LAG_S)
            step = engine.schedule((start - self._t0) / scale)
            if step is None:  # work that cannot run now (cannot happen with a valid profile); wait for more
                self._wake.clear()
                await self._wake.wait()
                next_start = loop.time()
                continue
            end = start + step.duration * scale
            delay = end - loop.time()
            await asyncio.sleep(delay if delay > 0 else 0)
            produced = engine.complete(step, (end - self._t0) / scale)
            for seq in produced:
                if seq.listener is not None:
                    seq.listener.set()
            next_start = end

    # --- plain endpoints -----------------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": SIM_VERSION})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(self.registry), headers={"Content-Type": metrics.CONTENT_TYPE})

    async def models(self, request: web.Request) -> web.Response:
        card = {
            "id": self.model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "vllm",
            "root": self.model_name,
            "parent": None,
            "max_model_len": self.profile.max_model_len,
            "permission": [
                {
                    "id": f"modelperm-{_random_id()[:16]}",
                    "object": "model_permission",
                    "created": self.created,
                    "allow_create_engine": False,
                    "allow_sampling": True,
                    "allow_logprobs": True,
                    "allow_search_indices": False,
                    "allow_view": True,
                    "allow_fine_tuning": False,
                    "organization": "*",
                    "group": None,
                    "is_blocking": False,
                }
            ],
        }
        return web.Response(body=orjson.dumps({"object": "list", "data": [card]}), content_type="application/json")

    async def sim_stats(self, request: web.Request) -> web.Response:
        """Simulator-only: the engine's state and counters as JSON (benchmarks read it)."""
        e, s = self.engine, self.engine.stats
        body = {
            "profile": self.profile.name,
            "model": self.model_name,
            "time_scale": self.time_scale,
            "sim_time": self.sim_now(),
            "num_running": e.num_running,
            "num_waiting": e.num_waiting,
            "kv_cache_usage": e.kv_cache_usage(),
            "prefix_cache_queries": s.prefix_cache_queries,
            "prefix_cache_hits": s.prefix_cache_hits,
            "prompt_tokens": s.prompt_tokens,
            "generation_tokens": s.generation_tokens,
            "preemptions": s.preemptions,
            "steps": s.steps,
            "busy_seconds": s.busy_seconds,
            "finished": s.finished,
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def reset_prefix_cache(self, request: web.Request) -> web.Response:
        self.engine.pool.reset_prefix_cache()
        return web.Response(status=200)

    # --- generation ----------------------------------------------------------------------------------
    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise HTTPError(400, f"invalid JSON body: {exc}") from None
        if not isinstance(body, dict):
            raise HTTPError(400, "the request body must be a JSON object")
        model = body.get("model")
        if model is not None and model != self.model_name:
            raise HTTPError(404, f"The model `{model}` does not exist.", type_="NotFoundError", param="model")
        if body.get("n", 1) not in (1, None):
            raise HTTPError(400, "the simulator serves n=1 only", param="n")
        return body

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._body(request)
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
                raise HTTPError(400, "messages must be a non-empty list of objects", param="messages")
            prompt_ids = tokenizer.encode_chat(messages, add_generation_prompt=body.get("add_generation_prompt", True))
            max_tokens = _int_field(body, "max_completion_tokens", None, minimum=1)
            if max_tokens is None:
                max_tokens = _int_field(body, "max_tokens", None, minimum=1)
            return await self._generate(request, body, "chat", prompt_ids, max_tokens)
        except HTTPError as err:
            return err.response()

    async def completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._body(request)
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
                prompt = prompt[0]  # a batch of one
            if isinstance(prompt, str):
                prompt_ids = tokenizer.encode(prompt)
            elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
                prompt_ids = list(prompt)
            else:
                raise HTTPError(400, "prompt must be a string or a list of token ids (one prompt)", param="prompt")
            if not prompt_ids:
                raise HTTPError(400, "the prompt is empty", param="prompt")
            max_tokens = _int_field(body, "max_tokens", 16, minimum=1)  # OpenAI's and vLLM's default: 16
            return await self._generate(request, body, "completion", prompt_ids, max_tokens)
        except HTTPError as err:
            return err.response()

    async def _generate(
        self, request: web.Request, body: dict[str, Any], kind: str, prompt_ids: list[int], max_tokens: int | None
    ) -> web.StreamResponse:
        min_tokens = _int_field(body, "min_tokens", 0, minimum=0) or 0
        try:
            seq = self.engine.add_request(
                prompt_ids,
                max_tokens=max_tokens,
                now=self.sim_now(),
                ignore_eos=bool(body.get("ignore_eos", False)),
                min_tokens=min_tokens,
            )
        except RequestTooLong as exc:
            raise HTTPError(400, str(exc), param="input_tokens") from None
        except ValueError as exc:
            raise HTTPError(400, str(exc)) from None
        seq.listener = asyncio.Event()
        self._wake.set()
        request_id = ("chatcmpl-" if kind == "chat" else "cmpl-") + _random_id()
        try:
            if body.get("stream"):
                return await self._stream(request, body, kind, seq, request_id)
            return await self._complete(kind, seq, request_id)
        finally:
            if not seq.finished:  # client went away (handler cancelled or stream write failed)
                self.engine.abort(seq, self.sim_now())

    async def _complete(self, kind: str, seq: Sequence, request_id: str) -> web.Response:
        created = int(time.time())
        event = seq.listener
        while not seq.finished:
            await event.wait()
            event.clear()
        n_out = seq.num_output_tokens
        usage = {
            "prompt_tokens": seq.num_prompt_tokens,
            "total_tokens": seq.num_prompt_tokens + n_out,
            "completion_tokens": n_out,
            "prompt_tokens_details": None,
            "completion_tokens_details": None,
        }
        text = "".join(seq.output_texts)
        if kind == "chat":
            choice: dict[str, Any] = {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": text,
                    "refusal": None,
                    "annotations": None,
                    "audio": None,
                    "function_call": None,
                    "reasoning": None,
                },
                "logprobs": None,
                "finish_reason": seq.finish_reason,
                "stop_reason": None,
                "token_ids": None,
                "routed_experts": None,
            }
            body: dict[str, Any] = {
                "id": request_id,
                "object": "chat.completion",
                "created": created,
                "model": self.model_name,
                "choices": [choice],
                "service_tier": None,
                "system_fingerprint": None,
                "usage": usage,
                "prompt_logprobs": None,
                "prompt_token_ids": None,
                "prompt_text": None,
                "kv_transfer_params": None,
                "ec_transfer_params": None,
                "metrics": None,
            }
        else:
            body = {
                "id": request_id,
                "object": "text_completion",
                "created": created,
                "model": self.model_name,
                "choices": [
                    {
                        "index": 0,
                        "text": text,
                        "logprobs": None,
                        "finish_reason": seq.finish_reason,
                        "stop_reason": None,
                        "token_ids": None,
                        "prompt_logprobs": None,
                        "prompt_token_ids": None,
                        "routed_experts": None,
                    }
                ],
                "service_tier": None,
                "system_fingerprint": None,
                "usage": usage,
                "kv_transfer_params": None,
                "ec_transfer_params": None,
                "metrics": None,
            }
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def _stream(
        self, request: web.Request, body: dict[str, Any], kind: str, seq: Sequence, request_id: str
    ) -> web.StreamResponse:
        options = body.get("stream_options") or {}
        include_usage = bool(options.get("include_usage")) if isinstance(options, dict) else False
        continuous = include_usage and bool(options.get("continuous_usage_stats"))
        created = int(time.time())
        model = self.model_name
        chat = kind == "chat"
        obj = "chat.completion.chunk" if chat else "text_completion"
        n_prompt = seq.num_prompt_tokens

        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await response.prepare(request)

        def frame(chunk: dict[str, Any]) -> bytes:
            return b"data: " + orjson.dumps(chunk) + b"\n\n"

        def usage(done: int) -> dict[str, Any]:
            u: dict[str, Any] = {"prompt_tokens": n_prompt, "total_tokens": n_prompt + done, "completion_tokens": done}
            if chat:
                u["completion_tokens_details"] = None
            return u

        sent = 0
        event = seq.listener
        while True:
            await event.wait()
            event.clear()
            n = seq.num_output_tokens
            finished = seq.finished
            if n == sent and not finished:
                continue
            out = bytearray()
            if sent == 0 and chat and n > 0:
                role: dict[str, Any] = {
                    "id": request_id,
                    "object": obj,
                    "created": created,
                    "model": model,
                    "choices": [
                        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
                    ],
                }
                if continuous:
                    role["usage"] = usage(0)
                role["prompt_token_ids"] = None
                role["prompt_text"] = None
                out += frame(role)
            if n > sent or (finished and seq.finish_reason != "abort"):
                text = "".join(seq.output_texts[sent:n])
                last = finished and seq.finish_reason != "abort"
                if chat:
                    choice: dict[str, Any] = {"index": 0, "delta": {"content": text}, "logprobs": None}
                else:
                    choice = {"index": 0, "text": text, "logprobs": None}
                choice["finish_reason"] = seq.finish_reason if last else None
                if last or not chat:
                    choice["stop_reason"] = None
                if not chat:
                    choice["prompt_token_ids"] = None
                choice["token_ids"] = None
                chunk: dict[str, Any] = {"id": request_id, "object": obj, "created": created, "model": model, "choices": [choice]}
                if continuous:
                    chunk["usage"] = usage(n)
                out += frame(chunk)
                sent = n
            if finished:
                if include_usage:
                    out += frame(
                        {
                            "id": request_id,
                            "object": obj,
                            "created": created,
                            "model": model,
                            "choices": [],
                            "usage": {"prompt_tokens": n_prompt, "total_tokens": n_prompt + sent, "completion_tokens": sent},
                        }
                    )
                out += b"data: [DONE]\n\n"
            if out:
                try:
                    await response.write(bytes(out))
                except ConnectionError:  # the client went away; _generate aborts the sequence
                    return response
            if finished:
                return response  # aiohttp writes the end of the chunked body
