"""The OpenAI <-> Triton vLLM-backend translation, without a server."""

from __future__ import annotations

import base64

import numpy as np
import orjson
import pytest

from serving.backends.base import Usage
from serving.backends.triton import TritonBackend, upstream_error
from serving.backends.triton_protocol import (
    BadRequest,
    OpenAIShaper,
    Piece,
    UsageMeter,
    chatml,
    embedding_inputs,
    embeddings_response,
    generate_call,
    infer_finish_reason,
    openai_finish_reason,
    sampling_parameters,
)


def test_chatml_opens_the_assistant_turn():
    text = chatml([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_chat_uses_the_supplied_renderer_and_maps_sampling():
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 7,
        "temperature": 0.0,
        "top_p": 0.9,
        "seed": 3,
        "stop": "\n\n",
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
        "user": "tenant-x",
    }
    call = generate_call("chat", body, stream=True, render=lambda msgs: f"R:{msgs[0]['content']}")
    assert call.prompt == "R:Hi"
    assert call.stream is True
    assert call.sampling == {"max_tokens": 7, "temperature": 0.0, "top_p": 0.9, "seed": 3, "stop": ["\n\n"], "ignore_eos": True}
    assert orjson.loads(call.sampling_json()) == call.sampling


def test_max_completion_tokens_wins_and_default_applies():
    assert sampling_parameters({"max_completion_tokens": 5, "max_tokens": 9})["max_tokens"] == 5
    assert "max_tokens" not in sampling_parameters({})
    assert sampling_parameters({}, default_max_tokens=64)["max_tokens"] == 64


@pytest.mark.parametrize(
    "body",
    [{"n": 2}, {"max_tokens": 0}, {"max_tokens": "7"}, {"stop": [1, 2]}],
)
def test_unsupported_sampling_is_a_bad_request(body):
    with pytest.raises(BadRequest):
        sampling_parameters(body)


def test_completion_prompt_forms():
    assert generate_call("completion", {"prompt": "Once"}, stream=False).prompt == "Once"
    assert generate_call("completion", {"prompt": ["Once"]}, stream=False).prompt == "Once"
    for bad in ({"prompt": ["a", "b"]}, {"prompt": [1, 2]}, {"prompt": "x", "echo": True}, {}):
        with pytest.raises(BadRequest):
            generate_call("completion", bad, stream=False)


def test_finish_reason_none_string_means_unfinished():
    assert openai_finish_reason("None") is None
    assert openai_finish_reason("stop") == "stop"
    assert openai_finish_reason("length") == "length"


def test_finish_reason_inferred_when_not_reported():
    assert infer_finish_reason("stop", 10, 10) == "stop"
    assert infer_finish_reason(None, 10, 10) == "length"
    assert infer_finish_reason(None, 3, 10) == "stop"
    assert infer_finish_reason(None, 3, None) == "stop"


def test_usage_meter_prefers_engine_counts():
    meter = UsageMeter("prompt", count_tokens=lambda s: 1000)
    meter.add(Piece("Hel", None, 12, 2))
    meter.add(Piece("lo", "stop", 12, 1))
    assert meter.usage(final=True) == Usage(12, 3, "engine")


def test_usage_meter_falls_back_to_the_tokenizer():
    count = lambda s: len(s.split())  # noqa: E731
    meter = UsageMeter("one two three", count_tokens=count)
    meter.add(Piece("alpha bet", None))
    meter.add(Piece("a gamma", "stop"))
    assert meter.usage(final=True) == Usage(3, 3, "tokenizer")  # "alpha beta gamma" recounted whole
    assert UsageMeter("x").usage() is None


def test_chat_chunks_have_vllm_shape():
    shaper = OpenAIShaper("chat", "smollm2", "r1", created=1)
    role = orjson.loads(shaper.role_chunk(Usage(5, 0)))
    assert role["object"] == "chat.completion.chunk" and role["id"] == "chatcmpl-r1"
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert role["usage"] == {"prompt_tokens": 5, "completion_tokens": 0, "total_tokens": 5}
    last = orjson.loads(shaper.content_chunk("!", "stop", Usage(5, 3)))
    assert last["choices"][0] == {"index": 0, "delta": {"content": "!"}, "logprobs": None, "finish_reason": "stop"}
    tail = orjson.loads(shaper.usage_chunk(Usage(5, 3)))
    assert tail["choices"] == [] and tail["usage"]["total_tokens"] == 8


def test_completion_response_shape():
    shaper = OpenAIShaper("completion", "smollm2", "r2", created=1)
    body = orjson.loads(shaper.response("text", "length", Usage(2, 4)))
    assert body["object"] == "text_completion" and body["id"] == "cmpl-r2"
    assert body["choices"] == [{"index": 0, "text": "text", "logprobs": None, "finish_reason": "length"}]
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}
    chunk = orjson.loads(shaper.content_chunk("t", None, None))
    assert chunk["object"] == "text_completion" and chunk["choices"][0]["text"] == "t" and "usage" not in chunk


