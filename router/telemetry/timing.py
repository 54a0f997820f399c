"""The latencies one request had, derived once from the stage timestamps it carries.

Stages only stamp ``time.perf_counter()`` on the ``RequestContext``; this is where those stamps become
the numbers metrics, spans and the access line report, after the request is over — so the request path
pays for a few clock reads, never for bookkeeping.
"""

from __future__ import annotations

from dataclasses import dataclass

from router.context import RequestContext


@dataclass(slots=True)
class Timings:
    """Seconds; None where the request never reached that point (or the number means nothing)."""

    total: float
    #: first content chunk − arrival; streams only (a non-streamed answer has no first token to see)
    ttft: float | None = None
    #: mean gap between output tokens after the first (OTel's time_per_output_token); streams only
    itl: float | None = None
    #: waiting for admission (zero without a queue)
    queue_wait: float | None = None
    #: gateway time before the engine call, queue wait excluded (auth, validation, limits, pick, retries)
    pre_upstream: float | None = None
    #: engine request sent → its status line and headers: the time to first byte
    upstream_ttfb: float | None = None
    #: gateway time spent relaying one chunk (mean over the stream)
    relay_per_chunk: float | None = None

    @classmethod
    def of(cls, ctx: RequestContext, now: float) -> Timings:
        t = cls(total=now - ctx.started)
        queued = ctx.queued_at
        if queued is not None:
            left = ctx.dequeued_at
            if left is None or left < queued:  # never left the queue: refused or cancelled while waiting
                left = ctx.admitted_at if ctx.admitted_at is not None else now
            t.queue_wait = left - queued
        if ctx.upstream_at is not None:
            t.pre_upstream = max(0.0, ctx.upstream_at - ctx.started - (t.queue_wait or 0.0))
            if ctx.opened_at is not None:
                t.upstream_ttfb = ctx.opened_at - ctx.upstream_at
        if ctx.stream and ctx.first_token_at is not None:
            t.ttft = ctx.first_token_at - ctx.started
            last = ctx.last_token_at
            tokens = ctx.usage.completion_tokens if ctx.usage is not None else ctx.chunks
            if last is not None and tokens > 1 and last > ctx.first_token_at:
                t.itl = (last - ctx.first_token_at) / (tokens - 1)
        if ctx.chunks:
            t.relay_per_chunk = ctx.relay_s / ctx.chunks
        return t
