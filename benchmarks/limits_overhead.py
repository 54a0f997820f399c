"""What do shared limits cost? The Redis limit check per request, and the usage ledger's throughput.

1. Gateway, open loop at 500 and 1,000 req/s against a fast stub upstream, one gateway process on Redis:
   a tenant with no limits (no limiter round trip) against a tenant with RPM, TPM, concurrency and a
   budget (one EVALSHA to reserve, one to settle), interleaved (A B B A) so background drift hits both.
   "added" = limited - unlimited, at the same offered rate, per percentile. Run for both ways a replica
   learns of revoked keys: ``version`` (one GET per request) and ``pubsub`` (no read per request).
2. Round trips from one asyncio client (redis-py), sequential: GET of the auth epoch, the reserve script
   and the settle script; and reserve+settle pairs/s at concurrency 64.
3. Usage ledger: records/s appended (XADD, pipelined batches of 500, as the meter sends them) and
   folded (consumer group + the fold script: per-day totals, raw record, exactly-once marker, XACK).

    python benchmarks/limits_overhead.py [--rates 500,1000] [--seconds 5] [--rounds 2]

Needs ``redis-server`` on PATH. Everything runs on this machine: read the figures as relative to each
other (same run), not as absolutes; the load generator shares the CPU with the gateway.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from router.keys import create_key  # noqa: E402
from router.limits.redis import RedisLimiter  # noqa: E402
from router.store.base import TenantLimits, UsageRecord  # noqa: E402
from router.store.redis import RedisStore  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402
from tests.servers import free_port  # noqa: E402

MODEL = "bench-model"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}
BIG = 10**12


def spawn(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=ROOT, env={**os.environ, **(env or {})}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready")


def start_gateway(data: Path, redis_url: str, stub_url: str, auth: str, **extra: str) -> tuple[subprocess.Popen, str]:
    data.mkdir(parents=True, exist_ok=True)
    catalog = data / "catalog.toml"
    catalog.write_text(f'[pools.stub]\nengine = "vllm"\nendpoints = ["{stub_url}"]\n\n[models.{MODEL}]\npool = "stub"\n')
    port = free_port()
    env = {"NOOR_CATALOG_PATH": str(catalog), "NOOR_DATA_DIR": str(data), "NOOR_STORE__URL": redis_url,
           "NOOR_STORE__AUTH_INVALIDATION": auth, **{"NOOR_" + k: v for k, v in extra.items()}}
    proc = spawn([sys.executable, "-m", "uvicorn", "--factory", "router.app:create_app", "--host", "127.0.0.1",
                  "--port", str(port), "--loop", "uvloop", "--http", "router.http_server:GatewayHTTPProtocol", "--log-level", "warning",
                  "--no-access-log"], env)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/ready")
    return proc, url


async def make_keys(redis_url: str) -> dict[str, str]:
    store = RedisStore.from_url(redis_url)
    try:
        free = await store.create_tenant("bench-free")
        limited = await store.create_tenant("bench-limited", limits=TenantLimits(
            requests_per_minute=BIG, tokens_per_minute=BIG, max_concurrent=10**6, token_budget=BIG))
        return {"unlimited": (await create_key(store, free.id))[1], "limited": (await create_key(store, limited.id))[1]}
    finally:
        await store.close()


async def load(url: str, key: str, rate: float, seconds: float) -> tuple[list[float], float, int]:
    """Open-loop: request i is sent at t0 + i/rate whatever the answers. Returns latencies (ms) of the
    200s, the achieved send rate, and the number of non-200 answers."""
    latencies: list[float] = []
    errors = 0
    headers = {"Authorization": f"Bearer {key}"}
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def one() -> None:
            nonlocal errors
            t = time.perf_counter()
            try:
                async with session.post(url + "/v1/chat/completions", json=BODY, headers=headers) as r:
                    await r.read()
                    ok = r.status == 200
            except aiohttp.ClientError:
                ok = False
            if ok:
                latencies.append((time.perf_counter() - t) * 1000)
            else:
                errors += 1

        for _ in range(20):  # warm the connection pool
            await one()
        latencies.clear()
        tasks, n, t0 = [], int(rate * seconds), time.perf_counter()
        for i in range(n):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        sent = time.perf_counter() - t0
        await asyncio.gather(*tasks)
    return latencies, n / sent, errors


async def sequential(url: str, key: str, n: int) -> list[float]:
    """Latency (ms) of ``n`` requests sent one after another on one connection."""
    headers = {"Authorization": f"Bearer {key}"}
    out = []
    async with aiohttp.ClientSession() as session:
        for i in range(n + 5):
            t = time.perf_counter()
            async with session.post(url + "/v1/chat/completions", json=BODY, headers=headers) as r:
                await r.read()
                assert r.status == 200, r.status
            if i >= 5:
                out.append((time.perf_counter() - t) * 1000)
    return out


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used: robust to other load on the machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_cpu(url: str) -> float:
    import redis as redis_sync

    with redis_sync.Redis.from_url(url) as r:
        info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def round_trips(redis_url: str, n: int = 3000) -> dict[str, float]:
    """Microseconds per call from one asyncio client, and reserve+settle pairs/s at concurrency 64."""
    from models.catalog import ModelSpec
    from router.context import RequestContext
    from router.store.base import Identity
    from serving.backends.base import Usage

    store = RedisStore.from_url(redis_url)
    limiter = RedisLimiter(store.client, store.breaker)
    limits = TenantLimits(requests_per_minute=BIG, tokens_per_minute=BIG, max_concurrent=10**6, token_budget=BIG)
    ident = Identity("k", "micro", "micro", frozenset({"*"}), limits)

    def ctx(i: int) -> RequestContext:
        c = RequestContext(request_id=f"m{i}", kind="chat", body={})
        c.identity, c.model, c.prompt_tokens, c.max_tokens = ident, ModelSpec(name="m", pool="p"), 10, 8
        return c

    out: dict[str, float] = {}
    try:
        for _ in range(200):
            await store.auth_epoch()
        await store.client.config_resetstat()
        t, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            await store.auth_epoch()
        out["GET auth epoch: wall us"] = (time.perf_counter() - t) / n * 1e6
        out["GET auth epoch: client CPU us"] = (time.process_time() - cpu) / n * 1e6
        cs = [ctx(i) for i in range(n)]
        await limiter.reserve(ctx(-1))  # loads the script
        await store.client.config_resetstat()
        t, cpu = time.perf_counter(), time.process_time()
        for c in cs:
            await limiter.reserve(c)
        out["reserve (4 buckets): wall us"] = (time.perf_counter() - t) / n * 1e6
        out["reserve (4 buckets): client CPU us"] = (time.process_time() - cpu) / n * 1e6
        out["reserve (4 buckets): Redis us"] = (await store.client.info("commandstats"))["cmdstat_evalsha"]["usec_per_call"]
        await store.client.config_resetstat()
        t, cpu = time.perf_counter(), time.process_time()
        for c in cs:
            await limiter.settle(c, Usage(10, 8))
        out["settle: wall us"] = (time.perf_counter() - t) / n * 1e6
        out["settle: client CPU us"] = (time.process_time() - cpu) / n * 1e6
        out["settle: Redis us"] = (await store.client.info("commandstats"))["cmdstat_evalsha"]["usec_per_call"]
        sem = asyncio.Semaphore(64)

        async def pair(i: int) -> None:
            async with sem:
                c = ctx(n + i)
                await limiter.reserve(c)
                await limiter.settle(c, Usage(10, 8))

        t = time.perf_counter()
        await asyncio.gather(*(pair(i) for i in range(n)))
        out["reserve+settle pairs/s (conc 64)"] = n / (time.perf_counter() - t)
    finally:
        await limiter.close()
        await store.close()
    return out


async def ledger_throughput(redis_url: str, n: int) -> tuple[float, float]:
    from router.store.redis_link import make_client

    store = RedisStore(make_client(redis_url), prefix="ledger-bench:")  # its own stream and totals
    try:
        now = time.time()
        records = [UsageRecord(request_id=f"L{i}", tenant_id=f"t{i % 20}", key_id="k", model=f"m{i % 3}",
                               prompt_tokens=20, completion_tokens=50, ts=now) for i in range(n)]
        t = time.perf_counter()
        for i in range(0, n, 500):
            await store.add_usage(records[i:i + 500])
        appended = n / (time.perf_counter() - t)
        t = time.perf_counter()
        await store.ledger.catch_up(max_batches=10**6)
        folded = n / (time.perf_counter() - t)
        totals = await store.usage_totals(since=now - 1)
        assert sum(x.requests for x in totals) == n, "ledger lost or double-counted records"
        return appended, folded
    finally:
        await store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="500,1000")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=2, help="A B B A rounds per rate and auth mode")
    ap.add_argument("--auth", default="version,pubsub")
    ap.add_argument("--ledger-records", type=int, default=50_000)
    args = ap.parse_args()

    data = Path(tempfile.mkdtemp(prefix="noor-limits-bench-"))
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    procs: list[subprocess.Popen] = []
    with RedisServer() as redis:
        try:
            stub_port = free_port()
            procs.append(spawn([sys.executable, "-m", "tests.stub_upstream", "--port", str(stub_port)]))
            stub_url = f"http://127.0.0.1:{stub_port}"
            wait_http(stub_url + "/health")
            keys = asyncio.run(make_keys(redis.url))
            print("\n## Usage ledger (one Redis, one asyncio client)")
            appended, folded = asyncio.run(ledger_throughput(redis.url, args.ledger_records))
            print(f"{'appended (XADD, batches of 500)':>36}: {appended:,.0f} records/s")
            print(f"{'folded (group read + fold + ack)':>36}: {folded:,.0f} records/s")
            gateways: dict[str, str] = {}
            pids: dict[str, int] = {}
            for mode in args.auth.split(","):
                proc, url = start_gateway(data / mode, redis.url, stub_url, mode)
                procs.append(proc)
                gateways[mode] = url
                pids[mode] = proc.pid
            probe = httpx.post(next(iter(gateways.values())) + "/v1/chat/completions", json=BODY,
                               headers={"Authorization": f"Bearer {keys['limited']}"})
            assert probe.status_code == 200 and "x-ratelimit-limit-tokens" in probe.headers, probe.text

            print("\n## Round trips from one asyncio client (redis-py, sequential; Redis us = server-side time)")
            for name, value in asyncio.run(round_trips(redis.url)).items():
                print(f"{name:>36}: {value:,.1f}")

            print("\n## One request at a time (no queueing), 400 requests per cell, interleaved")
            print(f"{'auth':>8} {'tenant':>10} {'median ms':>10} {'gateway CPU ms/req':>19} {'Redis CPU us/req':>17}")
            for mode, url in gateways.items():
                seq: dict[str, list[float]] = {"unlimited": [], "limited": []}
                cpu = {"unlimited": [0.0, 0.0], "limited": [0.0, 0.0]}
                for i in range(4):
                    for who in (["unlimited", "limited"] if i % 2 == 0 else ["limited", "unlimited"]):
                        g0, r0 = proc_cpu(pids[mode]), redis_cpu(redis.url)
                        seq[who] += asyncio.run(sequential(url, keys[who], 100))
                        cpu[who][0] += proc_cpu(pids[mode]) - g0
                        cpu[who][1] += redis_cpu(redis.url) - r0
                for who in ("unlimited", "limited"):
                    n = len(seq[who])
                    print(f"{mode:>8} {who:>10} {statistics.median(seq[who]):>10.3f} {cpu[who][0] / n * 1e3:>19.3f} "
                          f"{cpu[who][1] / n * 1e6:>17.1f}", flush=True)

            print("\n## Added latency of the limit check (limited - unlimited tenant), ms, same gateway and rate")
            print(f"{'auth':>8} {'req/s':>6} {'achieved':>9} {'p50 none':>9} {'p50 lim':>8} {'+p50':>6} "
                  f"{'p90 none':>9} {'p90 lim':>8} {'+p90':>6} {'p99 none':>9} {'p99 lim':>8} {'+p99':>6} {'errors':>6}"
                  f" {'CPU none':>9} {'CPU lim':>8}  (gateway CPU ms per request)")
            for mode, url in gateways.items():
                for rate in (float(r) for r in args.rates.split(",")):
                    lat: dict[str, list[float]] = {"unlimited": [], "limited": []}
                    achieved, errors = [], 0
                    cpu = {"unlimited": 0.0, "limited": 0.0}
                    for i in range(args.rounds):
                        order = ["unlimited", "limited"] if i % 2 == 0 else ["limited", "unlimited"]
                        for who in order:
                            g0 = proc_cpu(pids[mode])
                            xs, got, errs = asyncio.run(load(url, keys[who], rate, args.seconds))
                            cpu[who] += proc_cpu(pids[mode]) - g0
                            lat[who] += xs
                            achieved.append(got)
                            errors += errs
                    row = []
                    for q in (0.5, 0.9, 0.99):
                        a, b = pct(lat["unlimited"], q), pct(lat["limited"], q)
                        row += [f"{a:>9.2f}", f"{b:>8.2f}", f"{b - a:>+6.2f}"]
                    n = rate * args.seconds * args.rounds
                    cpu_row = f" {cpu['unlimited'] / n * 1e3:>9.3f} {cpu['limited'] / n * 1e3:>8.3f}"
                    print(f"{mode:>8} {rate:>6.0f} {statistics.mean(achieved):>9.0f} " + " ".join(row) + f" {errors:>6}"
                          + cpu_row, flush=True)

            print(f"\nload average after: {os.getloadavg()[0]:.1f}")
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)


if __name__ == "__main__":
    main()
