"""Does the gateway keep the engine's continuous batching full?

Drives the same streamed workload (64 output tokens per request, ignore_eos) straight at vLLM and
through Noor, in one run, at concurrency 1, 16 and 64, and prints output tokens/s for both and their
ratio. Target: ratio >= 0.98 at concurrency 64 (the gateway must never serialise requests).

    python benchmarks/spine_throughput.py                 # launches its own vLLM with the bundled model
    python benchmarks/spine_throughput.py --vllm-url URL  # against a running vLLM serving MODEL

The gateway runs in its own process (uvicorn + uvloop), as in production; the load generator is an
asyncio/aiohttp client in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.servers import free_port  # noqa: E402

MODEL = "smollm2-135m-instruct"
ADMIN = "bench-admin-token"


async def one(session: aiohttp.ClientSession, url: str, key: str | None, max_tokens: int) -> int:
    body = {
        "model": MODEL, "messages": [{"role": "user", "content": "Tell me a story about the sea."}],
        "max_tokens": max_tokens, "stream": True, "ignore_eos": True, "stream_options": {"include_usage": True},
    }
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    tokens = 0
    async with session.post(url + "/v1/chat/completions", json=body, headers=headers) as r:
        r.raise_for_status()
        async for line in r.content:
            if line.startswith(b"data: ") and b'"usage":{' in line:
                tokens = int(line.split(b'"completion_tokens":')[1].split(b"}")[0].split(b",")[0])
    return tokens


async def run(url: str, key: str | None, concurrency: int, requests: int, max_tokens: int) -> tuple[float, int]:
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900)) as session:
        async def task() -> int:
            async with sem:
                return await one(session, url, key, max_tokens)

        t0 = time.perf_counter()
        results = await asyncio.gather(*(task() for _ in range(requests)))
        dt = time.perf_counter() - t0
    total = sum(results)
    return total / dt, total


def start_gateway(vllm_url: str, data: Path, port: int) -> subprocess.Popen:
    catalog = data / "catalog.toml"
    catalog.write_text(
        f'[pools.local-vllm]\nengine = "vllm"\nendpoints = ["{vllm_url}"]\n\n'
        f'[models.{MODEL}]\npool = "local-vllm"\ncontext_length = 2048\ntokenizer = "smollm2"\n'
    )
    env = os.environ | {
        "NOOR_CATALOG_PATH": str(catalog), "NOOR_DATA_DIR": str(data), "NOOR_SERVER__ADMIN_TOKEN": ADMIN,
        "NOOR_SERVER__PORT": str(port), "NOOR_TELEMETRY__ACCESS_LOG": "false",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "router.app:create_app", "--host", "127.0.0.1",
         "--port", str(port), "--loop", "uvloop", "--http", "router.http_server:GatewayHTTPProtocol", "--log-level", "warning"],
        env=env, cwd=Path(__file__).resolve().parents[1],
    )


def wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/ready").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vllm-url")
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--requests-per-slot", type=int, default=2, help="requests = max(4, slots * this)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved direct/gateway rounds per concurrency")
    args = ap.parse_args()

    server = None
    if not args.vllm_url:
        from models.prepare import default_cache_dir, prepare_smollm2
        from serving.launcher.vllm import VLLMServer

        server = VLLMServer(prepare_smollm2(default_cache_dir()), [MODEL], port=free_port(), max_num_seqs=64)
        server.start()
        server.wait_healthy(900, progress=True)
        args.vllm_url = server.url
    data = Path(tempfile.mkdtemp(prefix="noor-bench-"))
    port = free_port()
    gw = start_gateway(args.vllm_url, data, port)
    gw_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(gw_url)
        admin = {"Authorization": f"Bearer {ADMIN}"}
        tenant = httpx.post(gw_url + "/admin/tenants", json={"name": "bench"}, headers=admin).json()
        key = httpx.post(f"{gw_url}/admin/tenants/{tenant['id']}/keys", json={}, headers=admin).json()["key"]
        asyncio.run(run(args.vllm_url, None, 4, 4, 8))  # warm-up
        print(f"{'concurrency':>11} {'direct tok/s':>13} {'gateway tok/s':>14} {'ratio':>7}")
        for c in (int(x) for x in args.concurrency.split(",")):
            n = max(4, c * args.requests_per_slot)
            # Interleave direct and gateway rounds (A B B A …) so a drift in background load hits both.
            direct_rates, via_rates = [], []
            for i in range(args.rounds):
                order = [(args.vllm_url, None, direct_rates), (gw_url, key, via_rates)]
                for url, k, into in order if i % 2 == 0 else order[::-1]:
                    rate, tokens = asyncio.run(run(url, k, c, n, args.max_tokens))
                    assert tokens == n * args.max_tokens, tokens
                    into.append(rate)
            direct, via = statistics.mean(direct_rates), statistics.mean(via_rates)
            print(f"{c:>11} {direct:>13.1f} {via:>14.1f} {via / direct:>7.3f}", flush=True)
    finally:
        gw.terminate()
        gw.wait(10)
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
