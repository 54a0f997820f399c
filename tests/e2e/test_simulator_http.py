"""The simulator as a client sees it: a real process on a free port, driven by the official ``openai`` SDK.

This proves the simulator speaks vLLM's API well enough for the gateway and its benchmarks; it does not
stand in for the real engine anywhere else.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving.simulator.cluster import run_simulators
from serving.simulator.tokenizer import encode, encode_chat

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    """``python -m serving.simulator --port 0`` in its own process group; its URL from the READY line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.simulator", "--port", "0", "--profile", "cpu-smollm2", "--time-scale", "0.25"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("READY "), line + proc.stdout.read()
        yield line.split()[1]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def client(sim_url: str) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=sim_url + "/v1", api_key="unused", max_retries=0)
    yield c
    c.close()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url + "/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k not in ("model_name", "engine")))
            out[(sample.name, labels)] = sample.value
    return out


def metric(values: dict, name: str, **labels: str) -> float:
    return values[(name, tuple(sorted(labels.items())))]


MESSAGES = [{"role": "system", "content": "You are a simulator."}, {"role": "user", "content": "Say something."}]


def test_models_and_health(client: openai.OpenAI, sim_url: str):
    assert [m.id for m in client.models.list()] == [MODEL]
    assert httpx.get(sim_url + "/health").status_code == 200


def test_chat_non_stream_usage_is_consistent(client: openai.OpenAI):
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, extra_body={"ignore_eos": True})
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len(encode_chat(MESSAGES))
    assert r.usage.completion_tokens == 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12
    assert len(encode(r.choices[0].message.content)) == 12  # the text is the tokens that were charged


def test_chat_stream_with_usage(client: openai.OpenAI):
    t0 = time.perf_counter()
    stream = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert time.perf_counter() - t0 < 10
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c for c in chunks if c.choices]
    text = "".join(c.choices[0].delta.content or "" for c in content)
    assert content[-1].choices[0].finish_reason == "length"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    final = chunks[-1]
    assert final.choices == [] and final.usage is not None
    assert final.usage.completion_tokens == 20 == len(encode(text))
    assert final.usage.prompt_tokens == len(encode_chat(MESSAGES))
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_stream_continuous_usage(client: openai.OpenAI):
    stream = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert all(c.usage is not None for c in chunks)
    done = [c.usage.completion_tokens for c in chunks]
    assert done == sorted(done) and done[0] == 0 and done[-1] == 8


def test_completions_stream_and_not(client: openai.OpenAI):
    r = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5)
    assert r.usage.prompt_tokens == len(encode("Once upon a time")) and r.usage.completion_tokens == 5
    chunks = list(
        client.completions.create(
            model=MODEL, prompt="Once upon a time", max_tokens=5, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].usage.completion_tokens == 5
    assert "".join(c.choices[0].text for c in chunks if c.choices) != ""


def test_errors_have_openai_shape(client: openai.OpenAI):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="word " * 3000, max_tokens=5)
    assert "maximum context length" in str(info.value)


def test_metrics_parse_and_move(client: openai.OpenAI, sim_url: str):
    before = scrape(sim_url)
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
    ):
        assert (name, ()) in before, name
    long_system = {"role": "system", "content": "A long shared instruction that many requests repeat. " * 60}
    msgs = [long_system, {"role": "user", "content": "Hello."}]
    stream = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=400, stream=True, extra_body={"ignore_eos": True})
    next(iter(stream))  # first token: the request is running
    during = scrape(sim_url)
    assert metric(during, "vllm:num_requests_running") >= 1
    assert metric(during, "vllm:kv_cache_usage_perc") > 0
    stream.close()
    client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=2)  # same prefix again
    after = scrape(sim_url)
    prompt_len = len(encode_chat(msgs))
    assert metric(after, "vllm:prefix_cache_queries_total") - metric(before, "vllm:prefix_cache_queries_total") >= 2 * prompt_len
    assert metric(after, "vllm:prefix_cache_hits_total") - metric(before, "vllm:prefix_cache_hits_total") >= 128
    assert metric(after, "vllm:request_success_total", finished_reason="length") > metric(
        before, "vllm:request_success_total", finished_reason="length"
    )


def test_client_disconnect_aborts_the_sequence(client: openai.OpenAI, sim_url: str):
    before = scrape(sim_url)
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=1500, stream=True, extra_body={"ignore_eos": True}
    )
    it = iter(stream)
    next(it), next(it)
    assert metric(scrape(sim_url), "vllm:num_requests_running") == 1
    stream.close()  # drop the connection mid-stream
    deadline = time.monotonic() + 5
    while True:
        now = scrape(sim_url)
        if metric(now, "vllm:num_requests_running") == 0:
            break
        assert time.monotonic() < deadline, "the aborted request kept running"
        time.sleep(0.05)
    assert metric(now, "vllm:kv_cache_usage_perc") == 0
    assert metric(now, "vllm:request_success_total", finished_reason="abort") == (
        metric(before, "vllm:request_success_total", finished_reason="abort") + 1
    )


