"""Embeddings throughput and latency through the gateway vs straight to Triton, side by side.

Closed-loop load: C workers each send one-text /v1/embeddings requests back to back for a fixed time,
at C = 1, 16, 64; at each level the direct and the gateway runs alternate (``--rounds``), so drift in
this shared machine's load hits both. Reports requests/s, p50/p99 latency, and the batch sizes Triton's
dynamic batcher formed during each run (from ``/v2/models/minilm/stats``: executions per batch size),
which is why concurrency 64 should beat concurrency 1 by far; then the ratio gateway/direct.

Targets:
* ``direct``  - Noor's TritonBackend (gRPC by default) in this process, to a Triton this script starts
  on models/triton/ (only the embedding model), or ``--triton-http/--triton-grpc`` for one running.
* ``gateway`` - the OpenAI ``/v1/embeddings`` of a Noor gateway this script starts as its own process
  (``noor serve``: SQLite store, a tenant with limits set, metering on, a Triton pool over gRPC) on the
  same Triton; or ``--gateway-url/--api-key/--gateway-model`` for one running. ``--no-gateway`` skips it.

    python -m benchmarks.triton_embeddings                  # ~3 min: 3 levels x 2 targets x rounds x duration
    python -m benchmarks.triton_embeddings --duration 5 --rounds 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import tempfile
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


def start_gateway(http_url: str, grpc_url: str, metrics_url: str | None, protocol: str, model: str, work: Path):
    """``noor serve`` in its own process with one Triton pool; returns (process, base URL, API key)."""
    import sys

    from benchmarks.overhead.procs import Proc, wait_http
    from benchmarks.overhead.targets import BENCH_LIMITS, _make_tenant

    endpoint = f'{{ url = "{http_url}", grpc_url = "{grpc_url}"' + (f', metrics_url = "{metrics_url}"' if metrics_url else "") + " }"
    (work / "catalog.toml").write_text(
        f'[pools.embed]\nengine = "triton"\nprotocol = "{protocol}"\nendpoints = [{endpoint}]\n\n'
        f'[models."{model}"]\npool = "embed"\nkind = "embedding"\n'
    )
    store_url = f"sqlite:///{work / 'noor.db'}"
    key = asyncio.run(_make_tenant(store_url, BENCH_LIMITS))
    port = _free_port()
    env = {**os.environ, "NOOR_CATALOG_PATH": str(work / "catalog.toml"), "NOOR_DATA_DIR": str(work),
           "NOOR_STORE__URL": store_url, "NOOR_SERVER__PORT": str(port), "NOOR_SERVER__HOST": "127.0.0.1",
           "NOOR_TELEMETRY__ACCESS_LOG": "false"}
    proc = Proc("gateway", [sys.executable, "-m", "noor", "serve"], cores=None, env=env, log_dir=work)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/ready", 120, proc)
    except BaseException:
        proc.stop()
        raise
    return proc, url, key


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
    gateway_proc = None
    gateway_url, api_key, gateway_model = args.gateway_url, args.api_key, args.gateway_model or args.model
    try:
        if gateway_url is None and args.gateway:
            work = Path(tempfile.mkdtemp(prefix="noor-embed-bench-"))
            metrics_url = server.metrics_url if server is not None else None
            gateway_proc, gateway_url, api_key = await asyncio.to_thread(
                start_gateway, http_url, grpc_url, metrics_url, args.protocol, gateway_model, work
            )
            print(f"gateway {gateway_url} (pid {gateway_proc.pid}, log {gateway_proc.log})")
        await backend.start()
        send = direct_sender(backend, args.model)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            gw = gateway_sender(session, gateway_url.rstrip("/"), api_key, gateway_model) if gateway_url else None
            for _ in range(20):  # warm-up: connections, the model's first batches
                await send("warm up")
                if gw is not None:
                    await gw("warm up")
            for c in args.concurrency:
                for _ in range(args.rounds):
                    levels.append(await run_level("direct", send, c, args.duration, http_url))
                    if gw is not None:
                        levels.append(await run_level("gateway", gw, c, args.duration, http_url))
    finally:
        await backend.close()
        if gateway_proc is not None:
            gateway_proc.stop()
        if server is not None:
            server.stop()
    print_table(merge_rounds(levels))
    return levels


def merge_rounds(levels: list[Level]) -> list[Level]:
    """One row per (target, concurrency): the rounds' requests and seconds added up."""
    merged: dict[tuple[str, int], Level] = {}
    for lv in levels:
        m = merged.setdefault((lv.target, lv.concurrency), Level(lv.target, lv.concurrency))
        m.latencies += lv.latencies
        m.errors += lv.errors
        m.seconds += lv.seconds
        for size, count in lv.batches.items():
            m.batches[size] = m.batches.get(size, 0) + count
    return list(merged.values())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Triton embeddings: direct (and gateway) throughput and latency")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--duration", type=float, default=10.0, help="seconds per level")
    p.add_argument("--model", default="minilm")
    p.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    p.add_argument("--triton-http", help="use a running Triton (its HTTP URL) instead of starting one")
    p.add_argument("--triton-grpc", help="its gRPC host:port")
    p.add_argument("--rounds", type=int, default=2, help="alternating direct/gateway runs per level")
    p.add_argument("--gateway", action=argparse.BooleanOptionalAction, default=True,
                   help="start a gateway process and measure through it too")
    p.add_argument("--gateway-url", help="use this running gateway instead of starting one")
    p.add_argument("--gateway-model", help="model name the gateway serves the embeddings under")
    p.add_argument("--api-key", default="")
    asyncio.run(main_async(p.parse_args(argv)))


if __name__ == "__main__":
    main()
