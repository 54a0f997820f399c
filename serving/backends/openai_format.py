"""Reading the few things the gateway needs out of OpenAI-shaped JSON, without parsing all of it.

Every streamed chunk passes through here, so the common case (vLLM puts ``usage`` last in a chunk,
as its pydantic models serialise fields in declaration order) is handled by slicing bytes; anything
unexpected falls back to a full parse, so the fast path can never give a wrong answer, only a slower one.
"""

from __future__ import annotations

import orjson

from serving.backends.base import Usage

_USAGE_KEY = b'"usage":'
_EMPTY_CHOICES = b'"choices":[]'


def usage_from_obj(obj: object) -> Usage | None:
    """``Usage`` from a parsed ``usage`` object (None/absent → None)."""
    if not isinstance(obj, dict):
        return None
    return Usage(
        prompt_tokens=int(obj.get("prompt_tokens") or 0),
        completion_tokens=int(obj.get("completion_tokens") or 0),
    )


def usage_from_body(body: bytes) -> Usage | None:
    """Usage of a complete (non-streamed) response body."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return usage_from_obj(obj.get("usage")) if isinstance(obj, dict) else None


def usage_from_chunk(data: bytes) -> Usage | None:
    """Running usage carried by one stream chunk, if any."""
    i = data.rfind(_USAGE_KEY)
    if i < 0:
        return None
    tail = data[i + len(_USAGE_KEY) :]
    if tail.startswith(b"null"):
        return None
    if tail.endswith(b"}}"):
        try:
            return usage_from_obj(orjson.loads(tail[:-1]))
        except orjson.JSONDecodeError:
            pass
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return usage_from_obj(obj.get("usage")) if isinstance(obj, dict) else None


def carries_usage(data: bytes) -> bool:
    """Whether a chunk has a non-null ``usage`` (found without parsing it; ``usage_from_chunk`` reads it)."""
    i = data.rfind(_USAGE_KEY)
    return i >= 0 and not data.startswith(b"null", i + len(_USAGE_KEY))


def is_usage_only(data: bytes) -> bool:
    """True for the closing chunk that has no choices and exists only to carry usage."""
    return _EMPTY_CHOICES in data


def strip_usage(data: bytes) -> bytes:
    """The chunk without its ``usage`` field (for clients that did not ask for running usage)."""
    i = data.rfind(b',' + _USAGE_KEY)
    if i < 0:
        return data
    if data.endswith(b"}}") or data.endswith(b"null}"):
        candidate = data[:i] + b"}"
        # Cheap guard: the cut must leave the usage object as the whole tail.
        tail = data[i + 1 + len(_USAGE_KEY) : -1]
        if tail == b"null" or (tail.startswith(b"{") and tail.count(b"{") == 1):
            return candidate
    obj = orjson.loads(data)
    obj.pop("usage", None)
    return orjson.dumps(obj)
