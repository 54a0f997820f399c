"""OpenTelemetry traces: one span per request, a child per stage, GenAI semantic-convention attributes.

Only two spans are live while the request runs: the request's own (so its trace id exists from the
start) and the engine call's (its span id goes to the engine in a W3C ``traceparent`` header, so the
engine's spans hang under it). Every other stage span is written after the request, from the
timestamps the stages stamped on the context, with explicit start and end times — the request path
pays for two span starts, not for context switching at every stage. Spans leave through a
``BatchSpanProcessor`` on its own thread.

Attributes never carry prompt or completion text, except for tenants under content debugging
(see ``router/telemetry/content.py``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode

from noor.settings import TelemetrySettings
from router.context import RequestContext
from router.errors import OpenAIError
from router.telemetry import content
from router.telemetry.reasons import refusal_reason
from router.telemetry.timing import Timings

OPERATION = {"chat": "chat", "completion": "text_completion", "embedding": "embeddings"}


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


def make_provider(settings: TelemetrySettings, exporter: SpanExporter) -> TracerProvider:
    """A provider of the gateway's own (the global one is left alone: tests run several gateways)."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.service_name}),
        sampler=ParentBased(TraceIdRatioBased(settings.traces_sample_ratio)),
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


class Tracing:
    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("noor.gateway", "0.1.0")
        self._resync()

    def _resync(self) -> None:
        # Stages stamp perf_counter (monotonic, cheap); spans want epoch nanoseconds.
        self._perf0, self._wall0 = time.perf_counter(), time.time_ns()

    def ns(self, t: float) -> int:
        return self._wall0 + int((t - self._perf0) * 1e9)

    def begin(self, ctx: RequestContext) -> None:
        root = self.tracer.start_span("request", kind=SpanKind.SERVER, start_time=self.ns(ctx.started))
        ctx.trace = RequestTrace(self, root)

    def finish(self, ctx: RequestContext, t: Timings, now: float) -> None:
        rt = ctx.trace
        if isinstance(rt, RequestTrace):
            rt.finish(ctx, t, now)
        if now - self._perf0 > 60.0:  # keep the two clocks from drifting apart
            self._resync()

    def shutdown(self) -> None:
        self.provider.shutdown()


class RequestTrace:
    """The live part of one request's trace: its root span and the engine call's span."""

    __slots__ = ("tracing", "root", "parent", "recording", "upstream_span")

    def __init__(self, tracing: Tracing, root: trace.Span) -> None:
        self.tracing = tracing
        self.root = root
        self.recording = root.is_recording()
        self.parent = trace.set_span_in_context(root)
        self.upstream_span: trace.Span | None = None

    def upstream(self, ctx: RequestContext) -> str:
        """Start the engine-call span; return the ``traceparent`` header that names it."""
        ep = ctx.endpoint
        attrs = {"noor.endpoint": ep.name, "noor.engine": ep.engine, "server.address": ep.url} if ep is not None else None
        span = self.tracing.tracer.start_span(
            "upstream", context=self.parent, kind=SpanKind.CLIENT, attributes=attrs,
            start_time=self.tracing.ns(ctx.upstream_at or time.perf_counter()),
        )
        self.upstream_span = span
        sc = span.get_span_context()
        return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"

    def upstream_failed(self, status: int) -> None:
        """The engine call failed before any byte reached the client (another endpoint may follow)."""
        span = self.upstream_span
        if span is not None:
            span.set_attribute("error.type", str(status))
            span.set_status(Status(StatusCode.ERROR, f"engine answered HTTP {status}"))
            span.end()
            self.upstream_span = None

    def finish(self, ctx: RequestContext, t: Timings, now: float) -> None:
        ns = self.tracing.ns
        end_ns = ns(now)
        up = self.upstream_span
        if up is not None:
            up.end(end_time=ns(ctx.opened_at) if ctx.opened_at is not None else end_ns)
        if not self.recording:
            self.root.end(end_time=end_ns)
            return
        failed = ctx.outcome not in ("ok", "cancelled")
        queued = ctx.queued_at
        dequeued, admitted = _after(ctx.dequeued_at, queued), _after(ctx.admitted_at, queued)
        stages = (
            ("authenticate", ctx.started, ctx.authed_at),
            ("validate", ctx.authed_at, ctx.validated_at),
            ("limits", ctx.validated_at, ctx.reserved_at),
            ("queue", queued, dequeued if dequeued is not None else admitted),
            ("pick_endpoint", dequeued, admitted),
        )
        tracer, parent = self.tracing.tracer, self.parent
        for name, start, end in stages:
            if start is None:
                break
            span = tracer.start_span(name, context=parent, start_time=ns(start))
            if end is None:  # the request ended in this stage
                if failed:
                    span.set_status(Status(StatusCode.ERROR))
                span.end(end_time=end_ns)
                break
            span.end(end_time=ns(end))
        if ctx.opened_at is not None:
            relay = tracer.start_span("relay", context=parent, start_time=ns(ctx.opened_at))
            if ctx.stream:
                relay.set_attribute("noor.chunks", ctx.chunks)
            if t.relay_per_chunk is not None:
                relay.set_attribute("noor.relay_per_chunk_s", t.relay_per_chunk)
            if failed:
                relay.set_status(Status(StatusCode.ERROR))
            relay.end(end_time=end_ns)
        root = self.root
        root.set_attributes(request_attributes(ctx, t))
        if failed:
            root.set_status(Status(StatusCode.ERROR))
        model = ctx.model
        root.update_name(f"{OPERATION.get(ctx.kind, ctx.kind)} {model.name}" if model is not None else OPERATION.get(ctx.kind, ctx.kind))
        root.end(end_time=end_ns)


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
