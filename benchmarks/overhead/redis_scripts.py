"""What one request costs Redis: the limiter's scripts, timed inside a redis-server of its own.

N gateway workers share one Redis, so Redis's time per request caps the whole fleet: one Redis core
serves 1e6 / (µs per request) requests a second, whatever the workers do. This drives the limiter's real
scripts (``router/limits/redis_scripts.py``, with the key layout and arguments ``RedisLimiter`` sends)
through pipelined batches, as the gateway's pipelined connection does, and reads Redis's own account:
``INFO commandstats`` (µs inside each call, and the commands a script ran) and the server's CPU
(``used_cpu_user`` + ``used_cpu_sys``: parsing, replies and system calls too). A no-op script with the
same arguments separates the price of calling a script from the script's own work.

The window is short (``--window-s``, default 2 s) and each case runs past it, so the sliding logs are in
their steady state: every request also evicts the entries that left the window, as in production.

    python benchmarks/overhead/redis_scripts.py [--requests 40000]
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

import orjson
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from router.limits.redis_scripts import RESERVE, SETTLE  # noqa: E402
from router.store.base import UsageRecord  # noqa: E402
from router.store.redis_ledger import _READ_AND_FOLD, GROUP  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

NOOP = "return 1"
TENANT = "bench"


def keys(tenant: str = TENANT) -> list[str]:
    """``RedisLimiter._keys``'s layout (prefix ``noor:``, no budget period)."""
    base = f"noor:rl:{{{tenant}}}:"
    return [base + "rpm", base + "tpm", base + "tpm:amt", base + "conc", base + "budget:-", base + "open"]


def reserve_args(rid: str, window_ms: int, cost: int = 300) -> list:
    """What ``RedisLimiter._call`` sends for a tenant with RPM and TPM limits set (the benchmark tenant's)."""
    return [rid, cost, 10**9, 10**12, 0, 0, window_ms, 30_000, 0, 0]


STREAM = "noor:usage:stream"
_appended = [0]


def _usage(pipe, rid: str, fold: str) -> None:
    record = UsageRecord(request_id=rid, tenant_id="bench-tenant", key_id="key_0123456789ab", model="bench-model",
                         pool="stub0", endpoint="http://127.0.0.1:9100", engine="vllm", prompt_tokens=12,
                         completion_tokens=9, latency_ms=0.84)
    pipe.xadd(STREAM, {b"r": orjson.dumps(record)})
    _appended[0] += 1
    if _appended[0] % 20 == 0:
        pipe.evalsha(fold, 1, STREAM, GROUP, "noor:", 90 * 86400, "bench-consumer", "new", 20)


def cpu(r: redis.Redis) -> float:
    info = r.info("cpu")
    return info["used_cpu_user"] + info["used_cpu_sys"]


def measure(r: redis.Redis, n: int, calls, batch: int = 100) -> dict:
    """Run ``calls(pipe, rid)`` for ``n`` request ids in pipelined batches; Redis's account per request."""
    r.config_resetstat()
    cpu0, t0 = cpu(r), time.perf_counter()
    for _ in range(n // batch):
        pipe = r.pipeline(transaction=False)
        for _ in range(batch):
            calls(pipe, uuid.uuid4().hex)
        pipe.execute()
    wall, cpu_s = time.perf_counter() - t0, cpu(r) - cpu0
    stats = {k[len("cmdstat_"):]: v for k, v in r.info("commandstats").items()}
    stats.pop("config|resetstat", None)
    stats.pop("info", None)
    return {
        "requests": n, "wall_s": round(wall, 2), "redis_cpu_us_per_request": round(1e6 * cpu_s / n, 1),
        "evalsha_us_per_request": round(stats.get("evalsha", {}).get("usec", 0) / n, 1),
        "commands_per_request": {k: round(v["calls"] / n, 2) for k, v in sorted(stats.items()) if k != "evalsha"},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=40_000)
    ap.add_argument("--window-s", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3, help="each case this many times, in turn; the median is shown")
    args = ap.parse_args()
    with RedisServer() as server:
        r = redis.Redis(port=server.port)
        noop, reserve, settle, fold = (r.script_load(s) for s in (NOOP, RESERVE, SETTLE, _READ_AND_FOLD))
        r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        k, window_ms = keys(), int(args.window_s * 1000)
        settle_keys = [k[2], k[3], k[4], k[5]]
        cases = {
            "no-op script, the reserve's arguments": lambda p, rid: p.evalsha(noop, 6, *k, *reserve_args(rid, window_ms)),
            "reserve (RPM + TPM)": lambda p, rid: p.evalsha(reserve, 6, *k, *reserve_args(rid, window_ms)),
            "reserve + settle (a request's limiter work)": lambda p, rid: (
                p.evalsha(reserve, 6, *k, *reserve_args(rid, window_ms)),
                p.evalsha(settle, 4, *settle_keys, rid, 120, 1, 0, 0)),
            "epoch GET (the cached key's check)": lambda p, rid: p.get("noor:epoch:bench"),
            # What the meter appends per request, and the aggregator's fold of it (batches of 20, as
            # UsageLedger reads them): one XADD, then a twentieth of a read-and-fold script call.
            "usage record: XADD + its share of a fold": lambda p, rid: _usage(p, rid, fold),
        }
        # Fill the window first and let it pass once, so every case below evicts as it adds (production's
        # steady state) and none pays for a backlog.
        fill = cases["reserve (RPM + TPM)"]
        end = time.monotonic() + 2 * args.window_s
        while time.monotonic() < end:
            measure(r, 1000, fill)
        print(f"# Redis per request: {args.requests} requests a case, pipelined 100 at a time, window {args.window_s:g} s, "
              f"median of {args.rounds} rounds ({r.info('server')['redis_version']})\n")
        runs: dict[str, list[dict]] = {name: [] for name in cases}
        for _ in range(args.rounds):  # in turn, so a slow minute of the machine lands on every case
            for name, calls in cases.items():
                runs[name].append(measure(r, args.requests, calls))
        print("| case | Redis CPU µs / request (rounds) | inside EVALSHA µs / request | one core serves req/s | commands run |")
        print("|---|---|---|---|---|")
        for name, ms in runs.items():
            m = sorted(ms, key=lambda x: x["redis_cpu_us_per_request"])[len(ms) // 2]
            cmds = ", ".join(f"{c} {v:g}" for c, v in m["commands_per_request"].items())
            each = " / ".join(f"{x['redis_cpu_us_per_request']:.1f}" for x in ms)
            print(f"| {name} | {m['redis_cpu_us_per_request']:.1f} ({each}) | {m['evalsha_us_per_request']:.1f} | "
                  f"{1e6 / m['redis_cpu_us_per_request']:,.0f} | {cmds} |", flush=True)


if __name__ == "__main__":
    main()
