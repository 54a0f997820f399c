"""What a limiter decided, as OpenAI says it: ``x-ratelimit-*`` headers, and a 429 its SDK understands.

Both limiters (Redis and in-process) return a ``Decision``; this module alone turns it into headers and
errors, so a client sees the same thing whichever limiter answered. OpenAI's headers, on every response:
``x-ratelimit-limit-requests``, ``x-ratelimit-remaining-requests``, ``x-ratelimit-reset-requests`` (time
until the window is empty again, as ``1s`` / ``6m0s`` / ``20ms``) and the same for ``-tokens``. A 429 adds
``retry-after`` (whole seconds) and ``retry-after-ms``, which the openai SDK reads to time its retry, and
``x-should-retry: false`` where waiting cannot help within a retry (a budget spent, a request larger than
the whole limit). Budgets, which OpenAI has no header for, use the same pattern with ``-budget``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from router.errors import OpenAIError

Reason = str  # requests | tokens | request_too_large | concurrency | budget


@dataclass(slots=True)
class Bucket:
    limit: int
    used: int
    reset_s: float

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)


@dataclass(slots=True)
class Decision:
    allowed: bool
    reason: Reason | None = None
    retry_after_s: float = 0.0
    cost: int = 0
    requests: Bucket | None = None
    tokens: Bucket | None = None
    concurrency: Bucket | None = None
    budget: Bucket | None = None

    def headers(self) -> dict[str, str]:
        h: dict[str, str] = {}
        for name, b in (("requests", self.requests), ("tokens", self.tokens), ("budget", self.budget)):
            if b is not None:
                h[f"x-ratelimit-limit-{name}"] = str(b.limit)
                h[f"x-ratelimit-remaining-{name}"] = str(b.remaining)
                h[f"x-ratelimit-reset-{name}"] = format_duration(b.reset_s)
        if not self.allowed:
            wait = max(self.retry_after_s, 0.001)
            h["retry-after"] = str(max(1, math.ceil(wait)))
            h["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
            if self.reason in ("budget", "request_too_large"):
                h["x-should-retry"] = "false"
        return h

    def error(self, tenant: str) -> OpenAIError:
        """The 429 for a refused request, with OpenAI's error types and codes."""
        wait = format_duration(self.retry_after_s)
        headers = self.headers()
        if self.reason == "budget" and self.budget is not None:
            b = self.budget
            return OpenAIError(
                429, f"Token budget of tenant '{tenant}' is spent for this period: Limit {b.limit}, Used {b.used}, "
                f"Requested {self.cost}. It resets in {wait}.",
                type="insufficient_quota", code="insufficient_quota", headers=headers,
            )
        if self.reason == "request_too_large" and self.tokens is not None:
            return OpenAIError(
                429, f"Request too large for tokens per min (TPM) of tenant '{tenant}': Limit {self.tokens.limit}, "
                f"Requested {self.cost} (prompt + max_tokens). Lower max_tokens or shorten the prompt.",
                type="tokens", code="rate_limit_exceeded", headers=headers,
            )
        if self.reason == "concurrency" and self.concurrency is not None:
            return OpenAIError(
                429, f"Too many concurrent requests for tenant '{tenant}': Limit {self.concurrency.limit}. "
                f"Please try again in {wait}.",
                type="requests", code="rate_limit_exceeded", headers=headers,
            )
        if self.reason == "tokens" and self.tokens is not None:
            t = self.tokens
            return OpenAIError(
                429, f"Rate limit reached for tenant '{tenant}' on tokens per min (TPM): Limit {t.limit}, Used {t.used}, "
                f"Requested {self.cost}. Please try again in {wait}.",
                type="tokens", code="rate_limit_exceeded", headers=headers,
            )
        r = self.requests
        return OpenAIError(
            429, f"Rate limit reached for tenant '{tenant}' on requests per min (RPM): Limit {r.limit if r else '?'}, "
            f"Used {r.used if r else '?'}, Requested 1. Please try again in {wait}.",
            type="requests", code="rate_limit_exceeded", headers=headers,
        )


def format_duration(seconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``1.5s``, ``6m0s``, ``2h3m0s``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{math.ceil(seconds * 10) / 10:g}s"
    s = math.ceil(seconds)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m}m{s}s" if h else f"{m}m{s}s"


def unavailable() -> OpenAIError:
    """Fail-closed: the limits store is away, so nothing is admitted (503, retry soon)."""
    return OpenAIError(
        503, "Rate limits cannot be checked right now (the limits store is unreachable); please retry shortly.",
        type="server_error", code="limits_unavailable", headers={"retry-after": "1"},
    )
