"""Stage 2: is this a request the engine can serve, and may this key ask it?

Everything that can be refused is refused here, before a limit is reserved or an engine is called:
malformed JSON, missing fields, unknown models (404), models outside the key's scope (403),
``max_tokens`` beyond the context, and prompts too long for it — counted with a tiktoken encoding built
from the model's own tokenizer.json. Streamed requests are rewritten to always ask the engine for usage,
because billing rests on the engine's own counts.
"""

from __future__ import annotations

import functools
from typing import Protocol

import orjson

from models.catalog import Catalog
from router.context import RequestContext
from router.errors import bad_request, model_forbidden, model_not_found
from router.store.base import Identity

class PromptCounter(Protocol):
    """Counts a request's prompt tokens with the model's tokenizer (router/prompt_tokens.py)."""

    def __call__(self, model: str, body: dict) -> int | None:
        """The exact count, or None when no tokenizer is known for ``model``."""

    def upper_bound(self, model: str, body: dict, body_bytes: int) -> int | None:
        """A count the prompt cannot exceed, found without tokenizing (None: no such bound)."""


def parse_json(raw: bytes) -> dict:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"We could not parse the JSON body of your request: {exc}.") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    return body


def _require(body: dict, field: str, types: type | tuple[type, ...], what: str) -> object:
    value = body.get(field)
    if value is None:
        raise bad_request(f"Missing required parameter: '{field}'.", param=field, code="missing_required_parameter")
    if not isinstance(value, types) or isinstance(value, bool):
        raise bad_request(f"Invalid type for '{field}': expected {what}.", param=field, code="invalid_type")
    return value


def _check_messages(messages: list) -> None:
    if not messages:
        raise bad_request("'messages' must contain at least one message.", param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise bad_request(f"Invalid message at messages[{i}]: each message needs a 'role'.", param=f"messages[{i}]")


def _check_prompt(prompt: object) -> None:
    ok = isinstance(prompt, str) or (
        isinstance(prompt, list) and prompt and (all(isinstance(p, str) for p in prompt) or all(isinstance(p, int) for p in prompt))
    )
    if not ok:
        raise bad_request("'prompt' must be a string, a list of strings or a list of token ids.", param="prompt")


def _max_tokens(body: dict) -> int | None:
    for field in ("max_completion_tokens", "max_tokens"):
        value = body.get(field)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise bad_request(f"Invalid '{field}': must be an integer of at least 1.", param=field, code="invalid_value")
        return value
    return None


def _count(count_prompt: PromptCounter, model: str, body: dict) -> int:
    return count_prompt(model, body) or 0


def validate(
    ctx: RequestContext, identity: Identity, catalog: Catalog, count_prompt: PromptCounter, *,
    body_bytes: int | None = None,
) -> None:
    """Check ``ctx.body`` and fill the context; raises ``OpenAIError``.

    ``body_bytes`` (the raw body's length) lets the context-length check skip tokenizing when even
    the largest prompt such a body can hold fits; the count is then left to ``ctx.prompt_tokens``'s
    first reader, if any.
    """
    body = ctx.body
    model_name = _require(body, "model", str, "a string")
    spec = catalog.models.get(model_name)  # type: ignore[arg-type]
    if spec is None:
        raise model_not_found(model_name)  # type: ignore[arg-type]
    if not identity.allows(spec.name):
        raise model_forbidden(spec.name)
    expected = "embedding" if ctx.kind == "embedding" else "chat"
    if spec.kind != expected:
        raise bad_request(f"The model `{spec.name}` does not support this endpoint.", param="model", code="unsupported_model")

    if ctx.kind == "chat":
        _check_messages(_require(body, "messages", list, "an array of messages"))  # type: ignore[arg-type]
    elif ctx.kind == "completion":
        _check_prompt(_require(body, "prompt", (str, list), "a string or an array"))
    else:
        _require(body, "input", (str, list), "a string or an array")

    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("Invalid type for 'stream': expected a boolean.", param="stream", code="invalid_type")
    if stream and ctx.kind == "embedding":
        raise bad_request("Embeddings cannot be streamed.", param="stream")

    ctx.model = spec
    ctx.identity = identity
    ctx.stream = stream
    requested = _max_tokens(body) if ctx.kind != "embedding" else 0
    if requested is not None and requested > spec.context_length:
        raise bad_request(
            f"max_tokens is too large: {requested}. This model supports at most {spec.context_length} completion tokens.",
            param="max_tokens", code="invalid_value",
        )
    ctx.count_prompt = functools.partial(_count, count_prompt, spec.name, body)
    ctx.max_tokens = requested  # None: whatever the prompt leaves of the context
    bound = ctx.prompt_bound = count_prompt.upper_bound(spec.name, body, body_bytes) if body_bytes is not None else None
    if bound is None or bound >= spec.context_length or bound + (requested or 0) > spec.context_length:
        prompt_tokens = ctx.prompt_tokens  # counted now
        if prompt_tokens >= spec.context_length or prompt_tokens + (requested or 0) > spec.context_length:
            raise bad_request(
                f"This model's maximum context length is {spec.context_length} tokens. However, you requested "
                f"{prompt_tokens + (requested or 0)} tokens ({prompt_tokens} in the messages, {requested or 0} in the "
                "completion). Please reduce the length of the messages or completion.",
                param="messages" if ctx.kind == "chat" else "prompt", code="context_length_exceeded",
            )

    body["model"] = spec.upstream_name
    if stream:
        options = body.get("stream_options")
        options = options if isinstance(options, dict) else {}
        ctx.include_usage = bool(options.get("include_usage"))
        ctx.continuous_usage = bool(options.get("continuous_usage_stats"))
        body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
