"""OpenTelemetry traces: one span per request, a child per stage, GenAI semantic-convention attributes.

Why spans are built after the fact: the SDK's ``Tracer.start_span``/``end`` cost ~45 µs per span here
(sampler, attribute validation, locks, processor hooks), ~8 spans per request — far more than the whole
rest of the request's gateway work. So nothing is traced while the request runs: ``begin`` draws the
trace id and the sampling decision (ratio on the trace id, like ``TraceIdRatioBased``), ``upstream``
draws the engine call's span id and returns the W3C ``traceparent`` the engine receives (so its own
spans hang under that call), and ``finish`` writes every span at once from the timestamps the stages
stamped, as SDK ``ReadableSpan``s handed straight to a ``BatchSpanProcessor`` — which exports them
from its own thread with any SDK exporter (OTLP, console, in-memory for tests). Unsampled requests cost
two random draws and a formatted header.

Attributes never carry prompt or completion text, except for tenants under content debugging
(see ``router/telemetry/content.py``).
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Mapping
from types import MappingProxyType

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from noor.settings import TelemetrySettings
from router.context import RequestContext
from router.errors import OpenAIError
from router.telemetry import content
from router.telemetry.reasons import refusal_reason
from router.telemetry.timing import Timings

OPERATION = {"chat": "chat", "completion": "text_completion", "embedding": "embeddings"}
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_OK = Status(StatusCode.UNSET)
_ERROR = Status(StatusCode.ERROR)
_NO_ATTRS: Mapping[str, object] = MappingProxyType({})
_MASK64 = (1 << 64) - 1


def make_exporter(settings: TelemetrySettings) -> SpanExporter | None:
    """The exporter ``settings.traces_exporter`` names; None for "none"."""
    if settings.traces_exporter == "none":
        return None
    if settings.traces_exporter == "console":
        return ConsoleSpanExporter()
    try:
        if settings.otlp_protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore[no-redef]
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("traces_exporter='otlp' needs the otlp extra: pip install 'noor[otlp]'") from exc
    return OTLPSpanExporter(endpoint=settings.otlp_endpoint) if settings.otlp_endpoint else OTLPSpanExporter()


class _Resource(Resource):
    """A resource that hashes once. Exporters group every span by its resource, and the SDK's hash
    serialises the attributes to JSON on each call: ~15 % of encoding a span, measured here."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource.attributes, resource.schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or super().__eq__(other)


class Tracing:
    def __init__(self, processor: SpanProcessor, *, service_name: str = "noor-gateway", sample_ratio: float = 1.0) -> None:
        self.processor = processor
        self.resource = _Resource(Resource.create({"service.name": service_name}))
        self.scope = InstrumentationScope("noor.gateway", "0.1.0")
        self._bound = round(max(0.0, min(1.0, sample_ratio)) * (1 << 64))
        self._resync()

    @classmethod
    def from_settings(cls, settings: TelemetrySettings, exporter: SpanExporter) -> Tracing:
        return cls(BatchSpanProcessor(exporter), service_name=settings.service_name, sample_ratio=settings.traces_sample_ratio)

    def _resync(self) -> None:
        # Stages stamp perf_counter (monotonic, cheap); spans want epoch nanoseconds.
        self._perf0, self._wall0 = time.perf_counter(), time.time_ns()

    def ns(self, t: float) -> int:
        return self._wall0 + int((t - self._perf0) * 1e9)

    def begin(self, ctx: RequestContext) -> None:
        parent = parse_traceparent(ctx.traceparent) if ctx.traceparent else None
        if parent is not None:
            # The client's trace goes on, with its sampling decision (OTel's default ParentBased sampler):
            # the request span becomes a child of the caller's span.
            trace_id, parent_id, sampled = parent
            ctx.trace = RequestTrace(self, trace_id, random.getrandbits(64) or 1, sampled, parent_id)
            return
        trace_id = random.getrandbits(128) or 1
        # Sampled when the trace id's low 64 bits fall under the ratio, as TraceIdRatioBased decides,
        # so every service sampling by ratio keeps or drops the same traces.
        ctx.trace = RequestTrace(self, trace_id, random.getrandbits(64) or 1, (trace_id & _MASK64) < self._bound)

    def finish(self, ctx: RequestContext, t: Timings, now: float) -> None:
        rt = ctx.trace
        if isinstance(rt, RequestTrace) and rt.sampled:
            rt.emit(ctx, t, now)
        if now - self._perf0 > 60.0:  # keep the two clocks from drifting apart
            self._resync()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.processor.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self.processor.shutdown()


