"""The state one request carries down the path and back: filled in stage by stage, read by metering."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from serving.backends.base import RequestKind, Usage

if TYPE_CHECKING:
    from models.catalog import ModelSpec
    from router.store.base import Identity
    from serving.endpoint import Endpoint


@dataclass(slots=True, eq=False)
class RequestContext:
    request_id: str
    kind: RequestKind
    body: dict
    started: float = field(default_factory=time.perf_counter)
    # filled by validation (prompt_tokens and max_tokens are properties, below)
    model: ModelSpec | None = None
    stream: bool = False
    count_prompt: Callable[[], int] | None = field(default=None, repr=False)
    _prompt_tokens: int | None = field(default=None, init=False, repr=False)
    prompt_bound: int | None = None  # more tokens than the prompt can have, known without counting
    _max_tokens: int | None = field(default=0, init=False, repr=False)
    include_usage: bool = False  # the client asked for the closing usage chunk
    continuous_usage: bool = False  # the client asked for running usage on every chunk
    # filled by authentication
    identity: Identity | None = None
    # filled by admission / picking / the upstream call
    endpoint: Endpoint | None = None
    prompt_blocks: list[int] | None = None  # chained block hashes of the prompt (prefix affinity)
    on_first_token: Callable[[], None] | None = None  # set by admission that paces prefills
    reservation: object = None
    first_token_at: float | None = None
    usage: Usage | None = None
    status: int = 200
    outcome: str = "ok"
    headers: dict[str, str] = field(default_factory=dict)
    # Stage timestamps (perf_counter) for telemetry: each stage stamps its own; router/telemetry turns
    # them into latencies, spans and the access line after the request, never while it runs.
    authed_at: float | None = None
    validated_at: float | None = None
    reserved_at: float | None = None
    queued_at: float | None = None  # admission began
    dequeued_at: float | None = None  # left the admission queue (a queueing admission stamps it)
    admitted_at: float | None = None  # placed on an endpoint
    upstream_at: float | None = None  # engine request sent (last attempt)
    opened_at: float | None = None  # engine answered (status + headers): time to first byte
    last_token_at: float | None = None
    chunks: int = 0
    relay_s: float = 0.0  # gateway time spent relaying chunks (parse, strip, send)
    last_chunk: bytes | None = None  # last content chunk / full body: finish reasons, read only if traced
    error: Exception | None = None  # the refusal or failure the client was answered with
    trace: object = None  # router.telemetry.tracing.RequestTrace while the request is traced
    traceparent: str | None = None  # the client's W3C trace context header, continued when tracing is on
    capture: list[bytes] | None = None  # chunks kept only for tenants under content debugging

    @property
    def prompt_tokens(self) -> int:
        """Our own count of the prompt's tokens, for limits and scheduling — counted on first read.

        Counting costs tens of microseconds per request, so validation leaves it to whoever needs it
        (a token limit, a scheduler) whenever the context-length check can be decided without it.
        """
        if self._prompt_tokens is None:
            self._prompt_tokens = self.count_prompt() if self.count_prompt is not None else 0
        return self._prompt_tokens

    @prompt_tokens.setter
    def prompt_tokens(self, value: int) -> None:
        self._prompt_tokens = value

    @property
    def prompt_counted(self) -> bool:
        return self._prompt_tokens is not None

    @property
    def requested_max_tokens(self) -> int | None:
        """The client's ``max_tokens`` (None: it set none)."""
        return self._max_tokens

    @property
    def max_tokens(self) -> int:
        """The most tokens the request may generate: the client's ``max_tokens``, else (None was set)
        whatever room the prompt leaves in the model's context."""
        if self._max_tokens is None:
            return self.model.context_length - self.prompt_tokens if self.model is not None else 0
        return self._max_tokens

    @max_tokens.setter
    def max_tokens(self, value: int | None) -> None:
        self._max_tokens = value

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000.0

    def ttft_ms(self) -> float | None:
        return None if self.first_token_at is None else (self.first_token_at - self.started) * 1000.0
