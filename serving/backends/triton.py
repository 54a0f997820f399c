"""The adapter for NVIDIA Triton Inference Server endpoints.

Generation goes to models that speak Triton's vLLM-backend tensor protocol (NVIDIA's vLLM backend, or
our ``models/triton/smollm2``): over gRPC (``tritonclient.grpc.aio``, a decoupled ``stream_infer``
call per request, cancelled when the stream is closed, which Triton passes to the model as
``is_cancelled()``), or over HTTP's ``generate`` / ``generate_stream`` (aiohttp) where a pool prefers
it. Embeddings go to a batched model (``models/triton/minilm``: ``text`` -> ``embedding``,
``num_tokens``) so Triton's dynamic batcher can merge concurrent requests.

Usage comes from the model's ``num_input_tokens`` / ``num_output_tokens`` outputs (``source="engine"``);
against a model that does not report them, a ``count_tokens`` callable counts the text
(``source="tokenizer"``).

Errors: anything before the first chunk raises ``UpstreamError`` (503 and retryable when the endpoint
or model is unavailable, 400 when the request is wrong). An error after chunks went out (Triton sends
it in the gRPC stream, or as an SSE ``{"error": ...}`` event under HTTP 200) ends the stream with the
common ``StreamError`` carrying the usage so far; nothing more is yielded, so the relay bills the
partial answer and closes the client's stream with an OpenAI error event.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import numpy as np
import orjson

from serving.backends.base import (
    Backend,
    EngineSignals,
    StreamChunk,
    StreamError,
    UpstreamError,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamStream,
    Usage,
)
from serving.backends.triton_protocol import (
    BadRequest,
    GenerateCall,
    OpenAIShaper,
    Piece,
    PromptRenderer,
    TokenCounter,
    UsageMeter,
    chatml,
    embedding_inputs,
    embeddings_response,
    error_body,
    generate_call,
    infer_finish_reason,
    openai_finish_reason,
)

Protocol = Literal["grpc", "http"]

#: Tensor names of the embedding model (``models/triton/minilm``).
EMBED_INPUT, EMBED_OUTPUT, EMBED_TOKENS = "text", "embedding", "num_tokens"
# Messages that say the request itself is wrong (Triton's stream errors carry no status code).
_CLIENT_FAULT = re.compile(
    r"invalid|must be|not allowed|not supported|is required|longer than|exceeds|too long|out of range|"
    r"unexpected inference input|unknown (input|parameter)|expected .+ but got",
    re.I,
)
_UNAVAILABLE = re.compile(r"unknown model|is not found|not ready|unavailable|failed to connect|connection|shut", re.I)


class _EngineError(Exception):
    """An error response from Triton (not yet classified)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def upstream_error(message: str, status: int | None = None) -> UpstreamError:
    """Classify a Triton error: unavailable endpoint/model -> 503 retryable; bad request -> 400."""
    if status is None:
        if _UNAVAILABLE.search(message):
            status = 503
        elif _CLIENT_FAULT.search(message):
            status = 400
        else:
            status = 502
    if status == 503:
        return UpstreamError(503, error_body(message, type_="service_unavailable", code=503), retryable=True, message=message)
    if 400 <= status < 500 and status != 429:
        return UpstreamError(status, error_body(message), retryable=False, message=message)
    return UpstreamError(status, error_body(message, type_="upstream_error", code=status), retryable=True, message=message)


@dataclass(slots=True)
class TritonSignals(EngineSignals):
    """Triton's load signals: ``waiting`` is ``nv_inference_pending_request_count``; ``running`` the
    requests our generation models hold in their engines (``noor_model_inflight_requests``); and the
    mean queue and compute time per request since the previous scrape."""

    queue_ms: float = 0.0
    compute_ms: float = 0.0
    requests: float = 0.0


def _first(value: Any) -> Any:
    while isinstance(value, (list, tuple, np.ndarray)):
        if len(value) == 0:
            return None
        value = value[0]
    return value


def _text(value: Any) -> str:
    value = _first(value)
    if value is None:
        return ""
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _count(value: Any) -> int | None:
    if value is None:
        return None
    arr = np.asarray(value).reshape(-1)
    return int(arr.sum()) if arr.size else 0