class RequestTrace:
    """The ids of one request's trace, and its engine attempts, until ``emit`` writes its spans."""

    __slots__ = ("tracing", "trace_id", "root_id", "sampled", "attempts", "parent_id")

    def __init__(self, tracing: Tracing, trace_id: int, root_id: int, sampled: bool, parent_id: int | None = None) -> None:
        self.tracing = tracing
        self.trace_id = trace_id
        self.root_id = root_id
        self.sampled = sampled
        self.parent_id = parent_id  # the caller's span, when the client sent a traceparent
        self.attempts: list[list] = []  # [span id, endpoint, start, end | None, failed status | None]

    def upstream(self, ctx: RequestContext) -> str:
        """A new engine-call span id; the ``traceparent`` header that names it as the engine's parent."""
        span_id = random.getrandbits(64) or 1
        self.attempts.append([span_id, ctx.endpoint, ctx.upstream_at or time.perf_counter(), None, None])
        return f"00-{self.trace_id:032x}-{span_id:016x}-{'01' if self.sampled else '00'}"

    def upstream_failed(self, status: int) -> None:
        """The engine call failed before any byte reached the client (another endpoint may follow)."""
        if self.attempts:
            attempt = self.attempts[-1]
            attempt[3], attempt[4] = time.perf_counter(), status

    def emit(self, ctx: RequestContext, t: Timings, now: float) -> None:
        tracing = self.tracing
        ns, on_end, resource, scope = tracing.ns, tracing.processor.on_end, tracing.resource, tracing.scope
        trace_id = self.trace_id
        root = SpanContext(trace_id, self.root_id, False, _SAMPLED)
        end_ns = ns(now)
        failed = ctx.outcome not in ("ok", "cancelled")

        def child(name: str, start: float, end_at: int, *, kind: SpanKind = SpanKind.INTERNAL,
                  attrs: Mapping[str, object] = _NO_ATTRS, status: Status = _OK, span_id: int = 0) -> None:
            on_end(ReadableSpan(
                name, context=SpanContext(trace_id, span_id or random.getrandbits(64) or 1, False, _SAMPLED),
                parent=root, resource=resource, attributes=attrs, kind=kind, status=status,
                start_time=ns(start), end_time=end_at, instrumentation_scope=scope,
            ))

        queued = ctx.queued_at
        dequeued, admitted = _after(ctx.dequeued_at, queued), _after(ctx.admitted_at, queued)
        stages = (
            ("authenticate", ctx.started, ctx.authed_at),
            ("validate", ctx.authed_at, ctx.validated_at),
            ("limits", ctx.validated_at, ctx.reserved_at),
            ("queue", queued, dequeued if dequeued is not None else admitted),
            ("pick_endpoint", dequeued, admitted),
        )
        for name, start, end in stages:
            if start is None:
                break
            if end is None:  # the request ended in this stage
                child(name, start, end_ns, status=_ERROR if failed else _OK)
                break
            child(name, start, ns(end))
        for span_id, ep, start, end, status in self.attempts:
            attrs: dict[str, object] = {"noor.endpoint": ep.name, "noor.engine": ep.engine, "server.address": ep.url} if ep else {}
            if status is not None:
                attrs["error.type"] = str(status)
            elif end is None:
                end = ctx.opened_at
            child("upstream", start, ns(end) if end is not None else end_ns, kind=SpanKind.CLIENT, attrs=attrs,
                  status=_ERROR if status is not None else _OK, span_id=span_id)
        if ctx.opened_at is not None:
            relay: dict[str, object] = {"noor.chunks": ctx.chunks} if ctx.stream else {}
            if t.relay_per_chunk is not None:
                relay["noor.relay_per_chunk_s"] = t.relay_per_chunk
            child("relay", ctx.opened_at, end_ns, attrs=relay, status=_ERROR if failed else _OK)
        op, model = OPERATION.get(ctx.kind, ctx.kind), ctx.model
        on_end(ReadableSpan(
            f"{op} {model.name}" if model is not None else op, context=root, resource=resource,
            parent=SpanContext(trace_id, self.parent_id, True, _SAMPLED) if self.parent_id else None,
            attributes=request_attributes(ctx, t), kind=SpanKind.SERVER, status=_ERROR if failed else _OK,
            start_time=ns(ctx.started), end_time=end_ns, instrumentation_scope=scope,
        ))


