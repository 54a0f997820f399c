"""How many simulated replicas can one process serve before its own CPU distorts the simulation?

    python benchmarks/simulator_capacity.py --replicas 8 --concurrency 16 --seconds 20

Starts ``--replicas`` simulated engines in one subprocess (as ``python -m serving.simulator`` does) and
drives each with ``--concurrency`` closed-loop streaming clients from this process. Prints the token
rate clients received, the rate the same load gives in virtual time (what the model says it should
be), their ratio, and the simulator process's CPU use (from /proc). When the ratio drops below ~0.95,
the simulator's event loop is the bottleneck: use fewer replicas per process or a larger
``--time-scale`` (slower simulated hardware, same results in simulated time).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from serving.simulator.profiles import load_profile  # noqa: E402
from serving.simulator.tokenizer import encode_chat  # noqa: E402
from serving.simulator.virtual import closed_loop  # noqa: E402

MESSAGES = [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


async def drive(urls: list[str], model: str, concurrency: int, seconds: float, max_tokens: int) -> int:
    stop_at = time.perf_counter() + seconds
    total = 0
    body = {"model": model, "messages": MESSAGES, "max_tokens": max_tokens, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}

    async def worker(session: aiohttp.ClientSession, url: str) -> None:
        nonlocal total
        while time.perf_counter() < stop_at:
            async with session.post(url + "/v1/chat/completions", json=body) as resp:
                seen = 0
                async for line in resp.content:
                    if time.perf_counter() >= stop_at:
                        break
                    i = line.find(b'"completion_tokens":')
                    if i >= 0:
                        j = i + 20
                        k = j
                        while line[k : k + 1].isdigit():
                            k += 1
                        n = int(line[j:k])
                        total += n - seen
                        seen = n

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None)) as s:
        await asyncio.gather(*(worker(s, u) for u in urls for _ in range(concurrency)))
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu-smollm2")
    ap.add_argument("--replicas", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=16, help="streams per replica")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--time-scale", type=float, default=1.0)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()

    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.simulator", "--profile", args.profile, "--replicas", str(args.replicas),
         "--time-scale", str(args.time_scale)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(args.replicas)]
        if not all(line.startswith("READY ") for line in lines):
            raise SystemExit(f"simulator did not start: {lines!r}")
        urls = [line.split()[1] for line in lines]
        model = lines[0].split("model=")[1].strip()
        cpu0, own0, t0 = cpu_seconds(proc.pid), time.process_time(), time.perf_counter()
        total = asyncio.run(drive(urls, model, args.concurrency, args.seconds, args.max_tokens))
        wall = time.perf_counter() - t0
        cpu = cpu_seconds(proc.pid) - cpu0
        own = time.process_time() - own0
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    profile = load_profile(args.profile)
    prompt = encode_chat(MESSAGES)
    model_rate = closed_loop(profile, concurrency=args.concurrency, num_requests=args.concurrency * 20,
                             prompt=lambda i: list(prompt), max_tokens=args.max_tokens).output_tokens_per_s
    expected = model_rate * args.replicas / args.time_scale
    got = total / wall
    print(f"{args.replicas} replicas x {args.concurrency} streams, {args.profile}, time_scale {args.time_scale}, {wall:.1f} s")
    print(f"  tokens received   {got:10.0f} tok/s (wall)")
    print(f"  model says        {expected:10.0f} tok/s (virtual time, same load)")
    print(f"  ratio             {got / expected:10.2f}")
    print(f"  simulator CPU     {100 * cpu / wall:10.0f} % of one core, {1e6 * cpu / max(total, 1):.0f} us per streamed token")
    print(f"  client CPU        {100 * own / wall:10.0f} % of one core (near 100 %: the client, not the simulator, limits)")


if __name__ == "__main__":
    main()
