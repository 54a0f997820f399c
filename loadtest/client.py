"""One chat request as a real client makes it: the official ``openai`` SDK, timed token by token.

Streamed requests ask for ``stream_options.include_usage`` so the token counts come from the engine
(through the gateway), exactly what the ledger bills. What is timed:

- TTFT: from sending the request to the first chunk that carries generated content;
- ITL: the gaps between successive content chunks (what a reader sees stutter);
- TPOT: ``(e2e - TTFT) / (completion_tokens - 1)``, the usual per-token pace after the first;
- e2e: from sending to the end of the stream (or the whole body when not streamed).

Errors are sorted into kinds a capacity report can act on: ``http_429`` (limits), ``http_5xx`` (no
capacity, engine failures), ``timeout``, ``connection``, ``stream_error`` (an error event mid-stream),
``no_usage`` (the stream ended without its usage chunk), ``client_overload`` (the load generator's own
concurrency cap was hit: the run was offered more than it could carry). SDK retries are off: each
attempt is one request in the report and one record in the ledger.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import openai

from loadtest.mix import RequestSpec


@dataclass(slots=True)
class RequestResult:
    """One arrival: how it was tagged when it arrived and what became of it."""

    seq: int
    tenant: str
    step: int
    phase: str  # warmup | measure
    rate: float
    stream: bool
    max_tokens: int
    system_prompt: int | None = None
    started_at: float = 0.0  # unix time of sending
    e2e_ms: float | None = None
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    itl_ms: list[float] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    request_id: str | None = None
    status: int | None = None
    error: str | None = None
    error_detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["itl_ms"] = [round(x, 2) for x in self.itl_ms]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RequestResult:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def make_client(base_url: str, api_key: str, timeout_s: float) -> openai.OpenAI:
    """An SDK client as a tenant's application would hold one (its own key and connection pool)."""
    return openai.OpenAI(base_url=base_url.rstrip("/") + "/v1", api_key=api_key, max_retries=0, timeout=timeout_s)


def call_chat(
    client: openai.OpenAI, model: str, spec: RequestSpec, result: RequestResult, *,
    ignore_eos: bool = True, temperature: float | None = None,
) -> RequestResult:
    """Send ``spec`` and fill ``result`` in place (also returned). Never raises for request failures."""
    extra: dict = {"ignore_eos": True} if ignore_eos else {}
    kwargs: dict = {"model": model, "messages": spec.messages, "max_tokens": spec.max_tokens, "extra_body": extra}
    if temperature is not None:
        kwargs["temperature"] = temperature
    result.started_at = time.time()
    t0 = time.perf_counter()
    try:
        if spec.stream:
            _streamed(client, kwargs, result, t0)
        else:
            raw = client.chat.completions.with_raw_response.create(**kwargs)
            result.request_id = raw.headers.get("x-request-id")
            result.status = raw.status_code
            completion = raw.parse()
            result.e2e_ms = (time.perf_counter() - t0) * 1000
            if completion.usage is None:
                _fail(result, "no_usage", "response without usage")
            else:
                result.prompt_tokens = completion.usage.prompt_tokens
                result.completion_tokens = completion.usage.completion_tokens
    except openai.APIStatusError as exc:
        result.status = exc.status_code
        result.request_id = result.request_id or exc.request_id
        _fail(result, f"http_{exc.status_code}", _short(exc), t0)
    except openai.APITimeoutError as exc:
        _fail(result, "timeout", _short(exc), t0)
    except openai.APIConnectionError as exc:
        _fail(result, "connection", _short(exc), t0)
    except openai.APIError as exc:  # an error event inside a stream that had started fine
        _fail(result, "stream_error", _short(exc), t0)
    except Exception as exc:  # noqa: BLE001 - a load generator reports, it does not crash
        _fail(result, "client_" + type(exc).__name__, str(exc)[:200], t0)
    return result


def _streamed(client: openai.OpenAI, kwargs: dict, result: RequestResult, t0: float) -> None:
    stream = client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    result.request_id = stream.response.headers.get("x-request-id")
    result.status = stream.response.status_code
    first: float | None = None
    last = 0.0
    usage = None
    with stream:
        for chunk in stream:
            now = time.perf_counter()
            if chunk.usage is not None:
                usage = chunk.usage
            if chunk.choices and _has_content(chunk.choices[0].delta):
                if first is None:
                    first = now
                else:
                    result.itl_ms.append((now - last) * 1000)
                last = now
    end = time.perf_counter()
    result.e2e_ms = (end - t0) * 1000
    if first is not None:
        result.ttft_ms = (first - t0) * 1000
    if usage is None:
        _fail(result, "no_usage", "stream ended without a usage chunk")
        return
    result.prompt_tokens = usage.prompt_tokens
    result.completion_tokens = usage.completion_tokens
    if result.ttft_ms is not None and usage.completion_tokens > 1:
        result.tpot_ms = (result.e2e_ms - result.ttft_ms) / (usage.completion_tokens - 1)


def _has_content(delta) -> bool:
    return bool(delta.content or getattr(delta, "reasoning_content", None) or delta.tool_calls)


def _fail(result: RequestResult, kind: str, detail: str, t0: float | None = None) -> None:
    result.error, result.error_detail = kind, detail
    if t0 is not None and result.e2e_ms is None:
        result.e2e_ms = (time.perf_counter() - t0) * 1000


def _short(exc: openai.APIError) -> str:
    code = getattr(exc, "code", None)
    msg = getattr(exc, "message", None) or str(exc)
    return (f"[{code}] " if code else "") + msg[:200]