def _piece_from_json(event: dict) -> Piece:
    """One HTTP generate(_stream) response -> Piece."""
    return Piece(
        text=_text(event.get("text_output")),
        finish_reason=openai_finish_reason(_text(event.get("finish_reason")) or None),
        num_input_tokens=_count(event.get("num_input_tokens")),
        num_output_tokens=_count(event.get("num_output_tokens")),
    )


def _piece_from_grpc(result: Any) -> Piece:
    """One gRPC InferResult -> Piece."""
    response = result.get_response()
    final = False
    param = response.parameters.get("triton_final_response") if response.parameters else None
    if param is not None:
        final = bool(param.bool_param)
    names = {o.name for o in response.outputs}

    def get(name: str) -> Any:
        return result.as_numpy(name) if name in names else None

    return Piece(
        text=_text(get("text_output")),
        finish_reason=openai_finish_reason(_text(get("finish_reason")) or None),
        num_input_tokens=_count(get("num_input_tokens")),
        num_output_tokens=_count(get("num_output_tokens")),
        final=final,
    )


class _Generation:
    """One generation request in flight, as an async source of ``Piece``s."""

    async def next(self) -> Piece | None:  # None: the engine finished
        raise NotImplementedError

    async def cancel(self) -> None:
        """Abandon the request: Triton cancels it and the model aborts generation."""
        raise NotImplementedError

    async def finish(self) -> None:
        """The final response arrived: read the end of the call so its connection is reused."""
        try:
            while await asyncio.wait_for(self.next(), 1.0) is not None:
                pass
        except Exception:
            pass
        await self.cancel()


class _GrpcGeneration(_Generation):
    def __init__(self, client: Any, model: str, inputs: list, outputs: list, request_id: str, timeout_s: float) -> None:
        async def requests():
            yield {"model_name": model, "inputs": inputs, "outputs": outputs, "request_id": request_id}

        self._it = client.stream_infer(requests(), stream_timeout=timeout_s)
        self._closed = False

    async def next(self) -> Piece | None:
        if self._closed:
            return None
        try:
            result, error = await self._it.__anext__()
        except StopAsyncIteration:
            self._closed = True
            return None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # grpc.aio.AioRpcError: the call failed or was cut
            self._closed = True
            code = getattr(exc, "code", lambda: None)()
            details = getattr(exc, "details", lambda: str(exc))() or str(exc)
            status = 503 if str(code).endswith(("UNAVAILABLE", "CANCELLED", "DEADLINE_EXCEEDED")) else None
            raise _EngineError(details, status) from exc
        if error is not None:
            raise _EngineError(error.message() if hasattr(error, "message") else str(error))
        return _piece_from_grpc(result)

    async def cancel(self) -> None:
        if not self._closed:
            self._closed = True
            self._it.cancel()


class _HttpGeneration(_Generation):
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self._closed = False

    async def next(self) -> Piece | None:
        if self._closed:
            return None
        while True:
            line = await self._response.content.readline()
            if not line:
                self._closed = True
                self._response.release()
                return None
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            event = orjson.loads(line[5:].strip())
            if "error" in event:
                raise _EngineError(str(event["error"]))
            return _piece_from_json(event)

    async def cancel(self) -> None:
        if not self._closed:
            self._closed = True
            self._response.close()  # drops the connection: Triton cancels the request