def test_non_stream_disconnect_aborts_too(sim_url: str):
    before = scrape(sim_url)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            sim_url + "/v1/chat/completions",
            json={"model": MODEL, "messages": MESSAGES, "max_tokens": 1500, "ignore_eos": True},
            timeout=0.5,
        )
    deadline = time.monotonic() + 5
    while metric(scrape(sim_url), "vllm:num_requests_running") != 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    after = scrape(sim_url)
    assert metric(after, "vllm:request_success_total", finished_reason="abort") > metric(
        before, "vllm:request_success_total", finished_reason="abort"
    )


async def test_run_simulators_in_process_with_async_client():
    async with run_simulators(3, "cpu-smollm2", time_scale=0.1) as urls:
        assert len(urls) == 3 and len(set(urls)) == 3
        clients = [openai.AsyncOpenAI(base_url=u + "/v1", api_key="x", max_retries=0) for u in urls]
        try:
            results = await asyncio.gather(
                *(
                    c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4, extra_body={"ignore_eos": True})
                    for c in clients
                    for _ in range(4)
                )
            )
        finally:
            for c in clients:
                await c.close()
        assert all(r.usage.completion_tokens == 4 for r in results)
        assert [s.engine.stats.finished["length"] for s in urls.servers] == [4, 4, 4]


# Key lists of vLLM 0.32's own pydantic models as its server serializes them (``model_dump_json(
# exclude_unset=True)`` for chunks, ``model_dump()`` for full responses), captured from
# vllm/entrypoints/openai/{chat_completion,completion}/protocol.py.
VLLM_CHAT_ROLE_CHUNK = ["id", "object", "created", "model", "choices", "usage", "prompt_token_ids", "prompt_text"]
VLLM_CHAT_ROLE_CHOICE = ["index", "delta", "logprobs", "finish_reason"]
VLLM_CHAT_TOKEN_CHUNK = ["id", "object", "created", "model", "choices", "usage"]
VLLM_CHAT_TOKEN_CHOICE = ["index", "delta", "logprobs", "finish_reason", "token_ids"]
VLLM_CHAT_LAST_CHOICE = ["index", "delta", "logprobs", "finish_reason", "stop_reason", "token_ids"]
VLLM_USAGE_CHUNK = ["id", "object", "created", "model", "choices", "usage"]
VLLM_CHAT_RESPONSE = [
    "id", "object", "created", "model", "choices", "service_tier", "system_fingerprint", "usage",
    "prompt_logprobs", "prompt_token_ids", "prompt_text", "kv_transfer_params", "ec_transfer_params", "metrics",
]
VLLM_CHAT_MESSAGE = ["role", "content", "refusal", "annotations", "audio", "function_call", "reasoning"]
VLLM_COMPLETION_CHOICE_CHUNK = ["index", "text", "logprobs", "finish_reason", "stop_reason", "prompt_token_ids", "token_ids"]


def sse(url: str, body: dict) -> list[dict]:
    import orjson

    out = []
    with httpx.stream("POST", url, json=body, timeout=10) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                out.append(orjson.loads(line[6:]))
    return out


def test_raw_json_has_vllms_exact_keys(sim_url: str):
    chunks = sse(
        sim_url + "/v1/chat/completions",
        {"model": MODEL, "messages": MESSAGES, "max_tokens": 3, "ignore_eos": True, "stream": True,
         "stream_options": {"include_usage": True, "continuous_usage_stats": True}},
    )
    role, *tokens, usage = chunks
    assert list(role) == VLLM_CHAT_ROLE_CHUNK and list(role["choices"][0]) == VLLM_CHAT_ROLE_CHOICE
    assert all(list(c) == VLLM_CHAT_TOKEN_CHUNK for c in tokens)
    assert all(list(c["choices"][0]) == VLLM_CHAT_TOKEN_CHOICE for c in tokens[:-1])
    assert list(tokens[-1]["choices"][0]) == VLLM_CHAT_LAST_CHOICE
    assert list(usage) == VLLM_USAGE_CHUNK and list(usage["usage"]) == ["prompt_tokens", "total_tokens", "completion_tokens"]
    assert list(tokens[0]["usage"]) == ["prompt_tokens", "total_tokens", "completion_tokens", "completion_tokens_details"]

    plain = sse(sim_url + "/v1/chat/completions", {"model": MODEL, "messages": MESSAGES, "max_tokens": 2, "stream": True})
    assert list(plain[0]) == ["id", "object", "created", "model", "choices", "prompt_token_ids", "prompt_text"]
    assert all("usage" not in c for c in plain)

    full = httpx.post(sim_url + "/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES, "max_tokens": 2}).json()
    assert list(full) == VLLM_CHAT_RESPONSE and list(full["choices"][0]["message"]) == VLLM_CHAT_MESSAGE

    comp = sse(sim_url + "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 2, "stream": True})
    assert all(list(c["choices"][0]) == VLLM_COMPLETION_CHOICE_CHUNK for c in comp)
