"""Telemetry against the real engine: the official openai SDK → Noor → vLLM serving SmolLM2.

* /metrics, parsed with prometheus-client's parser, moved by exactly the tokens metered for the requests;
* a streamed request's span tree and GenAI attributes, and the ``traceparent`` vLLM received — seen on
  the wire by a recording proxy between the gateway and vLLM (vLLM does not echo it back);
* a unique marker sent in prompts appears in no log line and no span.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import openai
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from models.catalog import Catalog
from noor.settings import Settings
from router.app import Gateway
from tests.e2e.conftest import MODEL_A, Tenants
from tests.recording_proxy import RecordingProxy
from tests.servers import ThreadedServer
from tests.stub_engine import ThreadedApp
from tests.telemetry_helpers import LogCapture, Samples, span_texts, spans_of

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "Say hello in one word."}]


def test_metrics_move_by_exactly_the_metered_tokens(gateway, tenants):
    tenant, secret = tenants.create("metrics-exact")
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=secret, max_retries=0)
    url = gateway.url + "/metrics"
    before = Samples.scrape(url)

    rids = [client.chat.completions.create(model=MODEL_A, messages=HELLO, max_tokens=6)._request_id]
    stream = client.chat.completions.create(
        model=MODEL_A, messages=HELLO, max_tokens=9, stream=True, extra_body={"ignore_eos": True},
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    rids.append(stream.response.headers["x-request-id"])
    rids.append(client.completions.create(model=MODEL_A, prompt="The capital of France is", max_tokens=4)._request_id)

    records = [tenants.usage(rid) for rid in rids]
    assert all(r is not None and r.outcome == "ok" for r in records)
    after = Samples.scrape(url)

    def moved(name: str, **labels: str) -> float:
        return after.get(name, **labels) - before.get(name, **labels)

    assert moved("noor_tokens_total", tenant=tenant, model=MODEL_A, type="input") == sum(r.prompt_tokens for r in records)
    assert moved("noor_tokens_total", tenant=tenant, model=MODEL_A, type="output") == sum(r.completion_tokens for r in records)
    assert records[1].completion_tokens == 9
    assert moved("noor_requests_total", tenant=tenant, model=MODEL_A, pool="local-vllm", status="200") == 3
    assert moved("noor_time_to_first_token_seconds_count", tenant=tenant, model=MODEL_A) == 1
    assert moved("noor_inter_token_latency_seconds_count", model=MODEL_A) >= 1
    assert moved("noor_request_duration_seconds_count", tenant=tenant, model=MODEL_A) == 3
    # The engine's own signals, scraped by the pool for picking, are exported at scrape time.
    ep = gateway.gateway.pools["local-vllm"].endpoints[0].name
    assert after.get("noor_endpoint_healthy", pool="local-vllm", endpoint=ep) == 1
    assert after.has("noor_engine_kv_cache_usage_ratio", pool="local-vllm", endpoint=ep)
    assert after.has("noor_engine_requests_running", pool="local-vllm", endpoint=ep)


@pytest.fixture(scope="module")
def proxy(vllm_url):
    rec = RecordingProxy(vllm_url)
    with ThreadedApp(rec.app) as server:
        server.recorder = rec
        yield server


@pytest.fixture(scope="module")
def traced(proxy, smollm2_dir: Path, tmp_path_factory):
    """A second gateway, tracing into memory, whose pool reaches vLLM through the recording proxy."""
    data = tmp_path_factory.mktemp("traced")
    settings = Settings(data_dir=data, cache_dir=data / "cache", _env_file=None)
    settings.store.usage_flush_interval_s = 0.05
    settings.telemetry.traces_sample_ratio = 1.0
    catalog = Catalog.from_dict({
        "pools": {"via-proxy": {"engine": "vllm", "endpoints": [proxy.url]}},
        "models": {MODEL_A: {"pool": "via-proxy", "context_length": 2048, "tokenizer": str(smollm2_dir / "tokenizer.json")}},
    })
    exporter = InMemorySpanExporter()
    gw = Gateway(settings, catalog, span_exporter=exporter)
    with ThreadedServer(gw.asgi()) as server:
        server.gateway = gw
        server.exporter = exporter
        yield server


def _spans(server):
    server.gateway.telemetry.tracing.force_flush()
    return list(server.exporter.get_finished_spans())


def test_streamed_request_is_traced_and_vllm_receives_the_trace(traced, proxy):
    tenant, secret = Tenants(traced).create("traced")
    client = openai.OpenAI(base_url=traced.url + "/v1", api_key=secret, max_retries=0)
    stream = client.chat.completions.create(
        model=MODEL_A, messages=HELLO, max_tokens=7, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    usage = chunks[-1].usage
    rid = stream.response.headers["x-request-id"]
    Tenants(traced).usage(rid)  # the request is fully over once its record is flushed

    spans = spans_of(_spans(traced), rid)
    root = next(s for s in spans if s.parent is None)
    by = {s.name: s for s in spans if s is not root}
    assert set(by) == {"authenticate", "validate", "limits", "queue", "pick_endpoint", "upstream", "relay"}
    assert all(s.parent.span_id == root.context.span_id for s in by.values())
    assert root.kind == SpanKind.SERVER and by["upstream"].kind == SpanKind.CLIENT
    a = root.attributes
    assert root.name == f"chat {MODEL_A}"
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == MODEL_A
    assert a["gen_ai.response.model"] == MODEL_A and a["gen_ai.request.max_tokens"] == 7
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (usage.prompt_tokens, usage.completion_tokens)
    assert tuple(a["gen_ai.response.finish_reasons"]) == ("length",)
    assert a["noor.tenant.id"] == tenant
    assert by["relay"].attributes["noor.chunks"] >= 7
    assert by["upstream"].end_time <= by["relay"].start_time + 1_000  # first byte, then the relay

    sent = proxy.recorder.headers_for(rid)
    assert sent is not None, "the request never reached vLLM through the proxy"
    version, trace_id, parent_id, flags = sent["traceparent"].split("-")
    assert version == "00" and int(flags, 16) & 1
    assert trace_id == f"{root.context.trace_id:032x}" and parent_id == f"{by['upstream'].context.span_id:016x}"


def test_a_prompt_marker_appears_in_no_log_line_and_no_span(traced):
    _, secret = Tenants(traced).create("marker")
    client = openai.OpenAI(base_url=traced.url + "/v1", api_key=secret, max_retries=0)
    marker = "NOORMARKER" + uuid.uuid4().hex
    with LogCapture() as logs:
        r1 = client.chat.completions.create(
            model=MODEL_A, messages=[{"role": "user", "content": f"Repeat exactly: {marker}"}], max_tokens=24,
        )
        s = client.chat.completions.create(
            model=MODEL_A, messages=[{"role": "user", "content": f"Repeat exactly: {marker}"}], max_tokens=24, stream=True,
        )
        list(s)
        r3 = client.completions.create(model=MODEL_A, prompt=f"{marker} {marker}", max_tokens=8)
        with pytest.raises(openai.BadRequestError):  # refused at validation, marker in the prompt
            client.chat.completions.create(model=MODEL_A, messages=[{"role": "user", "content": marker}], max_tokens=5000)
        rids = [r1._request_id, s.response.headers["x-request-id"], r3._request_id]
        for rid in rids:
            Tenants(traced).usage(rid)
        spans = _spans(traced)
    access_ids = {r.fields["request_id"] for r in logs.records if r.name == "noor.access"}
    assert set(rids) <= access_ids and len(access_ids) >= 4  # positive control: all four were logged
    assert not [line for line in logs.lines() if marker in line]
    assert len([sp for rid in rids for sp in spans_of(spans, rid)]) >= 3 * 8
    assert not [sp.name for sp in spans if any(marker in t for t in span_texts(sp))]