_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?")


def parse_traceparent(header: str) -> tuple[int, int, bool] | None:
    """``(trace id, parent span id, sampled)`` of a W3C ``traceparent``; None when it is not valid
    (then the request starts a trace of its own, as the W3C spec says)."""
    m = _TRACEPARENT.fullmatch(header.strip().lower())
    if m is None or m.group(1) == "ff" or (m.group(1) == "00" and len(header.strip()) != 55):
        return None
    trace_id, parent_id = int(m.group(2), 16), int(m.group(3), 16)
    if not trace_id or not parent_id:
        return None
    return trace_id, parent_id, bool(int(m.group(4), 16) & 1)


def _after(t: float | None, start: float | None) -> float | None:
    """``t`` if it belongs to the attempt that began at ``start`` (retries re-stamp the admission)."""
    return t if t is not None and start is not None and t >= start else None


def request_attributes(ctx: RequestContext, t: Timings) -> Mapping[str, object]:
    """GenAI semantic-convention attributes of the request span (plus noor.* ones)."""
    attrs: dict[str, object] = {
        "gen_ai.operation.name": OPERATION.get(ctx.kind, ctx.kind),
        "noor.request.id": ctx.request_id,
        "noor.outcome": ctx.outcome,
        "noor.stream": ctx.stream,
        "http.response.status_code": ctx.status,
    }
    identity, model, usage, ep = ctx.identity, ctx.model, ctx.usage, ctx.endpoint
    if identity is not None:
        attrs["noor.tenant.id"] = identity.tenant_id
    if model is not None:
        attrs["gen_ai.request.model"] = model.name
        attrs["noor.pool"] = model.pool
        body = ctx.body
        requested = body.get("max_completion_tokens", body.get("max_tokens"))
        if isinstance(requested, int) and not isinstance(requested, bool):
            attrs["gen_ai.request.max_tokens"] = requested
        if ctx.opened_at is not None:
            attrs["gen_ai.response.model"] = model.upstream_name
    if ep is not None:
        attrs["noor.endpoint"] = ep.name
    if usage is not None:
        attrs["gen_ai.usage.input_tokens"] = usage.prompt_tokens
        attrs["gen_ai.usage.output_tokens"] = usage.completion_tokens
    reasons = content.finish_reasons(ctx)
    if reasons:
        attrs["gen_ai.response.finish_reasons"] = reasons
    if t.ttft is not None:
        attrs["noor.time_to_first_token_s"] = t.ttft
    if ctx.error is not None:
        attrs["error.type"] = refusal_reason(ctx.error) if isinstance(ctx.error, OpenAIError) else str(ctx.status)
    if ctx.capture is not None:
        attrs["gen_ai.input.messages"] = content.prompt_json(ctx)
        attrs["gen_ai.output.messages"] = content.completion_text(ctx)
    return attrs
