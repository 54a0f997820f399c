"""``python -m serving.simulator --port P --profile NAME [--replicas N --base-port P] [--time-scale X]``

Runs one or more simulated vLLM engines in one process until SIGINT/SIGTERM. Prints one line per
replica (``READY <url>``) once all listen, so scripts can wait for it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from .cluster import run_simulators
from .profiles import available_profiles, load_profile


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m serving.simulator", description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu-smollm2", help=f"bundled name ({', '.join(available_profiles())}) or a .toml path")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=None, help="port of a single replica (0 = any free port)")
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--base-port", type=int, default=None, help="replica i listens on base-port + i")
    ap.add_argument("--time-scale", type=float, default=1.0, help="wall seconds per simulated second (<1 runs faster)")
    ap.add_argument("--served-model-name", default=None)
    ap.add_argument("--max-num-seqs", type=int, default=None)
    ap.add_argument("--max-model-len", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.port is not None and args.base_port is not None:
        ap.error("give --port (one replica) or --base-port (several), not both")
    if args.port is not None and args.replicas != 1:
        ap.error("--port is for one replica; use --base-port with --replicas")
    return args


async def main(args: argparse.Namespace) -> None:
    overrides = {k: v for k, v in (("max_num_seqs", args.max_num_seqs), ("max_model_len", args.max_model_len)) if v is not None}
    profile = load_profile(args.profile, **overrides)
    base_port = args.base_port if args.base_port is not None else (args.port or None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with run_simulators(
        args.replicas,
        profile,
        time_scale=args.time_scale,
        host=args.host,
        base_port=base_port,
        served_model_name=args.served_model_name,
        seed=args.seed,
    ) as urls:
        for url in urls:
            print(f"READY {url} profile={profile.name} model={urls.servers[0].model_name}", flush=True)
        await stop.wait()


def run(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        import uvloop  # the same loop the gateway runs on, where installed

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(args))
    sys.exit(0)


if __name__ == "__main__":
    run()
