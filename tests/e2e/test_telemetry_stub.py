"""Telemetry through a real gateway in front of a small real engine stub (tests/stub_engine.py): fast,
so every shape — span trees with failover, refusal reasons, content debugging, the off switch, the
metrics port — is checked on every run. The proof against vLLM itself is in test_telemetry.py.
"""

from __future__ import annotations

import time

import uuid

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from models.catalog import Catalog
from noor.settings import Settings
from router.app import Gateway
from router.keys import create_key
from tests.servers import ThreadedServer, free_port
from tests.stub_engine import StubEngine, ThreadedApp
from tests.telemetry_helpers import LogCapture, Samples, span_texts, spans_of

pytestmark = pytest.mark.e2e

STAGES = {"authenticate", "validate", "limits", "queue", "pick_endpoint", "upstream", "relay"}


@pytest.fixture(scope="module")
def stub():
    engine = StubEngine(tokens=6)
    with ThreadedApp(engine.app) as server:
        server.engine = engine
        yield server


def _catalog(url: str, dead: str) -> Catalog:
    return Catalog.from_dict({
        "pools": {
            "stub": {"engine": "vllm", "endpoints": [url]},
            "flaky": {"engine": "vllm", "endpoints": [dead, url]},
            "dead": {"engine": "vllm", "endpoints": [dead]},
        },
        "models": {
            "stub-model": {"pool": "stub", "context_length": 64},
            "stub-flaky": {"pool": "flaky"},
            "stub-dead": {"pool": "dead"},
        },
    })


def _gateway(tmp_path_factory, stub_url: str, *, exporter=None, **telemetry) -> Gateway:
    data = tmp_path_factory.mktemp("gw")
    settings = Settings(data_dir=data, cache_dir=data / "cache", _env_file=None)
    settings.store.usage_flush_interval_s = 0.05
    settings.engine.max_retries = 1
    settings.engine.health_interval_s = 3600.0  # probed once at start: tests set endpoint health themselves
    settings.telemetry.traces_sample_ratio = 1.0  # every request traced: the tests look at each one
    for k, v in telemetry.items():
        setattr(settings.telemetry, k, v)
    return Gateway(settings, _catalog(stub_url, f"http://127.0.0.1:{free_port()}"), span_exporter=exporter)


