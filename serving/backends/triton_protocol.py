"""OpenAI requests in, Triton vLLM-backend tensors out, and back: the pure half of the Triton adapter.

Nothing here does I/O, so the translation is tested without a server. The tensor protocol is the one
NVIDIA's vLLM backend defines (and ``models/triton/smollm2`` speaks): ``text_input``, ``stream``,
``sampling_parameters`` (JSON), ``exclude_input_in_output`` -> ``text_output``, with the r24.12
additional outputs ``finish_reason``, ``num_input_tokens`` and ``num_output_tokens`` (per response:
the tokens that response adds) asked for through ``return_*`` inputs.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from serving.backends.base import RequestKind, Usage

PromptRenderer = Callable[[list[dict]], str]
TokenCounter = Callable[[str], int]

# OpenAI fields copied into vLLM's sampling parameters under the same name.
_PASSTHROUGH = (
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    # vLLM's extensions to the OpenAI API, which its OpenAI server accepts too.
    "top_k",
    "min_p",
    "min_tokens",
    "repetition_penalty",
    "ignore_eos",
    "stop_token_ids",
    "skip_special_tokens",
    "include_stop_str_in_output",
)


class BadRequest(ValueError):
    """The OpenAI request cannot be served by this engine (returned to the client as a 400)."""


def chatml(messages: list[dict]) -> str:
    """Render chat messages as ChatML with the assistant turn opened (SmolLM2's and Qwen's format).

    The router normally supplies the served model's own chat template; this is the fallback.
    """
    parts = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        parts.append(f"<|im_start|>{message.get('role', 'user')}\n{content or ''}<|im_end|>\n")
    parts.append("<|im_start|>assistant\n")
    return "".join(parts)


@dataclass(slots=True)
class GenerateCall:
    """One generation request in the vLLM backend's terms."""

    prompt: str
    sampling: dict[str, Any]
    stream: bool

    def sampling_json(self) -> str:
        return orjson.dumps(self.sampling).decode()


def sampling_parameters(body: Mapping[str, Any], *, default_max_tokens: int | None = None) -> dict[str, Any]:
    """The ``sampling_parameters`` JSON for an OpenAI chat/completions body."""
    n = body.get("n")
    if n not in (None, 1):
        raise BadRequest("n > 1 is not supported by this engine")
    if body.get("best_of") not in (None, 1):
        raise BadRequest("best_of is not supported by this engine")
    params: dict[str, Any] = {k: body[k] for k in _PASSTHROUGH if body.get(k) is not None}
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = default_max_tokens
    if max_tokens is not None:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise BadRequest("max_tokens must be a positive integer")
        params["max_tokens"] = max_tokens
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else list(stop)
        if not all(isinstance(s, str) for s in stops):
            raise BadRequest("stop must be a string or a list of strings")
        if stops:
            params["stop"] = stops
    return params


def generate_call(
    kind: RequestKind,
    body: Mapping[str, Any],
    *,
    stream: bool,
    render: PromptRenderer = chatml,
    default_max_tokens: int | None = None,
) -> GenerateCall:
    """Translate a chat or completions body into the prompt text and sampling parameters."""
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages must be a non-empty list")
        prompt = render(messages)
    elif kind == "completion":
        prompt = body.get("prompt")
        if isinstance(prompt, list):
            if len(prompt) != 1 or not isinstance(prompt[0], str):
                raise BadRequest("this engine takes one text prompt per request")
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise BadRequest("prompt must be a string")
        if body.get("echo"):
            raise BadRequest("echo is not supported by this engine")
    else:
        raise BadRequest(f"{kind} is not a generation request")
    return GenerateCall(prompt=prompt, sampling=sampling_parameters(body, default_max_tokens=default_max_tokens), stream=stream)


def openai_finish_reason(raw: str | None) -> str | None:
    """vLLM's finish reason (``str(None)`` on unfinished responses) in OpenAI's words."""
    if raw is None or raw in ("", "None", "null"):
        return None
    return raw


def infer_finish_reason(reported: str | None, completion_tokens: int, max_tokens: int | None) -> str:
    """The finish reason, inferred when the engine reports none (vLLM backends before r24.12)."""
    if reported:
        return reported
    return "length" if max_tokens is not None and completion_tokens >= max_tokens else "stop"


@dataclass(slots=True)
class Piece:
    """What one Triton response carried."""

    text: str = ""
    finish_reason: str | None = None
    num_input_tokens: int | None = None
    num_output_tokens: int | None = None
    final: bool = False


