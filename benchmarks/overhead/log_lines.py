"""CPU per access line: the standard ``StreamHandler`` (a write per line) against Noor's
``BatchedLineHandler`` (router/telemetry/logs.py), the same JSON access line through each, side by side.

Lines go to a file, or with ``--pipe`` to a pipe read by ``cat`` (what a container's stderr is).

    python benchmarks/overhead/log_lines.py [--pipe] [--n 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from router.telemetry.logs import BatchedLineHandler, JsonFormatter  # noqa: E402

FIELDS = {
    "request_id": "req_0123456789abcdef0123456789abcdef", "tenant": "t_abc", "key": "k_abc", "kind": "chat",
    "model": "bench-model", "pool": "stub", "endpoint": "stub-0", "stream": False, "status": 200, "outcome": "ok",
    "input_tokens": 12, "output_tokens": 5, "latency_ms": 1.234, "ttft_ms": None, "queue_ms": 0.01,
    "gateway_ms": 0.3,
}


def per_line(handler: logging.Handler, n: int) -> float:
    """µs of this process's CPU per line, logged the way ``AccessLog.write`` does."""
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger(f"bench.{id(handler)}")
    log.propagate, log.level = False, logging.INFO
    log.addHandler(handler)
    start = time.process_time()
    for _ in range(n):
        log.handle(log.makeRecord(log.name, logging.INFO, "", 0, "access", None, None, extra={"fields": FIELDS}))
    handler.flush()
    log.removeHandler(handler)
    return (time.process_time() - start) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipe", action="store_true")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False  # as configure_logging
    for _ in range(args.rounds):
        reader = None
        if args.pipe:
            r, w = os.pipe()
            reader = subprocess.Popen(["cat"], stdin=r, stdout=subprocess.DEVNULL)
            os.close(r)
            out = os.fdopen(w, "w")
        else:
            out = tempfile.TemporaryFile("w")
        plain = per_line(logging.StreamHandler(out), args.n)
        batched = per_line(BatchedLineHandler(out.fileno(), interval_s=3600), args.n)
        out.close()
        if reader is not None:
            reader.wait()
        print(f"{'pipe' if args.pipe else 'file'}: StreamHandler {plain:.1f} µs per line, "
              f"BatchedLineHandler {batched:.1f} µs per line ({plain / batched:.2f}x)")


if __name__ == "__main__":
    main()