class TritonStream(UpstreamStream):
    """OpenAI chunks from one Triton generation; ``aclose`` cancels the Triton request."""

    def __init__(
        self, gen: _Generation, first: Piece, shaper: OpenAIShaper, meter: UsageMeter, max_tokens: int | None = None
    ) -> None:
        self._gen = gen
        self._max_tokens = max_tokens
        self._first = first
        self._shaper = shaper
        self._meter = meter
        self._closed = False
        self._done = False  # the engine sent its final response

    @property
    def usage(self) -> Usage | None:
        """Usage of what was received so far (the partial answer, if the stream was cut)."""
        return self._meter.usage()

    def __aiter__(self) -> AsyncIterator[StreamChunk]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[StreamChunk]:
        shaper, meter = self._shaper, self._meter
        piece: Piece | None = self._first
        try:
            meter.add(piece)
            if shaper.kind == "chat":
                usage = meter.usage()
                yield StreamChunk(shaper.role_chunk(usage), usage)
            finish_sent = False
            while piece is not None:
                usage = meter.usage()
                if piece.text or piece.finish_reason:
                    yield StreamChunk(shaper.content_chunk(piece.text, piece.finish_reason, usage), usage)
                    finish_sent = piece.finish_reason is not None
                if piece.finish_reason or piece.final:
                    break
                try:
                    piece = await self._gen.next()
                except _EngineError as exc:
                    self._done = True  # the engine ended the request itself
                    raise StreamError(f"engine error mid-stream: {exc.message}", usage=meter.usage(final=True)) from exc
                if piece is not None:
                    meter.add(piece)
            self._done = True
            usage = meter.usage(final=True)
            if not finish_sent:  # an engine that reports no finish reason
                reason = infer_finish_reason(None, usage.completion_tokens if usage else 0, self._max_tokens)
                yield StreamChunk(shaper.content_chunk("", reason, usage), usage)
            yield StreamChunk(shaper.usage_chunk(usage), usage, usage_only=True)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            if self._done:
                await self._gen.finish()
            else:
                await self._gen.cancel()


