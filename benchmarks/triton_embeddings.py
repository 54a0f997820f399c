"""Embeddings throughput and latency straight to Triton (and, once wired, through the gateway).

Closed-loop load: C workers each send one-text /v1/embeddings-sized requests back to back for a fixed
time, at C = 1, 16, 64. Reports requests/s, p50/p99 latency, and the batch sizes Triton's dynamic
batcher formed during each level (from ``/v2/models/minilm/stats``: executions per batch size), which
is why concurrency 64 should beat concurrency 1 by far.

Targets:
* ``direct``  - TritonBackend (gRPC by default) to a Triton this script starts on models/triton/
  (or ``--triton-http/--triton-grpc`` for one already running).
* ``gateway`` - an OpenAI /v1/embeddings URL (``--gateway-url``, ``--api-key``): the hook for the
  gateway comparison; ratio gateway/direct is printed when both ran.

    python -m benchmarks.triton_embeddings --duration 10
    python -m benchmarks.triton_embeddings --gateway-url http://127.0.0.1:8000 --api-key sk-...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from serving.backends.base import UpstreamRequest
from serving.backends.triton import TritonBackend

REPO = Path(__file__).resolve().parents[1] / "models" / "triton"
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Triton's dynamic batcher merges concurrent requests into one forward pass.",
    "An inference gateway meters every token it serves.",
    "Embeddings map sentences to points where meaning is distance.",
]

Send = Callable[[str], Awaitable[None]]


@dataclass
class Level:
    target: str
    concurrency: int
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0
    batches: dict[int, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1000) if self.latencies else float("nan")

    @property
    def mean_batch(self) -> float:
        n = sum(self.batches.values())
        return sum(size * count for size, count in self.batches.items()) / n if n else 0.0


def batch_stats(http_url: str, model: str = "minilm") -> dict[int, int]:
    """Executions per batch size so far, from Triton's statistics extension."""
    with urllib.request.urlopen(f"{http_url}/v2/models/{model}/stats", timeout=5) as resp:
        stats = json.load(resp)["model_stats"][0]
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}


async def run_level(target: str, send: Send, concurrency: int, duration_s: float, stats_url: str | None) -> Level:
    level = Level(target, concurrency)
    before = batch_stats(stats_url) if stats_url else {}
    stop_at = time.perf_counter() + duration_s

    async def worker(w: int) -> None:
        i = w
        while time.perf_counter() < stop_at:
            text = f"{TEXTS[i % len(TEXTS)]} #{i}"
            i += concurrency
            t0 = time.perf_counter()
            try:
                await send(text)
            except Exception:
                level.errors += 1
                continue
            level.latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    level.seconds = time.perf_counter() - t0
    if stats_url:
        after = batch_stats(stats_url)
        level.batches = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) - before.get(k, 0)}
    return level


def direct_sender(backend: TritonBackend, model: str) -> Send:
    counter = iter(range(10**12))

    async def send(text: str) -> None:
        await backend.complete(
            UpstreamRequest(kind="embedding", body={"model": model, "input": text}, stream=False, request_id=f"b{next(counter)}")
        )

    return send


def gateway_sender(session, url: str, api_key: str, model: str) -> Send:
    """The hook for "through the gateway": POST {url}/v1/embeddings as a client would."""
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}

    async def send(text: str) -> None:
        async with session.post(f"{url}/v1/embeddings", json={"model": model, "input": text}, headers=headers) as r:
            if r.status != 200:
                raise RuntimeError(f"gateway answered {r.status}")
            await r.read()

    return send


def print_table(levels: list[Level]) -> None:
    print(f"\n{'target':8} {'conc':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'mean batch':>10}  batches formed (size:count)")
    for lv in levels:
        formed = " ".join(f"{k}:{v}" for k, v in sorted(lv.batches.items()))
        print(
            f"{lv.target:8} {lv.concurrency:>5} {lv.rps:>9.1f} {lv.pct(50):>8.1f} {lv.pct(99):>8.1f} {lv.errors:>6} "
            f"{lv.mean_batch:>10.1f}  {formed}"
        )
    direct = {lv.concurrency: lv for lv in levels if lv.target == "direct"}
    gateway = {lv.concurrency: lv for lv in levels if lv.target == "gateway"}
    if direct and 1 in direct and max(direct) != 1:
        top = direct[max(direct)]
        print(f"\ndirect: concurrency {top.concurrency} vs 1 = {top.rps / direct[1].rps:.1f}x requests/s")
    for c in sorted(set(direct) & set(gateway)):
        print(f"gateway/direct at {c}: {gateway[c].rps / direct[c].rps:.3f} (target >= 0.95)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def main_async(args: argparse.Namespace) -> list[Level]:
    import aiohttp

    server = None
    http_url, grpc_url = args.triton_http, args.triton_grpc
    if not http_url:
        from serving.launcher.triton import TritonServer

        # Only the embedding model: no vLLM start, nothing else competing for the CPU.
        server = TritonServer(
            REPO,
            http_port=_free_port(),
            grpc_port=_free_port(),
            metrics_port=_free_port(),
            model_control_mode="explicit",
            load_models=[args.model],
        )
        server.start()
        print(f"Triton ready in {server.wait_ready(600):.1f} s ({server.http_url}, log {server.log_path})")
        http_url, grpc_url = server.http_url, server.grpc_url
    backend = TritonBackend(http_url, grpc_url=grpc_url, protocol=args.protocol)
    levels: list[Level] = []
    try:
        await backend.start()
        send = direct_sender(backend, args.model)
        for _ in range(20):  # warm-up
            await send("warm up")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            for c in args.concurrency:
                levels.append(await run_level("direct", send, c, args.duration, http_url))
                if args.gateway_url:
                    gw = gateway_sender(session, args.gateway_url.rstrip("/"), args.api_key, args.gateway_model or args.model)
                    levels.append(await run_level("gateway", gw, c, args.duration, http_url))
    finally:
        await backend.close()
        if server is not None:
            server.stop()
    print_table(levels)
    return levels


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Triton embeddings: direct (and gateway) throughput and latency")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--duration", type=float, default=10.0, help="seconds per level")
    p.add_argument("--model", default="minilm")
    p.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    p.add_argument("--triton-http", help="use a running Triton (its HTTP URL) instead of starting one")
    p.add_argument("--triton-grpc", help="its gRPC host:port")
    p.add_argument("--gateway-url", help="gateway base URL, to measure through the gateway as well")
    p.add_argument("--gateway-model", help="model name the gateway serves the embeddings under")
    p.add_argument("--api-key", default="")
    asyncio.run(main_async(p.parse_args(argv)))


if __name__ == "__main__":
    main()
