"""The spine end to end: the official openai SDK → Noor → a real vLLM serving SmolLM2."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import ADMIN_TOKEN, MODEL_A, MODEL_B

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "Say hello in one word."}]


@pytest.fixture(scope="module")
def tenant(tenants):
    return tenants.create("spine-a")


@pytest.fixture(scope="module")
def client(gateway, tenant) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=tenant[1], max_retries=0)


def test_chat_non_streamed_is_metered_exactly(client, tenants):
    resp = client.chat.completions.create(model=MODEL_A, messages=HELLO, max_tokens=8)
    assert resp.choices[0].message.content
    assert resp._request_id and resp._request_id.startswith("req_")
    rec = tenants.usage(resp._request_id)
    assert rec is not None and rec.outcome == "ok" and rec.status == 200
    assert (rec.prompt_tokens, rec.completion_tokens) == (resp.usage.prompt_tokens, resp.usage.completion_tokens)
    assert rec.completion_tokens > 0 and rec.model == MODEL_A and rec.engine == "vllm"


def test_chat_streamed_with_usage_matches_engine(client, tenants):
    stream = client.chat.completions.create(
        model=MODEL_A, messages=HELLO, max_tokens=16, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    usage = chunks[-1].usage
    assert usage is not None and not chunks[-1].choices and usage.completion_tokens == 16
    # running usage the client did not ask for is stripped from the content chunks
    assert all(c.usage is None for c in chunks[:-1])
    rec = tenants.usage(stream.response.headers["x-request-id"])
    assert (rec.prompt_tokens, rec.completion_tokens) == (usage.prompt_tokens, usage.completion_tokens)
    assert rec.stream and rec.ttft_ms is not None and rec.ttft_ms <= rec.latency_ms


def test_stream_without_usage_is_still_billed(client, tenants):
    stream = client.chat.completions.create(
        model=MODEL_A, messages=HELLO, max_tokens=12, stream=True, extra_body={"ignore_eos": True}
    )
    chunks = list(stream)
    assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks)
    rec = tenants.usage(stream.response.headers["x-request-id"])
    assert rec.completion_tokens == 12 and rec.prompt_tokens > 0


def test_completions_streamed_and_not(client, tenants):
    resp = client.completions.create(model=MODEL_A, prompt="The capital of France is", max_tokens=5)
    assert resp.choices[0].text
    rec = tenants.usage(resp._request_id)
    assert (rec.prompt_tokens, rec.completion_tokens) == (resp.usage.prompt_tokens, resp.usage.completion_tokens)
    stream = client.completions.create(
        model=MODEL_A, prompt="Once upon a time", max_tokens=7, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    assert chunks[-1].usage.completion_tokens == 7
    rec = tenants.usage(stream.response.headers["x-request-id"])
    assert rec.completion_tokens == 7 and rec.prompt_tokens == chunks[-1].usage.prompt_tokens


def test_prompt_count_matches_engine(client, smollm2_dir):
    """The gateway's own count (tiktoken from tokenizer.json) agrees with vLLM's prompt_tokens."""
    from models.tokenizer import count_chat, load_encoding

    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name three colours, please."}]
    resp = client.chat.completions.create(model=MODEL_A, messages=messages, max_tokens=1)
    assert count_chat(load_encoding(smollm2_dir / "tokenizer.json"), messages) == resp.usage.prompt_tokens


def test_errors_have_openai_shape_and_sdk_classes(gateway, client, tenants):
    bad = openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-noor-not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model=MODEL_A, messages=HELLO)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model=MODEL_A, messages=HELLO, max_tokens=5000)
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.chat.completions.create(model=MODEL_A, messages=[{"role": "user", "content": "hello " * 3000}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL_A, messages=[])
    key = client.api_key
    r = httpx.post(gateway.url + "/v1/chat/completions", content=b"{not json", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error" and r.headers["x-request-id"]
    r = httpx.post(gateway.url + "/v1/chat/completions", json={"model": MODEL_A}, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    big = b'{"model": "x", "messages": [{"role": "user", "content": "' + b"a" * (5 * 1024 * 1024) + b'"}]}'
    r = httpx.post(gateway.url + "/v1/chat/completions", content=big, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 413 and "too large" in r.json()["error"]["message"]


def test_key_scoped_to_model_a(gateway, tenants):
    _, secret = tenants.create("scoped", key_models=[MODEL_A])
    c = openai.OpenAI(base_url=gateway.url + "/v1", api_key=secret, max_retries=0)
    assert [m.id for m in c.models.list()] == [MODEL_A]
    assert c.chat.completions.create(model=MODEL_A, messages=HELLO, max_tokens=2).choices
    with pytest.raises(openai.PermissionDeniedError):
        c.chat.completions.create(model=MODEL_B, messages=HELLO, max_tokens=2)
    with pytest.raises(openai.PermissionDeniedError):
        c.models.retrieve(MODEL_B)


def test_revoked_and_rotated_keys_fail_on_next_request(gateway, tenants):
    _, secret = tenants.create("revokee")
    c = openai.OpenAI(base_url=gateway.url + "/v1", api_key=secret, max_retries=0)
    assert c.models.list().data
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    tid = httpx.get(gateway.url + "/admin/tenants", headers=admin).json()["data"]
    tid = next(t["id"] for t in tid if t["name"] == "revokee")
    keys = httpx.get(f"{gateway.url}/admin/tenants/{tid}/keys", headers=admin).json()["data"]
    rotated = httpx.post(f"{gateway.url}/admin/keys/{keys[0]['id']}/rotate", headers=admin).json()
    with pytest.raises(openai.AuthenticationError):
        c.models.list()
    c2 = openai.OpenAI(base_url=gateway.url + "/v1", api_key=rotated["key"], max_retries=0)
    assert c2.models.list().data
    assert httpx.post(f"{gateway.url}/admin/keys/{rotated['id']}/revoke", headers=admin).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        c2.models.list()


def test_tenant_cannot_read_another_tenants_usage(gateway, tenants, client):
    client.chat.completions.create(model=MODEL_A, messages=HELLO, max_tokens=2)
    other_id, other_key = tenants.create("nosy")
    mine = {"Authorization": f"Bearer {client.api_key}"}
    own = httpx.get(gateway.url + "/admin/usage", headers=mine).json()["data"]
    assert own and {row["tenant_id"] for row in own} == {own[0]["tenant_id"]} != {other_id}
    r = httpx.get(gateway.url + "/admin/usage", params={"tenant_id": other_id}, headers=mine)
    assert r.status_code == 403 and r.json()["error"]["code"] == "other_tenant"
    assert httpx.get(gateway.url + "/admin/tenants", headers=mine).status_code == 403
    csv_text = httpx.get(gateway.url + "/admin/usage/records", params={"format": "csv"}, headers=mine).text
    assert csv_text.splitlines()[0].startswith("request_id,tenant_id")


def _running(vllm_url: str) -> float:
    text = httpx.get(vllm_url + "/metrics").text
    return sum(
        s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == "vllm:num_requests_running"
    )


def test_dropped_stream_is_billed_partially_and_aborted(gateway, client, tenants, vllm_url):
    body = {"model": MODEL_A, "messages": HELLO, "max_tokens": 1500, "stream": True, "ignore_eos": True}
    headers = {"Authorization": f"Bearer {client.api_key}"}
    received = 0
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, headers=headers, timeout=60) as r:
        rid = r.headers["x-request-id"]
        for line in r.iter_lines():
            if line.startswith("data: "):
                received += 1
            if received >= 5:
                break
    rec = tenants.usage(rid)
    assert rec.outcome == "cancelled"
    # the first chunk carries only the role: 5 chunks read = at least 4 tokens generated
    assert 4 <= rec.completion_tokens < 1500 and rec.prompt_tokens > 0
    deadline = time.monotonic() + 15
    while _running(vllm_url) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _running(vllm_url) == 0


def test_failover_to_a_healthy_endpoint_and_503_when_none(gateway, client, tenants):
    flaky = gateway.gateway.pools["flaky"]
    dead = flaky.endpoints[0]
    live = flaky.endpoints[1]
    assert not dead.healthy  # the first probe already took it out of rotation
    live.inflight += 1000  # make least-outstanding choose the dead endpoint first
    try:
        for _ in range(3):
            dead.healthy = True  # as if the probe had not noticed yet: the request itself must fail over
            resp = client.chat.completions.create(model="smollm2-failover", messages=HELLO, max_tokens=2)
            assert resp.choices
            assert tenants.usage(resp._request_id).endpoint == live.name
    finally:
        live.inflight -= 1000
    assert not dead.healthy and dead.consecutive_failures >= 3
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model="smollm2-dead", messages=HELLO, max_tokens=2)
    assert err.value.status_code == 503
