"""Telemetry: Prometheus metrics, OpenTelemetry traces and the JSON access log, behind four calls.

The pipeline calls ``begin`` when a request arrives, ``upstream``/``upstream_failed`` around each
engine call (the trace context goes to the engine there) and ``finish`` when the request is over,
refused or not. Everything else is computed in ``finish`` from the timestamps the stages stamped on
the context. What is switched off costs nothing but an attribute test; with everything off
(``Telemetry.disabled()``) the four calls return at once.

Modules, one idea each: ``timing`` (stamps → latencies), ``metrics`` (counters and histograms),
``collector`` (scrape-time gauges), ``tracing`` (spans), ``logs`` (JSON logs, access line),
``reasons`` (why a request was refused), ``content`` (text, for content-debugged tenants only).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from router.context import RequestContext
from router.telemetry.timing import Timings
from serving.backends.base import UpstreamError, UpstreamRequest

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter
    from prometheus_client.registry import Collector

    from noor.settings import TelemetrySettings
    from router.admission import Admission
    from router.telemetry.logs import AccessLog
    from router.telemetry.metrics import GatewayMetrics
    from router.telemetry.tracing import Tracing
    from serving.pool import Pool

log = logging.getLogger("noor.telemetry")


class Telemetry:
    def __init__(
        self,
        *,
        metrics: GatewayMetrics | None = None,
        tracing: Tracing | None = None,
        access: AccessLog | None = None,
        capture_tenants: frozenset[str] = frozenset(),
    ) -> None:
        self.metrics = metrics
        self.tracing = tracing
        self.access = access
        self.capture_tenants = capture_tenants
        self.in_progress = 0
        self._active = metrics is not None or tracing is not None or access is not None

    @classmethod
    def disabled(cls) -> Telemetry:
        return cls()

    @classmethod
    def from_settings(
        cls,
        settings: TelemetrySettings,
        *,
        pools: Mapping[str, Pool],
        admission: Admission,
        span_exporter: SpanExporter | None = None,
    ) -> Telemetry:
        """Build what ``settings`` switches on. ``span_exporter`` (tests) overrides the configured one."""
        metrics = tracing = access = None
        if settings.metrics_enabled:
            from router.telemetry.collector import GatewayCollector
            from router.telemetry.metrics import GatewayMetrics

            metrics = GatewayMetrics(max_tenant_labels=settings.max_tenant_labels)
        if span_exporter is not None or settings.traces_exporter != "none":
            from router.telemetry.tracing import Tracing, make_exporter

            exporter = span_exporter or make_exporter(settings)
            assert exporter is not None
            tracing = Tracing.from_settings(settings, exporter)
        if settings.access_log:
            from router.telemetry.logs import AccessLog

            access = AccessLog()
        tel = cls(metrics=metrics, tracing=tracing, access=access, capture_tenants=frozenset(settings.capture_content_tenants))
        if metrics is not None:
            metrics.registry.register(GatewayCollector(pools, admission, lambda: tel.in_progress))
        return tel

    def register(self, collector: Collector) -> None:
        """Export another component's own metrics (a limiter's buckets, a scheduler's virtual times)."""
        if self.metrics is not None:
            self.metrics.registry.register(collector)

    # --- the four calls the pipeline makes ---------------------------------------------------------

    def begin(self, ctx: RequestContext) -> None:
        if not self._active:
            return
        self.in_progress += 1
        if self.tracing is not None:
            self.tracing.begin(ctx)

    def upstream(self, ctx: RequestContext, request: UpstreamRequest) -> None:
        """Before each engine call: propagate the trace; start keeping text for content-debugged tenants."""
        trace = ctx.trace
        if trace is not None:
            request.headers["traceparent"] = trace.upstream(ctx)  # type: ignore[attr-defined]
        if self.capture_tenants and ctx.capture is None and ctx.identity is not None:
            who = ctx.identity
            if who.tenant_id in self.capture_tenants or who.tenant_name in self.capture_tenants:
                ctx.capture = []

    def upstream_failed(self, ctx: RequestContext, exc: UpstreamError) -> None:
        trace = ctx.trace
        if trace is not None:
            trace.upstream_failed(exc.status)  # type: ignore[attr-defined]

    def finish(self, ctx: RequestContext) -> None:
        if not self._active:
            return
        self.in_progress -= 1
        now = time.perf_counter()
        try:
            t = Timings.of(ctx, now)
            if self.metrics is not None:
                self.metrics.observe_request(ctx, t)
            if self.tracing is not None:
                self.tracing.finish(ctx, t, now)
            if self.access is not None:
                self.access.write(ctx, t)
        except Exception:  # telemetry must never change how a request ends
            log.exception("telemetry failed for request %s", ctx.request_id)

    def shutdown(self) -> None:
        """Flush and stop the span exporter."""
        if self.tracing is not None:
            self.tracing.shutdown()