@dataclass(slots=True)
class UsageMeter:
    """Running usage of one generation: the engine's counts where it reports them, else our tokenizer's."""

    prompt: str
    count_tokens: TokenCounter | None = None
    prompt_tokens: int | None = None
    completion_tokens: int = 0
    engine_counts: bool = True
    _text: list[str] = field(default_factory=list)

    def add(self, piece: Piece) -> None:
        if piece.num_input_tokens is not None and not self.prompt_tokens:
            self.prompt_tokens = piece.num_input_tokens
        if piece.num_output_tokens is None:
            self.engine_counts = False
        if self.engine_counts:
            self.completion_tokens += piece.num_output_tokens or 0
        elif self.count_tokens is not None and piece.text:
            # Approximate while streaming (deltas counted apart); ``usage(final=True)`` recounts.
            self.completion_tokens += self.count_tokens(piece.text)
        self._text.append(piece.text)

    def usage(self, *, final: bool = False) -> Usage | None:
        if self.engine_counts and self.prompt_tokens is not None:
            return Usage(self.prompt_tokens, self.completion_tokens, "engine")
        if self.count_tokens is None:
            return None
        completion = self.count_tokens("".join(self._text)) if final else self.completion_tokens
        if final:
            self.completion_tokens = completion
        return Usage(self.count_tokens(self.prompt) if self.prompt_tokens is None else self.prompt_tokens, completion, "tokenizer")


def usage_json(usage: Usage | None) -> dict[str, int] | None:
    if usage is None:
        return None
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


@dataclass(slots=True)
class OpenAIShaper:
    """Builds the OpenAI JSON of one chat/completions answer, chunk by chunk or whole.

    Chunks follow vLLM's OpenAI server: for chat a first chunk with the assistant role, content chunks
    (the last one carrying ``finish_reason``), then one chunk with empty ``choices`` and the usage.
    Every chunk carries the running usage; the gateway's relay strips what the client did not ask for.
    """

    kind: RequestKind
    model: str
    request_id: str
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def id(self) -> str:
        return f"{'chatcmpl' if self.kind == 'chat' else 'cmpl'}-{self.request_id}"

    @property
    def chunk_object(self) -> str:
        return "chat.completion.chunk" if self.kind == "chat" else "text_completion"

    def _chunk(self, choices: list[dict], usage: Usage | None) -> bytes:
        body: dict[str, Any] = {
            "id": self.id,
            "object": self.chunk_object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            body["usage"] = usage_json(usage)
        return orjson.dumps(body)

    def role_chunk(self, usage: Usage | None = None) -> bytes:
        return self._chunk(
            [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}],
            usage,
        )

    def content_chunk(self, text: str, finish_reason: str | None, usage: Usage | None) -> bytes:
        if self.kind == "chat":
            choice = {"index": 0, "delta": {"content": text} if text or not finish_reason else {}, "logprobs": None}
        else:
            choice = {"index": 0, "text": text, "logprobs": None}
        choice["finish_reason"] = finish_reason
        return self._chunk([choice], usage)

    def usage_chunk(self, usage: Usage | None) -> bytes:
        return self._chunk([], usage)

    def response(self, text: str, finish_reason: str | None, usage: Usage | None) -> bytes:
        if self.kind == "chat":
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
            obj = "text_completion"
        body = {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage_json(usage),
        }
        return orjson.dumps(body)


def embedding_inputs(body: Mapping[str, Any]) -> list[str]:
    """The texts of an OpenAI embeddings body (token-id inputs are not supported)."""
    raw = body.get("input")
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise BadRequest("input must be a string or a non-empty list of strings")
    if body.get("encoding_format") not in (None, "float", "base64"):
        raise BadRequest("encoding_format must be 'float' or 'base64'")
    return texts


def embeddings_response(
    model: str, vectors: np.ndarray, token_counts: np.ndarray, *, encoding_format: str | None = None
) -> tuple[bytes, Usage]:
    """The OpenAI embeddings list for ``vectors`` (one row per input) and its usage."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if encoding_format == "base64":
        data = [
            {"object": "embedding", "index": i, "embedding": base64.b64encode(row.tobytes()).decode()}
            for i, row in enumerate(vectors)
        ]
    else:
        data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(vectors)]
    prompt_tokens = int(np.asarray(token_counts).sum())
    usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=0, source="engine")
    body = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), usage


def error_body(message: str, *, type_: str = "invalid_request_error", code: str | int | None = None) -> bytes:
    """An OpenAI error object."""
    return orjson.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}})
