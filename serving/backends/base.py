"""The one interface every engine adapter implements.

The gateway speaks OpenAI to its clients and hands each request to a ``Backend`` bound to one engine
endpoint. A backend translates to the engine's own protocol (vLLM already speaks OpenAI; Triton speaks
its tensor protocol) and back, and always reports the engine's own token usage, because billing rests
on it. Backends know nothing of tenants, keys or limits.

Streams are yielded as ``StreamChunk``: the JSON of one OpenAI chunk *with* the engine's running usage
in it, plus that usage parsed. The relay in the router decides what the client sees (it strips usage the
client did not ask for), so every backend produces the same shape.
"""

from __future__ import annotations

import abc
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Literal

RequestKind = Literal["chat", "completion", "embedding"]
UsageSource = Literal["engine", "tokenizer"]


@dataclass(slots=True)
class Usage:
    """Token counts of one request, as the engine reported them (or, failing that, our tokenizer)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    source: UsageSource = "engine"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class UpstreamRequest:
    """An OpenAI request on its way to one engine.

    ``body`` is the client's JSON object with ``model`` already rewritten to the engine's model name;
    streaming requests already ask the engine for usage (``stream_options``). ``public_model`` is the
    name the client used, for adapters that build the OpenAI response themselves (Triton): the client
    sees its own name back, whatever the engine calls the model.
    """

    kind: RequestKind
    body: dict
    stream: bool
    request_id: str
    headers: dict[str, str] = field(default_factory=dict)
    public_model: str | None = None


@dataclass(slots=True)
class UpstreamResponse:
    """A complete (non-streamed) answer: the body to return as-is, and the usage read from it."""

    status: int
    body: bytes
    usage: Usage | None
    content_type: str = "application/json"


class StreamChunk:
    """One OpenAI stream chunk (JSON bytes, no SSE framing) and the running usage it carries.

    ``usage_only`` marks the closing chunk with empty ``choices`` that exists only to carry usage.
    The usage is given, or read from ``data`` by ``read_usage`` when first asked for: every chunk of a
    stream carries the running usage, the relay needs only the last one's, so the others are never
    parsed (a few µs per chunk). ``carries_usage`` says, without parsing, whether there is any.
    """

    __slots__ = ("data", "usage_only", "carries_usage", "_usage", "_read")

    def __init__(
        self, data: bytes, usage: Usage | None = None, usage_only: bool = False, *,
        read_usage: Callable[[bytes], Usage | None] | None = None,
    ) -> None:
        self.data = data
        self.usage_only = usage_only
        self._usage = usage
        self._read = read_usage
        self.carries_usage = usage is not None or read_usage is not None

    @property
    def usage(self) -> Usage | None:
        if self._read is not None:
            self._usage, self._read = self._read(self.data), None
        return self._usage

    def __repr__(self) -> str:
        return f"StreamChunk({self.data!r}, usage_only={self.usage_only})"


class UpstreamError(Exception):
    """The engine refused or failed the request before any byte reached the client.

    ``retryable`` says whether another endpoint could serve it (connection refused, 5xx from a sick
    engine), as opposed to the request itself being wrong (4xx), which is returned to the client as-is.
    """

    def __init__(self, status: int, body: bytes, *, retryable: bool, message: str = "") -> None:
        super().__init__(message or body[:200].decode(errors="replace"))
        self.status = status
        self.body = body
        self.retryable = retryable


class StreamError(Exception):
    """The engine failed in the middle of a stream, after chunks already reached the client.

    The relay turns it into an OpenAI error event; the tokens generated so far are still billed.
    ``usage`` is the usage up to the failure where the adapter knows it better than the last chunk did.
    """

    def __init__(
        self, message: str, *, status: int = 500, error_type: str = "server_error", usage: Usage | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_type = error_type
        self.usage = usage


class UpstreamStream(abc.ABC):
    """An open stream from an engine. Iterate for chunks; ``aclose`` aborts the engine's request.

    Closing before the end must make the engine stop generating (vLLM aborts a request whose HTTP
    connection closes; Triton cancels the gRPC stream), so the batch slot is freed at once.
    """

    @abc.abstractmethod
    def __aiter__(self) -> AsyncIterator[StreamChunk]: ...

    @abc.abstractmethod
    async def aclose(self) -> None: ...


@dataclass(slots=True)
class EngineSignals:
    """Load as the engine itself reports it (scraped from its metrics), for admission and picking."""

    running: float = 0.0
    waiting: float = 0.0
    kv_cache_usage: float = 0.0
    prefix_cache_queries: float = 0.0
    prefix_cache_hits: float = 0.0
    scraped_at: float = field(default_factory=time.monotonic)

    def age(self, now: float | None = None) -> float:
        return (now if now is not None else time.monotonic()) - self.scraped_at


class Backend(abc.ABC):
    """An adapter for one engine endpoint (one process serving one or more models)."""

    #: short engine name used in usage records and metrics ("vllm", "triton", "sim").
    engine: str = "unknown"

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    async def start(self) -> None:
        """Open connection pools. Called once before the first request."""

    async def close(self) -> None:
        """Release connection pools."""

    @abc.abstractmethod
    async def complete(self, request: UpstreamRequest) -> UpstreamResponse:
        """Serve a non-streamed chat/completion/embedding request. Raises ``UpstreamError``."""

    @abc.abstractmethod
    async def stream(self, request: UpstreamRequest) -> UpstreamStream:
        """Open a streamed chat/completion request. Raises ``UpstreamError`` before the first chunk."""

    @abc.abstractmethod
    async def health(self) -> bool:
        """True when the endpoint can take requests now."""

    async def signals(self) -> EngineSignals | None:
        """The engine's own load signals, or None where it exports none."""
        return None
