"""Client CPU per request to a fast local engine: Noor's ``EngineHTTPClient`` against aiohttp's
``ClientSession`` (and httpx's ``AsyncClient``), side by side in one process.

The stub engine runs in its own process, so ``process_time`` here is the client's cost alone: writing the
request, parsing the answer, waking the waiting task. Rounds alternate between the clients so a drift of
the machine lands on all of them.

    python benchmarks/overhead/upstream_client.py [--n 10000] [--concurrency 8] [--rounds 3] [--httpx]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
import uvloop

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

from procs import free_port, wait_http  # noqa: E402

PATH = "/v1/chat/completions"
BODY = orjson.dumps({"model": "bench-model", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16})
HEADERS = {"content-type": "application/json", "x-request-id": "req_0123456789abcdef0123456789abcdef"}

Post = Callable[[], Awaitable[bytes]]


async def engine_client(url: str) -> tuple[Post, Callable[[], Awaitable[None]]]:
    from serving.backends.http_client import EngineHTTPClient

    client = EngineHTTPClient(url)

    async def post() -> bytes:
        return await (await client.request("POST", PATH, BODY, HEADERS)).read()

    return post, client.close


async def aiohttp_client(url: str) -> tuple[Post, Callable[[], Awaitable[None]]]:
    import aiohttp

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)

    async def post() -> bytes:
        r = await session.post(url + PATH, data=BODY, headers=HEADERS)
        body = await r.read()
        r.release()
        return body

    return post, session.close


async def httpx_client(url: str) -> tuple[Post, Callable[[], Awaitable[None]]]:
    import httpx

    client = httpx.AsyncClient(limits=httpx.Limits(max_connections=None, max_keepalive_connections=100))

    async def post() -> bytes:
        return (await client.post(url + PATH, content=BODY, headers=HEADERS)).content

    return post, client.aclose


async def cpu_per_request(post: Post, n: int, concurrency: int) -> float:
    async def worker(count: int) -> None:
        for _ in range(count):
            body = await post()
            assert body.startswith(b"{"), body[:80]

    await asyncio.gather(*(worker(50) for _ in range(concurrency)))  # connections opened, caches warm
    start = time.process_time()
    await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
    return (time.process_time() - start) / (n // concurrency * concurrency) * 1e6


async def main(args: argparse.Namespace) -> None:
    port = free_port()
    stub = subprocess.Popen([sys.executable, str(HERE / "stub.py"), "--port", str(port)], stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        await asyncio.to_thread(wait_http, url + "/health", 30)
        makers = {"engine (Noor)": engine_client, "aiohttp": aiohttp_client}
        if args.httpx:
            makers["httpx"] = httpx_client
        results: dict[str, list[float]] = {name: [] for name in makers}
        for _ in range(args.rounds):
            for name, make in makers.items():
                post, close = await make(url)
                try:
                    results[name].append(await cpu_per_request(post, args.n, args.concurrency))
                finally:
                    await close()
        print(f"client CPU per request, {args.n} requests x {args.rounds} rounds, concurrency {args.concurrency}:")
        best = {name: min(v) for name, v in results.items()}
        for name, values in results.items():
            spread = " / ".join(f"{v:.1f}" for v in values)
            print(f"  {name:14} {spread} µs   (best {best[name]:.1f}; {best[name] / best['engine (Noor)']:.1f}x Noor's)")
    finally:
        stub.terminate()
        stub.wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--httpx", action="store_true", help="also httpx (slow: ~1 ms a request)")
    uvloop.run(main(ap.parse_args()))
