"""The pure parts of telemetry: refusal reasons, latencies from stage stamps, the JSON log line, and the
handler that writes log lines in batches (to a real pipe)."""

from __future__ import annotations

import logging
import os
import time

import orjson
import pytest

from models.catalog import ModelSpec
from router.context import RequestContext
from router.errors import OpenAIError, bad_request, model_not_found, no_capacity, unauthorized
from router.store.base import Identity, TenantLimits
from router.telemetry import Telemetry
from router.telemetry.logs import BatchedLineHandler, JsonFormatter, access_fields
from router.telemetry.reasons import REASONS, refusal_reason
from router.telemetry.timing import Timings
from serving.backends.base import Usage


@pytest.mark.parametrize(("error", "reason"), [
    (unauthorized(), "auth"),
    (OpenAIError(503, "store away", code="store_unavailable"), "auth"),
    (bad_request("bad"), "validation"),
    (model_not_found("x"), "validation"),
    (OpenAIError(403, "no", code="model_not_allowed"), "validation"),
    (OpenAIError(413, "big", code="request_too_large"), "validation"),
    (OpenAIError(429, "slow down"), "limit"),
    (OpenAIError(429, "spent", code="insufficient_quota"), "budget"),
    (OpenAIError(429, "waited too long", code="queue_timeout"), "deadline"),
    (no_capacity(), "no_capacity"),
    (no_capacity(status=502), "no_capacity"),
    (OpenAIError(500, "boom"), "error"),
])
def test_refusal_reasons(error, reason):
    assert refusal_reason(error) == reason


def test_an_explicit_reason_wins_and_unknown_ones_are_ignored():
    e = OpenAIError(429, "x")
    e.reason = "budget"  # type: ignore[attr-defined]
    assert refusal_reason(e) == "budget"
    e.reason = "something a client typed"  # type: ignore[attr-defined]
    assert refusal_reason(e) in REASONS


def _ctx(**kw) -> RequestContext:
    ctx = RequestContext(request_id="req_1", kind="chat", body={}, started=100.0)
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


def test_timings_from_stage_stamps():
    ctx = _ctx(stream=True, authed_at=100.001, queued_at=100.002, dequeued_at=100.502, admitted_at=100.503,
               upstream_at=100.503, opened_at=100.6, first_token_at=100.7, last_token_at=101.7, chunks=11,
               relay_s=0.0011, usage=Usage(5, 11))
    t = Timings.of(ctx, 101.8)
    assert t.total == pytest.approx(1.8)
    assert t.queue_wait == pytest.approx(0.5)
    assert t.pre_upstream == pytest.approx(0.003)  # the queue wait is not the gateway's own time
    assert t.upstream_ttfb == pytest.approx(0.097)
    assert t.ttft == pytest.approx(0.7)
    assert t.itl == pytest.approx(0.1)  # 1 s over the 10 tokens after the first
    assert t.relay_per_chunk == pytest.approx(0.0001)


def test_timings_of_a_request_refused_while_queued():
    ctx = _ctx(queued_at=100.0)
    t = Timings.of(ctx, 130.0)
    assert t.queue_wait == pytest.approx(30.0) and t.pre_upstream is None and t.ttft is None


def test_non_streamed_requests_have_no_ttft():
    ctx = _ctx(stream=False, upstream_at=100.1, opened_at=100.5, first_token_at=100.5)
    assert Timings.of(ctx, 100.6).ttft is None


def test_json_log_line_merges_fields_and_access_line_has_no_text():
    ident = Identity(key_id="key_1", tenant_id="ten_1", tenant_name="acme", models=frozenset({"*"}), limits=TenantLimits())
    ctx = _ctx(identity=ident, model=ModelSpec(name="m", pool="p"), usage=Usage(3, 4), status=200,
               body={"messages": [{"role": "user", "content": "private words"}]})
    fields = access_fields(ctx, Timings.of(ctx, 100.25))
    record = logging.LogRecord("noor.access", logging.INFO, __file__, 1, "access", None, None)
    record.fields = fields
    line = JsonFormatter().format(record)
    obj = orjson.loads(line)
    assert obj["msg"] == "access" and obj["level"] == "info" and obj["logger"] == "noor.access"
    assert (obj["tenant"], obj["model"], obj["pool"], obj["input_tokens"], obj["output_tokens"]) == ("ten_1", "m", "p", 3, 4)
    assert obj["latency_ms"] == 250.0 and obj["ts"].endswith("Z")
    assert "private words" not in line and "prompt" not in obj