class TritonBackend(Backend):
    """One Triton endpoint (HTTP ``url``; ``grpc_url`` as ``host:port``; ``metrics_url``).

    ``models`` are the Triton models this endpoint must have ready for ``health()``; requests name
    their model in ``body["model"]``. ``prompt_renderer`` turns chat messages into the model's prompt
    (the router passes the served model's chat template); ``count_tokens`` counts text where the model
    reports no token counts. ``prompt_renderers`` / ``token_counters`` give them per Triton model name,
    for an endpoint serving several models; a model not named there uses the two defaults. ``default_max_tokens`` is sent when a request sets none (NVIDIA's vLLM
    backend would otherwise stop at 16; our model runs to the context length, as OpenAI does).
    ``additional_outputs=False`` leaves out the ``return_*`` inputs for vLLM backends older than r24.12.
    """

    engine = "triton"

    def __init__(
        self,
        url: str,
        *,
        grpc_url: str | None = None,
        metrics_url: str | None = None,
        protocol: Protocol = "grpc",
        models: Sequence[str] = (),
        prompt_renderer: PromptRenderer = chatml,
        count_tokens: TokenCounter | None = None,
        prompt_renderers: Mapping[str, PromptRenderer] | None = None,
        token_counters: Mapping[str, TokenCounter] | None = None,
        default_max_tokens: int | None = None,
        additional_outputs: bool = True,
        embedding_batch_size: int = 64,
        timeout_s: float = 600.0,
        connect_timeout_s: float = 5.0,
        health_timeout_s: float = 2.0,
    ) -> None:
        super().__init__(url)
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be 'grpc' or 'http', not {protocol!r}")
        if protocol == "grpc" and not grpc_url:
            raise ValueError("protocol='grpc' needs grpc_url (host:port)")
        self.grpc_url = grpc_url
        self.metrics_url = metrics_url
        self.protocol: Protocol = protocol
        self.models = tuple(models)
        self.prompt_renderer = prompt_renderer
        self.count_tokens = count_tokens
        self.prompt_renderers = dict(prompt_renderers or {})
        self.token_counters = dict(token_counters or {})
        self.default_max_tokens = default_max_tokens
        self.additional_outputs = additional_outputs
        self.embedding_batch_size = embedding_batch_size
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.health_timeout_s = health_timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._grpc: Any = None
        self._ids = itertools.count()
        self._last_counters: dict[str, float] | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, connect=self.connect_timeout_s, sock_read=self.timeout_s),
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            )
        if self.protocol == "grpc" and self._grpc is None:
            import tritonclient.grpc.aio as grpcclient

            self._grpc = grpcclient.InferenceServerClient(url=self.grpc_url)

    async def close(self) -> None:
        if self._grpc is not None:
            await self._grpc.close()
            self._grpc = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _ready(self) -> None:
        if self._session is None or (self.protocol == "grpc" and self._grpc is None):
            await self.start()

    # --- generation ------------------------------------------------------------------------------

    def _counter(self, model: str) -> TokenCounter | None:
        return self.token_counters.get(model, self.count_tokens)

    def _call(self, request: UpstreamRequest, *, stream: bool) -> GenerateCall:
        try:
            return generate_call(
                request.kind,
                request.body,
                stream=stream,
                render=self.prompt_renderers.get(request.body.get("model"), self.prompt_renderer),
                default_max_tokens=self.default_max_tokens,
            )
        except BadRequest as exc:
            raise UpstreamError(400, error_body(str(exc)), retryable=False, message=str(exc)) from exc

    def _model(self, request: UpstreamRequest) -> str:
        model = request.body.get("model")
        if not isinstance(model, str) or not model:
            raise UpstreamError(400, error_body("model is required"), retryable=False)
        return model

    async def _open(self, model: str, call: GenerateCall, request_id: str) -> _Generation:
        await self._ready()
        if self.protocol == "grpc":
            return self._open_grpc(model, call, request_id)
        return await self._open_http(model, call, request_id)

    def _open_grpc(self, model: str, call: GenerateCall, request_id: str) -> _Generation:
        import tritonclient.grpc.aio as grpcclient

        def tensor(name: str, value: np.ndarray, dtype: str) -> Any:
            t = grpcclient.InferInput(name, list(value.shape), dtype)
            t.set_data_from_numpy(value)
            return t

        inputs = [
            tensor("text_input", np.array([call.prompt.encode("utf-8")], dtype=np.object_), "BYTES"),
            tensor("stream", np.array([call.stream]), "BOOL"),
            tensor("sampling_parameters", np.array([call.sampling_json().encode()], dtype=np.object_), "BYTES"),
            tensor("exclude_input_in_output", np.array([True]), "BOOL"),
        ]
        outputs = [grpcclient.InferRequestedOutput("text_output")]
        if self.additional_outputs:
            for name in ("finish_reason", "num_input_tokens", "num_output_tokens"):
                inputs.append(tensor(f"return_{name}", np.array([True]), "BOOL"))
                outputs.append(grpcclient.InferRequestedOutput(name))
        return _GrpcGeneration(self._grpc, model, inputs, outputs, request_id, self.timeout_s)

    def _http_payload(self, call: GenerateCall, request_id: str) -> dict:
        payload: dict[str, Any] = {
            "id": request_id,
            "text_input": call.prompt,
            "stream": call.stream,
            "sampling_parameters": call.sampling_json(),
            "exclude_input_in_output": True,
        }
        if self.additional_outputs:
            payload.update(return_finish_reason=True, return_num_input_tokens=True, return_num_output_tokens=True)
        return payload

    async def _open_http(self, model: str, call: GenerateCall, request_id: str) -> _Generation:
        assert self._session is not None
        try:
            response = await self._session.post(
                f"{self.url}/v2/models/{model}/generate_stream", data=orjson.dumps(self._http_payload(call, request_id))
            )
        except (aiohttp.ClientError, OSError) as exc:
            raise upstream_error(f"cannot reach Triton at {self.url}: {exc}", 503) from exc
        if response.status != 200:
            raise await self._http_error(response)
        return _HttpGeneration(response)

    async def _http_error(self, response: aiohttp.ClientResponse) -> UpstreamError:
        text = await response.text()
        response.release()
        try:
            message = str(orjson.loads(text).get("error", text))
        except orjson.JSONDecodeError:
            message = text
        status = response.status
        if status >= 500 or _UNAVAILABLE.search(message):
            return upstream_error(message, 503)
        return upstream_error(message, status)

    async def stream(self, request: UpstreamRequest) -> UpstreamStream:
        if request.kind == "embedding":
            raise UpstreamError(400, error_body("embeddings are not streamed"), retryable=False)
        model = self._model(request)
        call = self._call(request, stream=True)
        gen = await self._open(model, call, request.request_id)
        try:
            first = await gen.next()
        except _EngineError as exc:
            await gen.cancel()
            raise upstream_error(exc.message, exc.status) from exc
        except BaseException:
            await gen.cancel()
            raise
        if first is None:
            raise upstream_error("Triton closed the stream without a response", 502)
        shaper = OpenAIShaper(request.kind, request.public_model or model, request.request_id)
        meter = UsageMeter(call.prompt, self._counter(model))
        return TritonStream(gen, first, shaper, meter, call.sampling.get("max_tokens"))

    async def complete(self, request: UpstreamRequest) -> UpstreamResponse:
        if request.kind == "embedding":
            return await self._embed(request)
        model = self._model(request)
        call = self._call(request, stream=False)
        meter = UsageMeter(call.prompt, self._counter(model))
        texts: list[str] = []
        finish: str | None = None
        if self.protocol == "http":
            piece = await self._generate_http(model, call, request.request_id)
            meter.add(piece)
            texts.append(piece.text)
            finish = piece.finish_reason
        else:
            gen = await self._open(model, call, request.request_id)
            done = False
            try:
                while (piece := await gen.next()) is not None:
                    meter.add(piece)
                    texts.append(piece.text)
                    finish = piece.finish_reason or finish
                    if piece.finish_reason or piece.final:
                        break
                done = True
            except _EngineError as exc:
                done = True
                raise upstream_error(exc.message, exc.status) from exc
            finally:
                await (gen.finish() if done else gen.cancel())
        usage = meter.usage(final=True)
        finish = infer_finish_reason(finish, usage.completion_tokens if usage else 0, call.sampling.get("max_tokens"))
        body = OpenAIShaper(request.kind, request.public_model or model, request.request_id).response("".join(texts), finish, usage)
        return UpstreamResponse(200, body, usage)

    async def _generate_http(self, model: str, call: GenerateCall, request_id: str) -> Piece:
        await self._ready()
        assert self._session is not None
        try:
            async with self._session.post(
                f"{self.url}/v2/models/{model}/generate", data=orjson.dumps(self._http_payload(call, request_id))
            ) as response:
                if response.status != 200:
                    raise await self._http_error(response)
                return _piece_from_json(orjson.loads(await response.read()))
        except (aiohttp.ClientError, OSError) as exc:
            raise upstream_error(f"cannot reach Triton at {self.url}: {exc}", 503) from exc

    # --- embeddings ------------------------------------------------------------------------------

    async def _embed(self, request: UpstreamRequest) -> UpstreamResponse:
        model = self._model(request)
        try:
            texts = embedding_inputs(request.body)
        except BadRequest as exc:
            raise UpstreamError(400, error_body(str(exc)), retryable=False, message=str(exc)) from exc
        await self._ready()
        size = max(1, self.embedding_batch_size)
        batches = [texts[i : i + size] for i in range(0, len(texts), size)]
        embed = self._embed_grpc if self.protocol == "grpc" else self._embed_http
        results = await asyncio.gather(*(embed(model, batch, f"{request.request_id}-{i}") for i, batch in enumerate(batches)))
        vectors = np.concatenate([r[0] for r in results])
        counts = np.concatenate([r[1] for r in results])
        body, usage = embeddings_response(
            request.public_model or model, vectors, counts, encoding_format=request.body.get("encoding_format")
        )
        return UpstreamResponse(200, body, usage)

    async def _embed_grpc(self, model: str, texts: list[str], request_id: str) -> tuple[np.ndarray, np.ndarray]:
        import tritonclient.grpc.aio as grpcclient
        from tritonclient.utils import InferenceServerException

        column = np.array([t.encode("utf-8") for t in texts], dtype=np.object_).reshape(-1, 1)
        inp = grpcclient.InferInput(EMBED_INPUT, list(column.shape), "BYTES")
        inp.set_data_from_numpy(column)
        outputs = [grpcclient.InferRequestedOutput(EMBED_OUTPUT), grpcclient.InferRequestedOutput(EMBED_TOKENS)]
        try:
            result = await self._grpc.infer(
                model, [inp], outputs=outputs, request_id=request_id, client_timeout=self.timeout_s
            )
        except InferenceServerException as exc:
            status = str(exc.status() or "")
            code = 503 if status.endswith(("UNAVAILABLE", "DEADLINE_EXCEEDED")) else None
            raise upstream_error(exc.message() or str(exc), code) from exc
        return result.as_numpy(EMBED_OUTPUT), result.as_numpy(EMBED_TOKENS).reshape(-1)

    async def _embed_http(self, model: str, texts: list[str], request_id: str) -> tuple[np.ndarray, np.ndarray]:
        assert self._session is not None
        payload = {
            "id": request_id,
            "inputs": [{"name": EMBED_INPUT, "datatype": "BYTES", "shape": [len(texts), 1], "data": texts}],
            "outputs": [{"name": EMBED_OUTPUT}, {"name": EMBED_TOKENS}],
        }
        try:
            async with self._session.post(f"{self.url}/v2/models/{model}/infer", data=orjson.dumps(payload)) as resp:
                if resp.status != 200:
                    raise await self._http_error(resp)
                body = orjson.loads(await resp.read())
        except (aiohttp.ClientError, OSError) as exc:
            raise upstream_error(f"cannot reach Triton at {self.url}: {exc}", 503) from exc
        out = {o["name"]: o for o in body["outputs"]}
        vectors = np.asarray(out[EMBED_OUTPUT]["data"], dtype=np.float32).reshape(out[EMBED_OUTPUT]["shape"])
        counts = np.asarray(out[EMBED_TOKENS]["data"], dtype=np.int64).reshape(-1)
        return vectors, counts

    # --- health and load -------------------------------------------------------------------------

    async def model_ready(self, model: str) -> bool:
        """Whether Triton reports ``model`` ready on this endpoint."""
        await self._ready()
        try:
            if self.protocol == "grpc":
                return bool(await asyncio.wait_for(self._grpc.is_model_ready(model), self.health_timeout_s))
            return await self._http_ok(f"/v2/models/{model}/ready")
        except Exception:
            return False

    async def _http_ok(self, path: str) -> bool:
        assert self._session is not None
        try:
            async with self._session.get(
                f"{self.url}{path}", timeout=aiohttp.ClientTimeout(total=self.health_timeout_s)
            ) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
            return False

    async def health(self) -> bool:
        """True when this endpoint's models can take requests.

        With ``models`` set: the server is live and each of them is ready. (Triton's server-wide
        ``/v2/health/ready`` turns false while *any* model loads or unloads, which would take one
        model's pool down for another's maintenance.) Without: ``/v2/health/ready``.
        """
        await self._ready()
        if not self.models:
            return await self._http_ok("/v2/health/ready")
        if not await self._http_ok("/v2/health/live"):
            return False
        for model in self.models:
            if not await self.model_ready(model):
                return False
        return True

    async def signals(self) -> TritonSignals | None:
        """Scrape Triton's Prometheus metrics (None without ``metrics_url`` or when unreachable)."""
        if not self.metrics_url:
            return None
        await self._ready()
        assert self._session is not None
        try:
            async with self._session.get(
                self.metrics_url, timeout=aiohttp.ClientTimeout(total=self.health_timeout_s)
            ) as resp:
                if resp.status != 200:
                    return None
                text = await resp.text()
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
            return None
        return self._parse_signals(text)

    def _parse_signals(self, text: str) -> TritonSignals:
        from prometheus_client.parser import text_string_to_metric_families

        wanted = {
            "nv_inference_pending_request_count": "pending",
            "noor_model_inflight_requests": "inflight",
            "nv_inference_queue_duration_us": "queue_us",
            "nv_inference_compute_infer_duration_us": "compute_us",
            "nv_inference_request_success": "success",
        }
        totals = dict.fromkeys(wanted.values(), 0.0)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = wanted.get(sample.name) or wanted.get(sample.name.removesuffix("_total"))
                if key is None:
                    continue
                if self.models and sample.labels.get("model") not in self.models:
                    continue
                totals[key] += sample.value
        signals = TritonSignals(running=totals["inflight"], waiting=totals["pending"])
        previous, self._last_counters = self._last_counters, {k: totals[k] for k in ("queue_us", "compute_us", "success")}
        if previous is not None:
            done = totals["success"] - previous["success"]
            if done > 0:
                signals.requests = done
                signals.queue_ms = (totals["queue_us"] - previous["queue_us"]) / done / 1000.0
                signals.compute_ms = (totals["compute_us"] - previous["compute_us"]) / done / 1000.0
        return signals


__all__ = ["StreamError", "TritonBackend", "TritonSignals", "TritonStream", "upstream_error"]
