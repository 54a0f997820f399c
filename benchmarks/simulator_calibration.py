"""How close is the simulator to the engines it models? Prints tables of simulated vs measured figures.

    python benchmarks/simulator_calibration.py                  # cpu-smollm2 over HTTP vs FACTS.md
    python benchmarks/simulator_calibration.py --virtual        # same workload in virtual time (instant)
    python benchmarks/simulator_calibration.py --url URL        # run the workload against any server
                                                                # (e.g. a real vLLM) instead
    python benchmarks/simulator_calibration.py --fit            # re-fit cpu-smollm2's timing (virtual time)
    python benchmarks/simulator_calibration.py --profile h100-llama3-8b   # vs published H100 figures

The CPU workload is the one FACTS.md measured on the real vLLM CPU engine with SmolLM2-135M: streamed
chat completions, 64 output tokens each (``ignore_eos``), closed-loop clients at concurrency 1, 4, 16
and 64; throughput = output tokens / wall time. Over HTTP the simulator runs in a subprocess, so this
client's CPU does not slow the simulated engine.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import orjson  # noqa: E402

from serving.simulator.engine import Engine  # noqa: E402
from serving.simulator.profiles import Profile, load_profile  # noqa: E402
from serving.simulator.tokenizer import encode_chat  # noqa: E402
from serving.simulator.virtual import closed_loop, run_until_idle  # noqa: E402

#: FACTS.md, "vLLM on CPU": SmolLM2-135M bf16, 64 output tokens, ignore_eos, direct.
MEASURED_CPU = {1: 36.0, 4: 148.0, 16: 292.0, 64: 363.0}
MESSAGES = [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]
OUTPUT_TOKENS = 64


# --- the CPU workload over HTTP ----------------------------------------------------------------------


async def one_request(session: aiohttp.ClientSession, url: str, model: str) -> tuple[int, float]:
    body = {
        "model": model,
        "messages": MESSAGES,
        "max_tokens": OUTPUT_TOKENS,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    ttft = None
    tokens = 0
    async with session.post(url + "/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = orjson.loads(line[6:])
            if ttft is None and chunk.get("choices"):
                ttft = time.perf_counter() - t0
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return tokens, ttft if ttft is not None else float("nan")


async def run_level(url: str, model: str, concurrency: int, rounds: int) -> tuple[float, float]:
    """Closed loop: ``concurrency`` workers, ``rounds`` requests each. Returns (tok/s, TTFT p50)."""
    timeout = aiohttp.ClientTimeout(total=None)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        ttfts: list[float] = []
        total = 0

        async def worker() -> None:
            nonlocal total
            for _ in range(rounds):
                n, ttft = await one_request(session, url, model)
                total += n
                ttfts.append(ttft)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return total / wall, statistics.median(ttfts)


async def model_name(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url + "/v1/models") as resp:
        return (await resp.json())["data"][0]["id"]


def start_simulator(profile: str, time_scale: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.simulator", "--port", "0", "--profile", profile, "--time-scale", str(time_scale)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        proc.kill()
        raise SystemExit(f"simulator did not start: {line!r}")
    return proc, line.split()[1]


def print_table(rows: list[tuple[int, float, float | None, float | None]], label: str) -> None:
    print(f"\n{label}")
    print(f"{'concurrency':>11} | {'simulated tok/s':>15} | {'measured tok/s':>14} | {'ratio':>5} | {'TTFT p50 ms':>11}")
    print("-" * 70)
    for c, sim, ttft, real in rows:
        ratio = f"{sim / real:5.2f}" if real else "    -"
        real_s = f"{real:14.0f}" if real else f"{'-':>14}"
        ttft_s = f"{ttft * 1000:11.0f}" if ttft is not None else f"{'-':>11}"
        print(f"{c:>11} | {sim:15.1f} | {real_s} | {ratio} | {ttft_s}")


async def http_check(args: argparse.Namespace) -> None:
    proc = None
    url = args.url
    if url is None:
        proc, url = start_simulator(args.profile, args.time_scale)
    try:
        model = await model_name(url)
        rows = []
        for c in args.concurrency:
            rounds = args.rounds if c > 1 else max(args.rounds, 4)
            tps, ttft = await run_level(url, model, c, rounds)
            if args.url is None:  # report in simulated time
                tps, ttft = tps * args.time_scale, ttft / args.time_scale
            rows.append((c, tps, ttft, MEASURED_CPU.get(c)))
            print(f"  concurrency {c}: {tps:.1f} tok/s", file=sys.stderr)
        where = args.url or f"simulator {args.profile} (time_scale {args.time_scale}, reported in simulated time)"
        print_table(rows, f"HTTP, {where}; measured = FACTS.md real vLLM CPU engine")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)


# --- virtual time --------------------------------------------------------------------------------------


def cpu_virtual(profile: Profile, concurrency: list[int], rounds: int) -> list[tuple[int, float, float, float | None]]:
    prompt = encode_chat(MESSAGES)
    rows = []
    for c in concurrency:
        r = closed_loop(profile, concurrency=c, num_requests=max(rounds * c, 4), prompt=lambda i: list(prompt), max_tokens=OUTPUT_TOKENS)
        rows.append((c, r.output_tokens_per_s, statistics.median(r.ttfts), MEASURED_CPU.get(c)))
    return rows


def fit_cpu(base: Profile) -> None:
    """Grid search of the decode-side timing parameters, least squares on log(simulated / measured)."""
    prompt = encode_chat(MESSAGES)
    best = None
    grid = itertools.product([8, 11, 14, 17, 20], [6, 9, 12, 15, 18], [1.8, 2.0, 2.2, 2.4, 2.6])
    for overhead, floor, decode in grid:
        p = base.replace(overhead_ms=overhead, floor_ms=floor, decode_seq_ms=decode)
        err = 0.0
        for c, real in MEASURED_CPU.items():
            r = closed_loop(p, concurrency=c, num_requests=3 * c, prompt=lambda i: list(prompt), max_tokens=OUTPUT_TOKENS)
            err += math.log(r.output_tokens_per_s / real) ** 2
        if best is None or err < best[0]:
            best = (err, overhead, floor, decode)
    assert best is not None
    err, overhead, floor, decode = best
    print(f"best fit (prefill_token_ms={base.timing.prefill_token_ms} kept): overhead_ms={overhead} floor_ms={floor} "
          f"decode_seq_ms={decode}  rms log error={math.sqrt(err / len(MEASURED_CPU)):.3f}")
    print_table(cpu_virtual(base.replace(overhead_ms=overhead, floor_ms=floor, decode_seq_ms=decode), sorted(MEASURED_CPU), 3), "virtual time, fitted")


# --- H100: published figures -----------------------------------------------------------------------------

#: Input/output lengths of the 10 ShareGPT prompts in Lambda's 1x H100 result file (a ShareGPT sample).
SHAREGPT_IN = [13, 25, 27, 10, 329, 29, 399, 328, 4, 205]
SHAREGPT_OUT = [120, 429, 233, 194, 101, 741, 9, 3, 6, 31]


def burst(profile: Profile, n: int) -> tuple[float, float, float]:
    """``n`` ShareGPT-shaped requests at once (rps=inf): (output tok/s, median TPOT ms, median TTFT ms)."""
    engine = Engine(profile)
    seqs = [
        engine.add_request([i * 7919 + k for k in range(SHAREGPT_IN[i % 10])], max_tokens=SHAREGPT_OUT[i % 10], ignore_eos=True, now=0.0)
        for i in range(n)
    ]
    end = run_until_idle(engine)
    tpot = statistics.median(
        (s.finished_at - s.first_token_at) / (s.num_output_tokens - 1) for s in seqs if s.num_output_tokens > 1
    )
    ttft = statistics.median(s.first_token_at - s.arrival for s in seqs)
    return sum(s.num_output_tokens for s in seqs) / end, tpot * 1000, ttft * 1000


def h100_check(profile: Profile) -> None:
    print(f"\nvirtual time, {profile.name} vs published figures (docs/simulator.md has the sources)")
    print(f"{'workload':<52} | {'metric':<14} | {'simulated':>9} | {'published':>9} | {'ratio':>5}")
    print("-" * 100)
    tps, tpot, ttft = burst(profile, 10)
    for metric, sim, pub in (("output tok/s", tps, 347.9), ("median TPOT ms", tpot, 7.56), ("median TTFT ms", ttft, 62.4)):
        print(f"{'10 ShareGPT prompts at once [Lambda, Llama-3-8B bf16]':<52} | {metric:<14} | {sim:9.1f} | {pub:9.1f} | {sim / pub:5.2f}")
    tps, tpot, _ = burst(profile.replace(max_num_seqs=256), 5000)
    for metric, sim, pub in (("output tok/s", tps, 8088.35), ("median TPOT ms", tpot, 25.57)):
        print(f"{'5000 ShareGPT prompts, max_num_seqs=256 [Lambda]':<52} | {metric:<14} | {sim:9.1f} | {pub:9.1f} | {sim / pub:5.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu-smollm2")
    ap.add_argument("--url", default=None, help="run the CPU workload against this server instead of a simulator")
    ap.add_argument("--virtual", action="store_true", help="virtual time, no HTTP")
    ap.add_argument("--fit", action="store_true", help="re-fit cpu-smollm2's decode timing in virtual time")
    ap.add_argument("--time-scale", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3, help="requests per client and concurrency level")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    args = ap.parse_args()
    profile = load_profile(args.profile)
    if args.profile.startswith("h100"):
        h100_check(profile)
    elif args.fit:
        fit_cpu(profile)
    elif args.virtual:
        print_table(cpu_virtual(profile, args.concurrency, args.rounds), f"virtual time, {profile.name}; measured = FACTS.md")
    else:
        asyncio.run(http_check(args))


if __name__ == "__main__":
    main()