def test_embeddings_response_float_and_base64():
    vectors = np.arange(6, dtype=np.float32).reshape(2, 3) / 10
    body, usage = embeddings_response("minilm", vectors, np.array([4, 5]))
    data = orjson.loads(body)
    assert usage == Usage(9, 0, "engine")
    assert data["usage"] == {"prompt_tokens": 9, "total_tokens": 9}
    assert [d["index"] for d in data["data"]] == [0, 1]
    assert data["data"][1]["embedding"] == pytest.approx([0.3, 0.4, 0.5])
    body64, _ = embeddings_response("minilm", vectors, np.array([4, 5]), encoding_format="base64")
    raw = base64.b64decode(orjson.loads(body64)["data"][0]["embedding"])
    assert np.frombuffer(raw, dtype=np.float32).tolist() == pytest.approx([0.0, 0.1, 0.2])


def test_embedding_inputs():
    assert embedding_inputs({"input": "a"}) == ["a"]
    assert embedding_inputs({"input": ["a", "b"]}) == ["a", "b"]
    for bad in ({"input": []}, {"input": [[1, 2]]}, {"input": "a", "encoding_format": "int8"}):
        with pytest.raises(BadRequest):
            embedding_inputs(bad)


def test_error_classification():
    assert upstream_error("Request for unknown model: 'x' is not found").status == 503
    assert upstream_error("Request for unknown model: 'x' is not found").retryable
    bad = upstream_error("Error generating stream: temperature must be non-negative, got -1.")
    assert (bad.status, bad.retryable) == (400, False)
    assert orjson.loads(bad.body)["error"]["type"] == "invalid_request_error"
    other = upstream_error("Error generating stream: CUDA illegal memory access")
    assert (other.status, other.retryable) == (502, True)


METRICS = """\
# HELP nv_inference_pending_request_count Instantaneous number of pending requests
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="minilm",version="1"} 3
nv_inference_pending_request_count{model="smollm2",version="1"} 1
# TYPE noor_model_inflight_requests gauge
noor_model_inflight_requests{model="smollm2",version="1"} 5
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="minilm",version="1"} %d
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="minilm",version="1"} %d
# TYPE nv_inference_compute_infer_duration_us counter
nv_inference_compute_infer_duration_us{model="minilm",version="1"} %d
"""


def test_signals_from_triton_metrics():
    backend = TritonBackend("http://127.0.0.1:1", protocol="http", metrics_url="http://127.0.0.1:2/metrics")
    first = backend._parse_signals(METRICS % (10, 1000, 50000))
    assert (first.waiting, first.running) == (4, 5)
    second = backend._parse_signals(METRICS % (20, 3000, 150000))
    assert second.requests == 10
    assert second.queue_ms == pytest.approx(0.2)
    assert second.compute_ms == pytest.approx(10.0)
    only = TritonBackend("http://127.0.0.1:1", protocol="http", models=["minilm"])
    assert only._parse_signals(METRICS % (1, 1, 1)).waiting == 3
