"""Prometheus metrics of the gateway, in a registry of its own.

What moves per request is recorded once, when the request is over (``observe_request``), from the
timestamps the stages stamped; tokens are counted from the very usage records the meter writes
(``observe_usage`` is a ``Meter`` observer), so the counters move by exactly the metered tokens. Load
that exists between requests — endpoint health, in-flight counts, the engines' own signals, queue
depths — is read at scrape time by ``GatewayCollector``, never kept up to date on the hot path.

Labels are bounded: tenants (operator-created, and capped by ``max_tenant_labels``), catalog model and
pool names, status codes, priorities and a fixed set of refusal reasons. Never request ids, never
anything a client typed (an unknown model name is reported as "").
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from router.context import RequestContext
from router.errors import OpenAIError
from router.store.base import UsageRecord
from router.telemetry.reasons import refusal_reason
from router.telemetry.series import CounterVec, HistogramVec
from router.telemetry.timing import Timings

OTHER_TENANT = "_other"

#: Bucket bounds in seconds, spanning what an inference gateway sees for each quantity.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0, 600.0)
OVERHEAD_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class GatewayMetrics(Collector):
    """Every metric the gateway exports except the scrape-time gauges (see ``GatewayCollector``)."""

    def __init__(self, registry: CollectorRegistry | None = None, *, max_tenant_labels: int = 1000) -> None:
        self.registry = registry or CollectorRegistry()
        self._max_tenants = max_tenant_labels
        self._tenants: set[str] = set()
        self.requests = CounterVec(
            "noor_requests", "Requests answered, by tenant, model, pool and HTTP status.",
            ["tenant", "model", "pool", "status"],
        )
        self.tokens = CounterVec(
            "noor_tokens", "Metered tokens (the engine's own counts), by tenant, model and type (input|output).",
            ["tenant", "model", "type"],
        )
        self.admitted = CounterVec(
            "noor_requests_admitted", "Requests placed on an engine endpoint, by tenant, pool and priority.",
            ["tenant", "pool", "priority"],
        )
        self.rejected = CounterVec(
            "noor_requests_rejected",
            "Requests refused by the gateway, by tenant and reason "
            "(auth, validation, limit, budget, deadline, no_capacity, client_closed, error).",
            ["tenant", "reason"],
        )
        self.ttft = HistogramVec(
            "noor_time_to_first_token_seconds", "Arrival at the gateway to the first streamed token.",
            ["tenant", "model", "pool"], TTFT_BUCKETS,
        )
        self.itl = HistogramVec(
            "noor_inter_token_latency_seconds", "Mean time per output token after the first, per streamed request.",
            ["model", "pool"], ITL_BUCKETS,
        )
        self.e2e = HistogramVec(
            "noor_request_duration_seconds", "Arrival at the gateway to the last byte sent.",
            ["tenant", "model", "pool"], E2E_BUCKETS,
        )
        self.overhead = HistogramVec(
            "noor_gateway_added_latency_seconds",
            "Latency the gateway itself adds: phase=pre_upstream (arrival to engine call, queue wait "
            "excluded) once per request; phase=relay_chunk (mean time to read one engine chunk into the client's "
            "connection: parse, strip, send) once per stream.",
            ["pool", "phase"], OVERHEAD_BUCKETS,
        )
        self.upstream_ttfb = HistogramVec(
            "noor_upstream_time_to_first_byte_seconds", "Engine call to the engine's response headers.",
            ["pool"], TTFT_BUCKETS,
        )
        self.queue_wait = HistogramVec(
            "noor_queue_wait_seconds", "Time waiting for admission, by pool and priority.",
            ["pool", "priority"], QUEUE_BUCKETS,
        )
        self._families = [v for v in vars(self).values() if isinstance(v, CounterVec | HistogramVec)]
        self.registry.register(self)

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        for fam in self._families:
            yield fam.family()

    def tenant_label(self, tenant_id: str) -> str:
        """The tenant as a label value; past ``max_tenant_labels`` distinct tenants, '_other'."""
        if tenant_id in self._tenants:
            return tenant_id
        if len(self._tenants) >= self._max_tenants:
            return OTHER_TENANT
        self._tenants.add(tenant_id)
        return tenant_id

    def observe_usage(self, rec: UsageRecord) -> None:
        """``Meter`` observer: count exactly the tokens of the usage record just written."""
        tenant = self.tenant_label(rec.tenant_id)
        if rec.prompt_tokens:
            self.tokens.inc((tenant, rec.model, "input"), rec.prompt_tokens)
        if rec.completion_tokens:
            self.tokens.inc((tenant, rec.model, "output"), rec.completion_tokens)

    def observe_request(self, ctx: RequestContext, t: Timings) -> None:
        """Record a finished (or refused) request."""
        identity, model = ctx.identity, ctx.model
        tenant = self.tenant_label(identity.tenant_id) if identity is not None else ""
        # Only catalog names become labels: a client's unknown model name is free text.
        model_name, pool = (model.name, model.pool) if model is not None else ("", "")
        self.requests.inc((tenant, model_name, pool, str(ctx.status)))
        # Refused: answered with the gateway's own error (at any stage, including "every engine
        # failed"), or the client left while it still waited for admission.
        if isinstance(ctx.error, OpenAIError):
            self.rejected.inc((tenant, refusal_reason(ctx.error)))
        elif ctx.outcome == "cancelled" and ctx.admitted_at is None:
            self.rejected.inc((tenant, "client_closed"))
        priority = identity.priority if identity is not None else ""
        if t.queue_wait is not None:
            self.queue_wait.observe((pool, priority), t.queue_wait)
        if ctx.admitted_at is None:
            return
        self.admitted.inc((tenant, pool, priority))
        self.e2e.observe((tenant, model_name, pool), t.total)
        if t.ttft is not None:
            self.ttft.observe((tenant, model_name, pool), t.ttft)
        if t.itl is not None:
            self.itl.observe((model_name, pool), t.itl)
        if t.pre_upstream is not None:
            self.overhead.observe((pool, "pre_upstream"), t.pre_upstream)
        if t.relay_per_chunk is not None:
            self.overhead.observe((pool, "relay_chunk"), t.relay_per_chunk)
        if t.upstream_ttfb is not None:
            self.upstream_ttfb.observe((pool,), t.upstream_ttfb)