class Served:
    def __init__(self, server: ThreadedServer, exporter: InMemorySpanExporter | None) -> None:
        self.server, self.exporter = server, exporter
        self.gw: Gateway = server.gateway

    def key(self, tenant: str) -> tuple[str, str]:
        async def go():
            t = await self.gw.store.create_tenant(tenant)
            _, secret = await create_key(self.gw.store, t.id)
            return t.id, secret

        return self.server.call(go())

    def post(self, secret: str, body: dict, path: str = "/v1/chat/completions") -> httpx.Response:
        return httpx.post(self.server.url + path, json=body, headers={"authorization": f"Bearer {secret}"}, timeout=30)

    def spans(self):
        self.gw.telemetry.tracing.force_flush()
        return list(self.exporter.get_finished_spans())

    def request_spans(self, request_id: str, timeout: float = 10.0):
        """The spans of one request's trace, once written: the client can see the response's end a moment
        before the gateway, still finishing the request, hands its spans to the processor."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans()
            if any((s.attributes or {}).get("noor.request.id") == request_id for s in spans) or time.monotonic() > deadline:
                return spans_of(spans, request_id)
            time.sleep(0.05)

    def usage(self, request_id: str):
        async def go():
            import asyncio

            for _ in range(200):
                await self.gw.meter.flush()
                for r in await self.gw.store.usage_records():
                    if r.request_id == request_id:
                        return r
                await asyncio.sleep(0.05)
            return None

        return self.server.call(go())


@pytest.fixture(scope="module")
def traced(stub, tmp_path_factory):
    exporter = InMemorySpanExporter()
    gw = _gateway(tmp_path_factory, stub.url, exporter=exporter, capture_content_tenants=["debug-tenant"])
    with ThreadedServer(gw.asgi()) as server:
        server.gateway = gw
        yield Served(server, exporter)


def _chat(content: str, **extra) -> dict:
    return {"model": "stub-model", "messages": [{"role": "user", "content": content}], **extra}


def test_streamed_request_span_tree_and_traceparent_on_the_wire(traced, stub):
    _, secret = traced.key("spans")
    r = traced.post(secret, _chat("hello there", stream=True, max_tokens=4))
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
    rid = r.headers["x-request-id"]
    spans = traced.request_spans(rid)
    root = next(s for s in spans if s.parent is None)
    children = [s for s in spans if s is not root]
    assert root.name == "chat stub-model" and root.kind == SpanKind.SERVER
    assert {s.name for s in children} == STAGES and len(children) == len(STAGES)
    assert all(s.parent.span_id == root.context.span_id for s in children)
    for s in children:  # stage spans sit inside the request span, in order
        assert root.start_time <= s.start_time <= s.end_time <= root.end_time, s.name
    by = {s.name: s for s in children}
    order = ["authenticate", "validate", "limits", "queue", "pick_endpoint", "upstream", "relay"]
    assert all(by[a].start_time <= by[b].start_time for a, b in zip(order, order[1:]))
    a = root.attributes
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "stub-model"
    assert a["gen_ai.request.max_tokens"] == 4 and a["gen_ai.response.model"] == "stub-model"
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (2, 4)
    assert tuple(a["gen_ai.response.finish_reasons"]) == ("length",)
    assert a["noor.tenant.id"].startswith("ten_") and a["http.response.status_code"] == 200
    up = by["upstream"]
    assert up.kind == SpanKind.CLIENT and by["relay"].attributes["noor.chunks"] == 4
    # What the engine received on the wire names the upstream span of this very trace.
    sent = next(h for h in stub.engine.seen if h.get("x-request-id") == rid)
    version, trace_id, parent_id, flags = sent["traceparent"].split("-")
    assert (version, trace_id, parent_id) == ("00", f"{root.context.trace_id:032x}", f"{up.context.span_id:016x}")
    assert int(flags, 16) & 1  # sampled (the SDK also sets W3C level 2's "random trace id" bit)


def test_a_clients_traceparent_is_continued(traced, stub):
    """The request span joins the caller's trace under the caller's span, and keeps its sampling decision."""
    _, secret = traced.key("continued")
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    headers = {"authorization": f"Bearer {secret}", "traceparent": f"00-{caller_trace}-{caller_span}-01"}
    r = httpx.post(traced.server.url + "/v1/chat/completions", json=_chat("hi", max_tokens=2), headers=headers, timeout=30)
    assert r.status_code == 200
    spans = traced.request_spans(r.headers["x-request-id"])
    root = next(s for s in spans if s.kind == SpanKind.SERVER)
    assert f"{root.context.trace_id:032x}" == caller_trace
    assert root.parent is not None and root.parent.is_remote and f"{root.parent.span_id:016x}" == caller_span
    sent = next(h for h in stub.engine.seen if h.get("x-request-id") == r.headers["x-request-id"])
    assert sent["traceparent"].split("-")[1] == caller_trace  # and on to the engine
    # A caller that did not sample: nothing exported, the decision passed on; a malformed header: a new trace.
    headers["traceparent"] = f"00-{'1' * 32}-{'2' * 16}-00"
    r = httpx.post(traced.server.url + "/v1/chat/completions", json=_chat("hi", max_tokens=2), headers=headers, timeout=30)
    sent = next(h for h in stub.engine.seen if h.get("x-request-id") == r.headers["x-request-id"])
    assert sent["traceparent"].startswith(f"00-{'1' * 32}-") and sent["traceparent"].endswith("-00")
    assert not [s for s in traced.spans() if f"{s.context.trace_id:032x}" == "1" * 32]
    headers["traceparent"] = "00-not-a-trace-01"
    r = httpx.post(traced.server.url + "/v1/chat/completions", json=_chat("hi", max_tokens=2), headers=headers, timeout=30)
    assert r.status_code == 200 and len(traced.request_spans(r.headers["x-request-id"])) > 1


def test_failover_shows_each_engine_attempt(traced, stub):
    _, secret = traced.key("failover")
    dead, live = traced.gw.pools["flaky"].endpoints

    async def tilt(on: bool) -> None:  # on the gateway's loop, between its requests
        dead.healthy, dead.consecutive_failures = on, 0  # the dead endpoint is still "in rotation"...
        live.inflight += 1 if on else -1  # ... and least-outstanding picks it first: the first try fails

    traced.server.call(tilt(True))
    try:
        r = traced.post(secret, {"model": "stub-flaky", "messages": [{"role": "user", "content": "x"}], "stream": True})
    finally:
        traced.server.call(tilt(False))
    assert r.status_code == 200
    rid = r.headers["x-request-id"]
    ups = sorted((s for s in traced.request_spans(rid) if s.name == "upstream"), key=lambda s: s.start_time)
    assert len(ups) == 2
    assert ups[0].status.status_code == StatusCode.ERROR and ups[0].attributes["error.type"] == "502"
    assert ups[1].status.status_code != StatusCode.ERROR
    sent = next(h for h in stub.engine.seen if h.get("x-request-id") == rid)
    assert sent["traceparent"].split("-")[2] == f"{ups[1].context.span_id:016x}"


def test_refusals_are_counted_by_reason_and_traced(traced):
    tenant, secret = traced.key("refusals")
    before = Samples.scrape(traced.server.url + "/metrics")
    assert traced.post("sk-noor-not-a-key", _chat("x")).status_code == 401
    assert traced.post(secret, {"model": "no-such-model", "messages": []}).status_code == 404
    assert traced.post(secret, _chat("x", max_tokens=10_000)).status_code == 400
    assert traced.post(secret, {"model": "stub-dead", "messages": [{"role": "user", "content": "x"}]}).status_code == 503
    after = Samples.scrape(traced.server.url + "/metrics")
    rejected = "noor_requests_rejected_total"
    assert after.get(rejected, reason="auth", tenant="") - before.get(rejected, reason="auth", tenant="") >= 1
    assert after.get(rejected, tenant=tenant, reason="validation") == 2
    assert after.get(rejected, tenant=tenant, reason="no_capacity") == 1
    # an unknown model name is free text: it never becomes a label value
    assert "no-such-model" not in after.text
    assert after.get("noor_requests_total", tenant=tenant, model="", status="404") == 1
    assert after.get("noor_requests_total", tenant=tenant, model="stub-dead", pool="dead", status="503") == 1
    dead = [s for s in traced.spans() if (s.attributes or {}).get("gen_ai.request.model") == "stub-dead"][-1]
    assert dead.status.status_code == StatusCode.ERROR and dead.attributes["error.type"] == "no_capacity"


def test_metrics_count_exactly_the_metered_tokens(traced):
    tenant, secret = traced.key("tokens")
    url = traced.server.url + "/metrics"
    before = Samples.scrape(url)
    rids = [
        traced.post(secret, _chat("one two three", stream=True, max_tokens=5)).headers["x-request-id"],
        traced.post(secret, _chat("four five", max_tokens=3)).headers["x-request-id"],
        traced.post(secret, {"model": "stub-model", "prompt": "a b c d", "max_tokens": 2}, "/v1/completions").headers["x-request-id"],
    ]
    recs = [traced.usage(rid) for rid in rids]
    after = Samples.scrape(url)
    tok = "noor_tokens_total"
    assert after.get(tok, tenant=tenant, type="input") - before.get(tok, tenant=tenant, type="input") == sum(r.prompt_tokens for r in recs)
    assert after.get(tok, tenant=tenant, type="output") - before.get(tok, tenant=tenant, type="output") == sum(r.completion_tokens for r in recs) == 10
    assert after.get("noor_requests_total", tenant=tenant, model="stub-model", pool="stub", status="200") == 3
    assert after.get("noor_requests_admitted_total", tenant=tenant, pool="stub", priority="interactive") == 3
    assert after.get("noor_time_to_first_token_seconds_count", tenant=tenant) == 1
    assert after.get("noor_request_duration_seconds_count", tenant=tenant) == 3
    assert after.get("noor_gateway_added_latency_seconds_count", pool="stub", phase="pre_upstream") >= 3
    assert after.get("noor_queue_wait_seconds_count", pool="stub", priority="interactive") >= 3
    # scrape-time gauges: the stub endpoint is healthy, idle, and its vLLM-named signals are exported
    ep = traced.gw.pools["stub"].endpoints[0].name
    assert after.get("noor_endpoint_healthy", pool="stub", endpoint=ep) == 1
    assert after.get("noor_endpoint_inflight", pool="stub", endpoint=ep) == 0
    assert after.get("noor_engine_kv_cache_usage_ratio", pool="stub", endpoint=ep) == 0.25
    assert after.get("noor_pool_endpoints", pool="dead", state="unhealthy") == 1
    assert after.has("noor_requests_in_progress")


def test_prompt_text_never_reaches_logs_or_spans(traced):
    tenant, secret = traced.key("private")
    marker = "MARKER-" + uuid.uuid4().hex
    with LogCapture() as logs:
        rids = [
            traced.post(secret, _chat(f"secret {marker}", stream=True, max_tokens=3)).headers["x-request-id"],
            traced.post(secret, _chat(f"secret {marker}", max_tokens=3)).headers["x-request-id"],
            traced.post(secret, {"model": "stub-model", "prompt": marker, "max_tokens": 2}, "/v1/completions").headers["x-request-id"],
            traced.post(secret, _chat(marker, max_tokens=10_000)).headers["x-request-id"],  # refused
            traced.post(secret, {"model": "stub-dead", "messages": [{"role": "user", "content": marker}]}).headers["x-request-id"],
        ]
        for rid in rids[:3]:
            traced.usage(rid)
        spans = traced.spans()
    lines = logs.lines()
    access = [r for r in logs.records if r.name == "noor.access"]
    assert {r.fields["request_id"] for r in access} >= set(rids)  # positive control: each was logged
    assert all(r.fields["tenant"] == tenant for r in access if r.fields["request_id"] in rids)
    assert not [line for line in lines if marker in line]
    assert not [r for r in logs.records if marker in r.getMessage() or marker in str(r.args)]
    traced_spans = [s for rid in rids for s in spans_of(spans, rid)]
    assert len(traced_spans) >= 5
    assert not [s.name for s in spans if any(marker in t for t in span_texts(s))]


def test_content_debug_tenant_gets_prompt_and_completion(traced):
    _, secret = traced.key("debug-tenant")
    marker = "DEBUG-" + uuid.uuid4().hex
    with LogCapture() as logs:
        r = traced.post(secret, _chat(marker, stream=True, max_tokens=3))
        rid = r.headers["x-request-id"]
        traced.usage(rid)
    root = next(s for s in traced.request_spans(rid) if s.parent is None)
    assert marker in root.attributes["gen_ai.input.messages"]
    assert root.attributes["gen_ai.output.messages"] == "tok tok tok "
    line = next(r for r in logs.records if r.name == "noor.access" and r.fields["request_id"] == rid)
    assert marker in line.fields["prompt"] and line.fields["completion"] == "tok tok tok "


def test_everything_off_costs_nothing_and_sends_nothing(stub, tmp_path_factory):
    gw = _gateway(tmp_path_factory, stub.url, metrics_enabled=False, traces_exporter="none", access_log=False)
    assert gw.telemetry.metrics is None and gw.telemetry.tracing is None and gw.telemetry.access is None
    with ThreadedServer(gw.asgi()) as server:
        server.gateway = gw
        s = Served(server, None)
        _, secret = s.key("off")
        r = s.post(secret, _chat("hi", stream=True))
        assert r.status_code == 200
        sent = next(h for h in stub.engine.seen if h.get("x-request-id") == r.headers["x-request-id"])
        assert "traceparent" not in {k.lower() for k in sent}
        assert httpx.get(server.url + "/metrics").status_code == 404
        assert s.usage(r.headers["x-request-id"]).completion_tokens == 6  # metering is not telemetry


def test_metrics_on_their_own_port(stub, tmp_path_factory):
    port = free_port()
    gw = _gateway(tmp_path_factory, stub.url, metrics_port=port)
    with ThreadedServer(gw.asgi()) as server:
        server.gateway = gw
        s = Served(server, None)
        _, secret = s.key("port")
        assert s.post(secret, _chat("hi")).status_code == 200
        assert httpx.get(server.url + "/metrics").status_code == 404  # not on the API port
        page = Samples.scrape(f"http://127.0.0.1:{port}/metrics")
        assert page.get("noor_requests_total", status="200") == 1


def test_unsampled_requests_propagate_the_decision_and_export_nothing(stub, tmp_path_factory):
    exporter = InMemorySpanExporter()
    gw = _gateway(tmp_path_factory, stub.url, exporter=exporter, traces_sample_ratio=0.0)
    with ThreadedServer(gw.asgi()) as server:
        server.gateway = gw
        s = Served(server, exporter)
        _, secret = s.key("unsampled")
        r = s.post(secret, _chat("hi", stream=True))
        assert r.status_code == 200
        sent = next(h for h in stub.engine.seen if h.get("x-request-id") == r.headers["x-request-id"])
        assert sent["traceparent"].startswith("00-") and sent["traceparent"].endswith("-00")  # not sampled
        assert s.spans() == []


def test_dashboard_and_rules_only_use_exported_metrics(traced):
    import json
    import re
    from pathlib import Path

    import yaml
    from prometheus_client.parser import text_string_to_metric_families

    _, secret = traced.key("dashboard")
    assert traced.post(secret, _chat("hi", stream=True)).status_code == 200
    page = httpx.get(traced.server.url + "/metrics").text
    exported = {fam.name for fam in text_string_to_metric_families(page)}

    deploy = Path(__file__).resolve().parents[2] / "deploy"
    dashboard = json.loads((deploy / "grafana" / "noor-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    prom = yaml.safe_load((deploy / "prometheus" / "prometheus.yml").read_text())
    assert {j["job_name"] for j in prom["scrape_configs"]} == {"noor-gateway", "vllm"}
    rules = yaml.safe_load((deploy / "prometheus" / prom["rule_files"][0]).read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = {re.sub(r"_(bucket|total|sum|count)$", "", m) for e in exprs for m in re.findall(r"\bnoor_[a-z_]+", e)}
    assert used and used <= exported, used - exported
    assert len(exprs) >= 25
