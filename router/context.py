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
    # filled by validation
    model: ModelSpec | None = None
    stream: bool = False
    prompt_tokens: int = 0  # our own count, for limits and the context-length check
    max_tokens: int = 0
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

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000.0

    def ttft_ms(self) -> float | None:
        return None if self.first_token_at is None else (self.first_token_at - self.started) * 1000.0
