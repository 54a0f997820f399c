"""A real vLLM serves the prepared SmolLM2: healthy, streams a chat with usage, and leaves nothing behind.

Also checks that our offline tiktoken count of the chat prompt equals the engine's ``prompt_tokens``,
and prints what it measured (run with ``-s`` to see it): preparation time, vLLM start-up time, RSS.
Slow: vLLM takes 60–120 s to start on two quiet cores, several minutes on busy ones.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from models.prepare import default_cache_dir, prepare_smollm2
from models.tokenizer import count_chat, load_encoding
from serving.launcher.process import free_port, group_members
from serving.launcher.vllm import VLLMServer

pytestmark = pytest.mark.e2e

MESSAGES = [
    {"role": "system", "content": "You answer in one short sentence."},
    {"role": "user", "content": "What is the capital of France?"},
]


def _stream_chat(url: str, model: str, messages: list[dict], max_tokens: int = 16) -> tuple[str, dict | None]:
    body = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    text, usage = [], None
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: "):])
            for choice in chunk.get("choices", []):
                text.append(choice.get("delta", {}).get("content") or "")
            if chunk.get("usage"):
                usage = chunk["usage"]
    return "".join(text), usage


def test_vllm_serves_prepared_smollm2(tmp_path: Path):
    started = time.perf_counter()
    model_dir = prepare_smollm2(default_cache_dir(), progress=False)
    prepare_s = time.perf_counter() - started

    # --enforce-eager skips torch.compile's warm-up, which alone took over 10 min on the shared 2-core
    # machine; the launcher, not vLLM's kernels, is under test. "nobind": vLLM's default binding pins
    # every vLLM on a 2-CPU host to CPU 0, so engines started by parallel sessions queue on one core.
    server = VLLMServer(model_dir, ["smollm2", "smollm2-135m-instruct"], port=free_port(),
                        extra_args=["--enforce-eager"], cpu_threads_bind="nobind", log_path=tmp_path / "vllm.log")
    try:
        server.start()
        pgid = server.process.pgid
        startup_s = server.wait_healthy(timeout_s=900)
        rss, pss = server.rss_bytes(), server.pss_bytes()

        models = httpx.get(f"{server.url}/v1/models", timeout=10).json()
        assert {m["id"] for m in models["data"]} == {"smollm2", "smollm2-135m-instruct"}

        request_started = time.perf_counter()
        text, usage = _stream_chat(server.url, "smollm2-135m-instruct", MESSAGES)
        request_s = time.perf_counter() - request_started
        assert usage is not None, "no usage chunk although stream_options.include_usage was set"
        assert usage["completion_tokens"] > 0 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert "Paris" in text

        enc = load_encoding(model_dir / "tokenizer.json")
        assert count_chat(enc, MESSAGES) == usage["prompt_tokens"]
        # Without a system message the template adds SmolLM2's default one; our count must too.
        _, usage_default = _stream_chat(server.url, "smollm2", MESSAGES[1:], max_tokens=1)
        assert usage_default is not None
        assert count_chat(enc, MESSAGES[1:]) == usage_default["prompt_tokens"]
    finally:
        server.stop()

    assert group_members(pgid) == [], "vLLM left processes behind"
    assert not server.healthy()
    print(
        f"\nprepare_smollm2: {prepare_s:.2f} s | vLLM healthy after {startup_s:.1f} s | "
        f"RSS (API server + engine core + worker, summed) {rss / 2**20:.0f} MiB, PSS {pss / 2**20:.0f} MiB | first streamed chat {request_s:.2f} s | "
        f"usage {usage} | reply {text!r}"
    )