def test_disabled_telemetry_does_nothing():
    tel = Telemetry.disabled()
    ctx = _ctx()
    tel.begin(ctx)
    tel.finish(ctx)
    assert ctx.trace is None and tel.in_progress == 0


def test_spans_built_after_the_request_encode_as_otlp():
    """The spans written from stage stamps are ordinary SDK spans: the OTLP encoder takes them."""
    encoder = pytest.importorskip("opentelemetry.exporter.otlp.proto.common.trace_encoder")
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from router.telemetry.tracing import Tracing
    from serving.backends.base import UpstreamRequest
    from serving.backends.vllm import VLLMBackend
    from serving.endpoint import Endpoint

    exporter = InMemorySpanExporter()
    tel = Telemetry(tracing=Tracing(SimpleSpanProcessor(exporter), sample_ratio=1.0))
    ident = Identity(key_id="key_1", tenant_id="ten_1", tenant_name="acme", models=frozenset({"*"}), limits=TenantLimits())
    ctx = RequestContext(request_id="req_1", kind="chat", body={"max_tokens": 3})
    tel.begin(ctx)
    ctx.identity, ctx.model, ctx.stream = ident, ModelSpec(name="m", pool="p"), True
    ctx.authed_at = ctx.validated_at = ctx.reserved_at = ctx.queued_at = ctx.dequeued_at = ctx.started + 0.001
    ctx.endpoint = Endpoint(name="e", pool="p", backend=VLLMBackend("http://127.0.0.1:9"))
    ctx.admitted_at = ctx.upstream_at = ctx.started + 0.002
    request = UpstreamRequest(kind="chat", body={}, stream=True, request_id="req_1")
    tel.upstream(ctx, request)
    ctx.opened_at = ctx.first_token_at = ctx.started + 0.01
    ctx.last_token_at, ctx.chunks, ctx.usage = ctx.started + 0.03, 3, Usage(4, 3)
    tel.finish(ctx)
    spans = exporter.get_finished_spans()
    assert len(spans) == 8 and len({s.context.trace_id for s in spans}) == 1
    up = next(s for s in spans if s.name == "upstream")
    assert request.headers["traceparent"] == f"00-{up.context.trace_id:032x}-{up.context.span_id:016x}-01"
    message = encoder.encode_spans(spans)
    assert len(message.resource_spans[0].scope_spans[0].spans) == 8
    assert message.SerializeToString()


def _drain(fd: int) -> bytes:
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


def test_log_lines_are_written_in_order_in_batches_and_at_once_for_warnings():
    r, w = os.pipe()
    os.set_blocking(r, False)
    handler = BatchedLineHandler(w, max_bytes=10_000, interval_s=3600)  # only size, level and close write
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger("test.batched")
    log.propagate, log.level = False, logging.INFO
    log.addHandler(handler)
    try:
        for i in range(3):
            log.info("line %d", i)
        assert _drain(r) == b""  # held: no write per line
        log.warning("careful")
        assert _drain(r) == b"INFO line 0\nINFO line 1\nINFO line 2\nWARNING careful\n"
        log.info("x" * 12_000)  # past max_bytes: written at once
        assert _drain(r) == b"INFO " + b"x" * 12_000 + b"\n"
        log.info("last")
        handler.close()  # what logging.shutdown() does at exit
        assert _drain(r) == b"INFO last\n"
    finally:
        log.removeHandler(handler)
        os.close(r)
        os.close(w)


def test_held_lines_leave_within_the_interval():
    r, w = os.pipe()
    os.set_blocking(r, False)
    handler = BatchedLineHandler(w, interval_s=0.05)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("test.batched.timer")
    log.propagate, log.level = False, logging.INFO
    log.addHandler(handler)
    try:
        log.info("soon")
        got = b""
        for _ in range(100):
            got += _drain(r)
            if got:
                break
            time.sleep(0.02)
        assert got == b"soon\n"
    finally:
        log.removeHandler(handler)
        handler.close()
        os.close(r)
        os.close(w)
