"""CPU per request of the gateway's ASGI app itself, called in-process (no HTTP server in front).

The app under test (Noor's, or the minimal proxy for the floor) is called directly with an ASGI scope,
``receive`` and ``send``, ``--concurrency`` requests at a time, against the stub engine running in its
own process. CPU time (``process_time``) of this process per request is the app's own cost plus the
upstream client's, without the server's HTTP parsing — steady enough on a busy machine to compare
one change against another.

    python benchmarks/overhead/inproc.py [--app noor|mini] [--n 20000] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import uvloop

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

from procs import free_port, set_session_nice, wait_http  # noqa: E402
from targets import BENCH_LIMITS, find_tokenizer  # noqa: E402

BODY = orjson.dumps({
    "model": "bench-model", "messages": [{"role": "user", "content": "Hello! Say something nice about the sea."}],
    "max_tokens": 16,
})


async def noor_app(stub_url: str, tmp: Path, stream: bool):
    import clients
    from models.catalog import Catalog
    from noor.settings import Settings
    from router.app import Gateway
    from router.keys import create_key
    from router.store.base import TenantLimits

    clients.install(os.environ.get("BENCH_CLIENT", "engine"))
    tok = None if os.environ.get("BENCH_NO_TOKENIZER") else find_tokenizer()
    spec = {"pool": "stub", "context_length": 2048, **({"tokenizer": str(tok)} if tok else {})}
    catalog = Catalog.from_dict({"pools": {"stub": {"endpoints": [stub_url]}}, "models": {"bench-model": spec}})
    settings = Settings(data_dir=tmp)  # NOOR_* from the environment apply
    if os.environ.get("BENCH_REDIS_URL"):
        settings.store.url = os.environ["BENCH_REDIS_URL"]
    gateway = Gateway(settings, catalog)
    tenant = await gateway.store.create_tenant("bench", limits=TenantLimits(**BENCH_LIMITS))
    _, secret = await create_key(gateway.store, tenant.id)
    await gateway.start()
    app = gateway.asgi()
    return app, [(b"authorization", f"Bearer {secret}".encode()), (b"content-type", b"application/json")], gateway.close


async def mini_app(stub_url: str, tmp: Path, stream: bool):
    os.environ["UPSTREAM"] = stub_url
    import mini_proxy

    mini_proxy.UPSTREAM = stub_url
    messages: asyncio.Queue = asyncio.Queue()
    messages.put_nowait({"type": "lifespan.startup"})

    async def lifespan_receive():
        return await messages.get()

    async def lifespan_send(message):
        pass

    task = asyncio.ensure_future(mini_proxy.app({"type": "lifespan"}, lifespan_receive, lifespan_send))
    await asyncio.sleep(0.1)

    async def close():
        messages.put_nowait({"type": "lifespan.shutdown"})
        await task

    return mini_proxy.app, [(b"content-type", b"application/json")], close


async def run(app_name: str, n: int, concurrency: int, stream: bool, profile: bool = False, nice: int = 0,
              interval_ms: float = 0.0) -> None:
    port = free_port()
    redis_server = None
    if os.environ.get("BENCH_REDIS"):
        rport = free_port()
        redis_server = subprocess.Popen(["taskset", "-c", "0", "redis-server", "--port", str(rport), "--save", "",
                                         "--appendonly", "no"], stdout=subprocess.DEVNULL, start_new_session=True)
        set_session_nice(redis_server.pid, nice)
        os.environ["BENCH_REDIS_URL"] = f"redis://127.0.0.1:{rport}/0"
        time.sleep(0.5)
    stub = subprocess.Popen([sys.executable, str(HERE / "stub.py"), "--port", str(port), "--interval-ms", str(interval_ms)],
                            stdout=subprocess.DEVNULL, start_new_session=True)
    set_session_nice(stub.pid, nice)
    try:
        stub_url = f"http://127.0.0.1:{port}"
        wait_http(stub_url + "/health", 20)
        tmp = Path(tempfile.mkdtemp())
        body = BODY if not stream else orjson.dumps({**orjson.loads(BODY), "stream": True})
        app, headers, close = await (noor_app if app_name == "noor" else mini_app)(stub_url, tmp, stream)
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        scope = {"type": "http", "http_version": "1.1", "method": "POST", "path": "/v1/chat/completions",
                 "raw_path": b"/v1/chat/completions", "query_string": b"", "headers": headers, "scheme": "http",
                 "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000), "root_path": "", "state": {}}
        statuses: dict[int, int] = {}

        async def one() -> None:
            sent_body = False

            async def receive():
                nonlocal sent_body
                if not sent_body:
                    sent_body = True
                    return {"type": "http.request", "body": body, "more_body": False}
                await asyncio.Future()  # no disconnect

            async def send(message):
                if message["type"] == "http.response.start":
                    statuses[message["status"]] = statuses.get(message["status"], 0) + 1

            await app(dict(scope), receive, send)

        progress = [0]

        async def worker(count: int) -> None:
            for _ in range(count):
                await one()
                progress[0] += 1

        async def watchdog() -> None:
            last = -1
            while True:
                await asyncio.sleep(10)
                if progress[0] == last:
                    print(f"no progress for 10 s after {last} requests; tasks:", file=sys.stderr)
                    for task in asyncio.all_tasks():
                        print(f"- {task.get_name()}:", file=sys.stderr)
                        coro = task.get_coro()
                        while coro is not None:  # the whole await chain, not just the task's own frame
                            frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
                            if frame is not None:
                                print(f"    {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}", file=sys.stderr)
                            coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
                last = progress[0]

        dog = asyncio.ensure_future(watchdog())

        await asyncio.gather(*(worker(200 // concurrency) for _ in range(concurrency)))  # warm up
        if os.environ.get("BENCH_GC_FREEZE"):
            import gc

            gc.freeze()
        if os.environ.get("BENCH_GC_GEN0"):
            import gc

            gc.set_threshold(int(os.environ["BENCH_GC_GEN0"]), 10, 10)
        statuses.clear()
        profiler = None
        if profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        t0, w0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
        cpu, wall = time.process_time() - t0, time.perf_counter() - w0
        if profiler is not None:
            import pstats

            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(int(os.environ.get("BENCH_PROFILE_ROWS", "45")))
        done = sum(statuses.values())
        print(f"{app_name}{' stream' if stream else ''}: {1e6 * cpu / done:.1f} µs CPU per request "
              f"({done} requests, concurrency {concurrency}, statuses {statuses}, {done / wall:.0f} req/s wall)")
        await close()
    finally:
        for proc in (stub, redis_server):
            if proc is not None:
                proc.terminate()
                proc.wait(5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--app", choices=["noor", "mini"], default="noor")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--interval-ms", type=float, default=0.0, help="the stub's pause between stream chunks")
    ap.add_argument("--cprofile", action="store_true", help="print cProfile's top functions (slows everything)")
    ap.add_argument("--client", choices=["engine", "aiohttp", "httpx", "httpx-aiohttp"], default="engine",
                    help="Noor's upstream client (benchmark only: overhead/clients.py)")
    ap.add_argument("--nice", type=int, default=0, help="run in a new session at this autogroup niceness")
    ap.add_argument("--redis", action="store_true", help="Noor on its own redis-server (store, limits, metering)")
    args = ap.parse_args()
    os.environ["BENCH_CLIENT"] = args.client
    if args.redis:
        os.environ["BENCH_REDIS"] = "1"
    if args.nice:
        if os.getpid() != os.getpgid(0):
            os.setsid()
        set_session_nice(os.getpid(), args.nice)
    uvloop.run(run(args.app, args.n, args.concurrency, args.stream, args.cprofile, args.nice, args.interval_ms))


if __name__ == "__main__":
    main()
