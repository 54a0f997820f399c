"""Prompt and completion text, for the tenants an operator put under content debugging — nobody else.

Telemetry never reads a request's text unless ``settings.telemetry.capture_content_tenants`` names its
tenant; then the prompt and the completion go into the request's span (``gen_ai.input.messages``,
``gen_ai.output.messages``) and its access line. The relay keeps the raw chunks only for such requests.
"""

from __future__ import annotations

import orjson

from router.context import RequestContext


def prompt_json(ctx: RequestContext) -> str:
    """The request's input as the client sent it (messages, prompt or input), as JSON."""
    body = ctx.body
    for field in ("messages", "prompt", "input"):
        if field in body:
            return orjson.dumps(body[field]).decode()
    return ""


def completion_text(ctx: RequestContext) -> str:
    """The text the engine produced, joined from the captured chunks or read from the full body."""
    if ctx.stream:
        parts: list[str] = []
        for data in ctx.capture or ():
            parts.extend(_choice_texts(data, "delta"))
        return "".join(parts)
    return "".join(_choice_texts(ctx.last_chunk, "message")) if ctx.last_chunk else ""


def _choice_texts(data: bytes, key: str) -> list[str]:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return []
    out = []
    for choice in obj.get("choices") or ():
        part = choice.get(key) or {}
        text = part.get("content") if isinstance(part, dict) else None
        if text is None:
            text = choice.get("text")
        if isinstance(text, str):
            out.append(text)
    return out


def finish_reasons(ctx: RequestContext) -> list[str]:
    """``finish_reason`` of each choice in the last content chunk (or the full body)."""
    if not ctx.last_chunk:
        return []
    try:
        obj = orjson.loads(ctx.last_chunk)
    except orjson.JSONDecodeError:
        return []
    if not isinstance(obj, dict):
        return []
    return [str(c["finish_reason"]) for c in obj.get("choices") or () if isinstance(c, dict) and c.get("finish_reason")]
