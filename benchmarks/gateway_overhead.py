"""What does the gateway add to a request, on one core? Noor and LiteLLM's proxy, side by side, same run.

A fast stub engine (benchmarks/overhead/stub.py) stands in for vLLM; an open-loop load generator
(benchmarks/overhead/loadgen.py) offers fixed rates (Poisson arrivals) and sends every arrival both
straight to the stub ("direct") and through the gateway, at the same instant, so a stall of this shared
machine lands on both, and "added" latency = through − direct at the same offered rate (``--no-paired``:
one run after the other). The direct columns show the load generator holds the rate (achieved ≈ offered,
and how late it sent: ``lag``).

Pinning (``taskset -c``): the gateway runs as ONE worker on ``--gateway-cores`` (default core 1); the
stub, the load generator and Redis (``--redis``) share ``--load-cores`` (default core 0).

Reported:
1. Non-streaming table: offered rate, achieved, errors, p50/p90/p99 direct and through, added p50/p99,
   the gateway's CPU share and CPU per request; then two searches for the maximum rate: strict (p99
   added < 10 ms, errors < 0.1 %) and capacity (p99 added < 100 ms, errors < 1 %).
2. Streaming (64 chunks): added time to first chunk and added per-chunk transit at 16 concurrent
   streams (paired too: each stream through the gateway opened with one straight to the stub); 1,000
   concurrent open streams on one worker.
3. The same for LiteLLM's proxy (installed into its own venv on first use), one worker, same core;
   ``--mini`` adds a minimal raw-ASGI + aiohttp proxy, the floor for any Python gateway.
4. Worker scaling (``--workers-scaling 2,4``): N workers on the first N of ``--scaling-cores``, first at 0.9·N×
   one worker's capacity (the issue's bar), then their own capacity. ``--load-procs K`` splits each rate over K
   load generators (samples merged) and ``--stub-procs K`` runs K stubs on one port, for rates one process
   cannot hold; ``--stub-cores`` puts the stubs on cores of their own.

    python benchmarks/gateway_overhead.py --redis --rt 1 --mini --workers-scaling 2 --json out.json
    python benchmarks/gateway_overhead.py --redis --mini --keep-awake --layout auto --workers-scaling 2,4,6  # 12+ cores
    python benchmarks/gateway_overhead.py --only noor --no-streams --hold 0 --rates 1000 --no-search

Other work on the machine shares these cores: compare numbers within one run only. ``--nice -20``
raises the benchmark's processes (their sessions' autogroups too, see overhead/procs.py) above other
work; ``--rt 1`` runs them under SCHED_FIFO instead, so a woken process runs at once (on this VM a
wake-up otherwise waited milliseconds). Both need root or CAP_SYS_NICE.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from overhead import layout, loadgen, targets  # noqa: E402
from overhead.procs import Proc, free_port, pinned, rt_refused, set_session_nice, wait_http  # noqa: E402

HERE = Path(__file__).resolve().parent
PY = sys.executable
#: name -> (p99 added below this many ms, errors below this share of requests)
CRITERIA = {
    "strict": (10.0, 0.001),  # the issue's: a rate the gateway sustains without hurting latency
    "capacity": (100.0, 0.01),  # FACTS' looser one: the most it carries before it collapses
}


def meets(row: dict, criterion: str) -> bool:
    max_added_p99, max_errors = CRITERIA[criterion]
    via = row["via"]
    return bool(
        via["latency_ms"].get("n") and via["errors"] <= max_errors * max(1, via["sent"])
        and row.get("added_p99", 1e9) < max_added_p99
    )


@dataclass
class Bench:
    args: argparse.Namespace
    log_dir: Path
    stub_url: str = ""
    hold_url: str = ""
    procs: list[Proc] = field(default_factory=list)
    redis: Proc | None = None
    redis_port: int = 0
    measured: dict[str, dict[float, dict]] = field(default_factory=dict)  # target -> rate -> row

    # ---- processes

    def start(self, name: str, cmd: list[str], cores: str, env: dict | None = None, rt: int | None = None) -> Proc:
        proc = Proc(name, cmd, cores=cores, nice=self.args.nice, env=os.environ | (env or {}), log_dir=self.log_dir,
                    cwd=targets.REPO, rt=self.args.rt if rt is None else rt)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()

    def start_stubs(self) -> None:
        port, hold_port = free_port(), free_port()
        cores = self.args.stub_cores or self.args.load_cores
        many = ["--reuse-port"] if self.args.stub_procs > 1 else []
        for i in range(self.args.stub_procs):  # several share the port: the kernel spreads the connections
            stub = self.start(f"stub-{i}" if i else "stub", [PY, str(HERE / "overhead" / "stub.py"), "--port", str(port),
                                                             "--interval-ms", str(self.args.chunk_interval_ms), *many], cores)
        hold = self.start("stub-hold", [PY, str(HERE / "overhead" / "stub.py"), "--port", str(hold_port),
                                        "--interval-ms", str(self.args.hold_interval_ms)], cores)
        self.stub_url, self.hold_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{hold_port}"
        wait_http(self.stub_url + "/health", 20, stub)
        wait_http(self.hold_url + "/health", 20, hold)

    def keep_awake(self, cores: str) -> None:
        """One SCHED_IDLE busy loop per core in ``cores``: it runs only when nothing else wants the core, so
        the core never idles. On this Firecracker VM an idle vCPU halts (cpuidle driver "none", no guest
        halt-polling) and every wake-up is paid in latency and in the woken process's CPU; this is the user
        space equivalent of what latency-tuned hosts set (``idle=poll``, ``cpu_dma_latency`` 0: tuned's
        latency-performance profile). Every gateway measured in a run gets the same cores."""
        for core in sorted(cpu_list(cores)):
            self.start(f"awake-{core}", ["chrt", "-i", "0", PY, "-c", "while True: pass"], str(core), rt=0)

    def start_redis(self) -> str:
        port = free_port()
        exe = shutil.which("redis-server") or "redis-server"
        proc = self.start("redis", [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                          self.args.redis_cores or self.args.load_cores,
                          rt=self.args.redis_rt if self.args.redis_rt is not None else self.args.rt)
        deadline = time.monotonic() + 10
        while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True).stdout.strip() != "PONG":
            if time.monotonic() > deadline or not proc.alive():
                raise RuntimeError(f"redis-server did not start:\n{proc.tail()}")
            time.sleep(0.1)
        self.redis, self.redis_port = proc, port
        return f"redis://127.0.0.1:{port}/0"

    def redis_commands(self) -> dict[str, tuple[int, int]]:
        """Redis's own count of calls and microseconds per command (``INFO commandstats``), to say what a
        request costs Redis and which command it goes to."""
        if not self.redis_port:
            return {}
        out = subprocess.run(["redis-cli", "-p", str(self.redis_port), "INFO", "commandstats"], capture_output=True,
                             text=True).stdout
        stats = {}
        for line in out.splitlines():
            if line.startswith("cmdstat_"):
                name, _, fields = line[len("cmdstat_"):].partition(":")
                kv = dict(f.split("=", 1) for f in fields.split(","))
                stats[name] = (int(kv["calls"]), int(kv["usec"]))
        return stats

    def start_target(self, target: targets.Target, cores: str) -> Proc:
        proc = self.start(target.name, target.cmd, cores, target.env)
        wait_http(target.url + target.ready_path, self.args.start_timeout, proc, target.ready_headers)
        return proc

    # ---- load

    def loadgen(self, *argv: str) -> dict:
        return self.loadgens([list(argv)])[0]

    def loadgens(self, argvs: list[list[str]]) -> list[dict]:
        """Load generators with these arguments, all at once on the load cores; each one's JSON result."""
        popens = [subprocess.Popen(pinned([PY, str(HERE / "overhead" / "loadgen.py"), *argv], self.args.load_cores,
                                          self.args.nice, self.args.rt),
                                   cwd=targets.REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True) for argv in argvs]
        for popen in popens:
            set_session_nice(popen.pid, self.args.nice)
        results = []
        for popen in popens:
            out, err = popen.communicate()
            if popen.returncode != 0:
                raise RuntimeError(f"loadgen failed: {err[-2000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
        return results

    def rate(self, url: str, key: str | None, rate: float, model: str = targets.MODEL, baseline: str | None = None) -> dict:
        """``rate`` req/s from one load generator, or from ``--load-procs`` of them at once, each offering
        its share (for rates one process cannot hold: several workers' capacity), their samples merged."""
        k = self.args.load_procs
        conns = str(max(4, min(64, int(rate / k / 50))))
        argv = ["rate", "--url", url, "--rate", str(rate / k), "--duration", str(self.args.duration),
                "--warmup", str(self.args.warmup), "--connections", conns, "--model", model,
                "--arrivals", self.args.arrivals, "--grace", str(self.args.grace)]
        if key:
            argv += ["--key", key]
        if baseline:
            argv += ["--baseline-url", baseline]
        if k == 1:
            return self.loadgen(*argv)
        files = [self.log_dir / f"samples-{i}.json" for i in range(k)]
        results = self.loadgens([[*argv, "--samples", str(f)] for f in files])
        samples = [json.loads(f.read_bytes()) for f in files]
        for f in files:
            f.unlink()
        return loadgen.merge_rate(results, samples)

    def settle(self, proc: Proc, idle_share: float = 0.05, limit_s: float = 8.0) -> None:
        """Wait until the gateway is idle (under ``idle_share`` of a core over 0.25 s): a row must not start
        while the gateway still works off the one before (a collapsed search step leaves seconds of backlog:
        queued requests, usage records to write and fold)."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            cpu0, t0 = proc.cpu_seconds(), time.monotonic()
            time.sleep(0.25)
            if (proc.cpu_seconds() - cpu0) / (time.monotonic() - t0) < idle_share:
                return
        print(f"  (the gateway was still busy {limit_s:g} s after the last run; measuring anyway)", flush=True)

    def pair(self, target: targets.Target, proc: Proc, rate: float) -> dict:
        """Direct and through the gateway at ``rate``, with the gateway's CPU share during the run.

        Paired (the default), one load generator sends each arrival both ways at the same instant, so a
        stall of the machine lands on both; otherwise direct runs first, then through.
        """
        self.settle(proc)
        direct = None if self.args.paired else self.rate(self.stub_url, None, rate)
        redis0, cmds0 = (self.redis.cpu_seconds() if self.redis else 0.0), self.redis_commands()
        by_pid0, t0 = proc.cpu_by_pid(), time.monotonic()
        via = self.rate(target.url, target.key, rate, baseline=self.stub_url if self.args.paired else None)
        if direct is None:
            direct = via.pop("baseline")
        wall = time.monotonic() - t0
        by_pid = {pid: s - by_pid0.get(pid, 0.0) for pid, s in proc.cpu_by_pid().items()}
        cpu_s = sum(by_pid.values())
        cpu = cpu_s / wall
        n = max(1, via.get("sent_total", 1))
        row = {"offered": rate, "direct": direct, "via": via, "gateway_cpu": round(cpu, 3),
               "gateway_cpu_us_per_request": round(1e6 * cpu_s / n, 1)}
        if len(by_pid) > 1:  # several workers: each one's share of a core, busiest first (is the load even?)
            row["gateway_cpu_per_process"] = sorted((round(s / wall, 3) for s in by_pid.values()), reverse=True)
        if self.redis and target.name == "noor":
            # Redis's CPU over the run (its process, wall to wall) and its commands per request: what one
            # Redis core can serve caps a fleet of workers sharing it.
            row["redis_cpu_us_per_request"] = round(1e6 * (self.redis.cpu_seconds() - redis0) / n, 1)
            cmds = {k: (c - cmds0.get(k, (0, 0))[0], u - cmds0.get(k, (0, 0))[1])
                    for k, (c, u) in self.redis_commands().items()}
            row["redis_commands_per_request"] = {k: {"calls": round(c / n, 3), "usec": round(u / n, 1)}
                                                 for k, (c, u) in sorted(cmds.items()) if c > 0 and k != "info"}
        d, v = direct["latency_ms"], via["latency_ms"]
        if d.get("n") and v.get("n"):
            row["added_p50"] = round(v["p50"] - d["p50"], 3)
            row["added_p99"] = round(v["p99"] - d["p99"], 3)
        row["sustained"] = meets(row, "strict")
        row["carried"] = meets(row, "capacity")
        print(fmt_row(row), flush=True)
        self.measured.setdefault(target.name, {})[rate] = row
        return row

    def profile(self, target: targets.Target, proc: Proc, rate: float, out: Path) -> None:
        """py-spy (from PyPI) samples the gateway while it serves ``rate``; collapsed stacks go to ``out``."""
        spy = Proc("py-spy", [shutil.which("py-spy") or str(Path(PY).parent / "py-spy"), "record", "--pid", str(proc.pid), "--subprocesses",
                              "--rate", "250", "--format", "raw", "--nonblocking", "--output", str(out),
                              "--duration", str(int(self.args.duration + self.args.warmup))],
                   cores=self.args.load_cores, log_dir=self.log_dir)
        time.sleep(0.5)
        self.rate(target.url, target.key, rate)
        spy.popen.wait(30)
        print(f"  profile at {rate:.0f} req/s → {out}", flush=True)

    def table(self, target: targets.Target, proc: Proc, rates: list[float]) -> list[dict]:
        return [self.pair(target, proc, r) for r in rates]

    def search(self, target: targets.Target, proc: Proc, start: float, floor: float, criterion: str) -> dict:
        """Largest rate meeting ``criterion``: grow ×1.25 from ``start`` until it fails, then bisect twice.

        A rate already measured in this run (by the table or the other criterion's search) is reused.
        """
        rows: list[dict] = []
        lo, hi, r = None, None, start
        seen = self.measured.setdefault(target.name, {})

        def at(rate: float) -> dict:
            row = seen.get(rate) or self.pair(target, proc, rate)
            rows.append(row)
            return row

        for _ in range(self.args.search_steps):
            row = at(r)
            if meets(row, criterion):
                lo = r
                if hi is not None:
                    break
                r = round(r * 1.25)
            else:
                hi = r
                if lo is not None:
                    break
                if r / 1.25 < floor:
                    break
                r = round(r / 1.25)
        for _ in range(self.args.refine if lo is not None and hi is not None else 0):
            mid = round((lo + hi) / 2)
            row = at(mid)
            lo, hi = (mid, hi) if meets(row, criterion) else (lo, mid)
        return {"criterion": criterion, "limits": CRITERIA[criterion], "max": lo, "first_failing": hi, "rows": rows}

    def streams(self, target: targets.Target | None, concurrency: int, baseline: str | None = None) -> dict:
        url, key = (target.url, target.key) if target else (self.stub_url, None)
        argv = ["streams", "--url", url, "--concurrency", str(concurrency), "--duration", str(self.args.stream_duration),
                "--warmup", str(self.args.warmup), "--chunks", str(self.args.chunks), "--model", targets.MODEL]
        return self.loadgen(*argv, *(["--key", key] if key else []), *(["--baseline-url", baseline] if baseline else []))

    def hold(self, target: targets.Target | None, n: int) -> dict:
        url, key = (target.url, target.key) if target else (self.hold_url, None)
        argv = ["hold", "--url", url, "--concurrency", str(n), "--ramp", str(self.args.hold_ramp),
                "--chunks", str(self.args.chunks), "--model", "bench-hold", "--grace", "120"]
        return self.loadgen(*argv, *(["--key", key] if key else []))

    def stream_section(self, target: targets.Target, proc: Proc) -> dict:
        """16 streams back to back; paired (the default), each with one straight to the stub opened at the
        same instant, as the rate rows are; otherwise the direct run first, then the one through."""
        self.settle(proc)
        n = self.args.stream_concurrency
        direct = None if self.args.paired else self.streams(None, n)
        cpu0, t0 = proc.cpu_seconds(), time.monotonic()
        via = self.streams(target, n, baseline=self.stub_url if self.args.paired else None)
        cpu = (proc.cpu_seconds() - cpu0) / (time.monotonic() - t0)
        if direct is None:
            direct = via.pop("baseline")
        out = {"concurrency": n, "paired": self.args.paired, "direct": direct, "via": via, "gateway_cpu": round(cpu, 3)}
        for what in ("ttft_ms", "chunk_transit_ms"):
            d, v = direct[what], via[what]
            if d.get("n") and v.get("n"):
                out[f"added_{what}"] = {q: round(v[q] - d[q], 3) for q in ("p50", "p90", "p99")}
        print(f"  streams x{n}: {json.dumps({k: v for k, v in out.items() if k.startswith('added')})} "
              f"({via['ttft_ms'].get('n', 0)} streams, {via['chunk_transit_ms'].get('n', 0)} chunks) "
              f"errors direct={direct['errors']} via={via['errors']} gw cpu={cpu:.0%}", flush=True)
        return out

    def hold_section(self, target: targets.Target, proc: Proc, n: int) -> dict:
        self.settle(proc)
        cpu0, t0 = proc.cpu_seconds(), time.monotonic()
        via = self.hold(target, n)
        cpu = (proc.cpu_seconds() - cpu0) / (time.monotonic() - t0)
        print(f"  hold {n} streams: ok={via['ok']} errors={via['errors']} max_open={via['max_open']} "
              f"ttft p99={via['ttft_ms'].get('p99')} ms chunk transit p99={via['chunk_transit_ms'].get('p99')} ms "
              f"gw cpu={cpu:.0%}", flush=True)
        return {"streams": n, "via": via, "gateway_cpu": round(cpu, 3)}


def fmt_ms(s: dict) -> str:
    return f"{s['p50']:.2f} / {s['p90']:.2f} / {s['p99']:.2f}" if s.get("n") else "—"


def fmt_row(row: dict) -> str:
    d, v = row["direct"], row["via"]
    added = f"{row['added_p50']:.2f} / {row['added_p99']:.2f}" if "added_p50" in row else "—"
    return (
        f"| {row['offered']:.0f} | {d['achieved']:.0f} | {fmt_ms(d['latency_ms'])} | {v['achieved']:.0f} | "
        f"{v['errors']} | {fmt_ms(v['latency_ms'])} | {added} | {row['gateway_cpu']:.0%} "
        f"({row['gateway_cpu_us_per_request']:.0f} µs/req"
        + (f"; per process {' '.join(f'{c:.0%}' for c in row['gateway_cpu_per_process'])}"
           if "gateway_cpu_per_process" in row else "")
        + (f"; Redis {row['redis_cpu_us_per_request']:.0f} µs/req" if "redis_cpu_us_per_request" in row else "")
        + ") | "
        f"{d['lag_ms'].get('p99', 0):.2f} / {v['lag_ms'].get('p99', 0):.2f} | "
        f"{'yes' if row['sustained'] else 'no'} / {'yes' if row['carried'] else 'no'} |"
    )


TABLE_HEAD = (
    "| offered req/s | direct achieved | direct p50 / p90 / p99 ms | via achieved | via errors | via p50 / p90 / p99 ms "
    "| added p50 / p99 ms | gateway CPU | send lag p99 direct / via ms | strict / capacity |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def cpu_list(spec: str) -> set[int]:
    """taskset's list syntax: "0", "0,1", "0-3,6"."""
    out: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def machine() -> dict:
    return {
        "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(), "python": platform.python_version(),
        "kernel": platform.release(),
    }


def run_target(bench: Bench, name: str, make: callable, rates: list[float], search_from: float, floor: float,
               gateway_cores: str, streams: bool, hold: int, criteria: str | None = None) -> dict:
    target = make()
    bench.measured.clear()  # rates measured are reused within one target's run only
    print(f"\n## {name} (gateway on cores {gateway_cores}, load on {bench.args.load_cores})\n\n{TABLE_HEAD}", flush=True)
    proc = bench.start_target(target, gateway_cores)
    try:
        if bench.args.profile and target.name == "noor":
            bench.profile(target, proc, bench.args.profile_rate, bench.args.profile)
        result: dict = {"cmd": target.cmd, "table": bench.table(target, proc, rates)}
        for criterion in (criteria or bench.args.criteria).split(",") if bench.args.search else []:
            added, errors = CRITERIA[criterion]
            print(f"\nmax rate search, {criterion}: p99 added < {added:g} ms, errors < {errors:.1%}", flush=True)
            found = bench.search(target, proc, search_from, floor, criterion)
            result.setdefault("search", {})[criterion] = found
            search_from = found["max"] or search_from
            print(f"  → {criterion} max ≈ {found['max']} req/s", flush=True)
        if streams:
            result["streams"] = bench.stream_section(target, proc)
        if hold:
            result["hold"] = bench.hold_section(target, proc, hold)
        return result
    finally:
        bench.stop(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["noor", "litellm", "both"], default="both")
    ap.add_argument("--mini", action="store_true", help="also measure a minimal raw-ASGI + aiohttp proxy (the Python floor)")
    ap.add_argument("--layout", choices=["given", "auto"], default="given",
                    help="auto: on a machine with 6+ cores, a core of its own for the gateway and Redis, cores for "
                         "the stubs, the load generators and the scaling workers (overhead/layout.py), in place of "
                         "the core options")
    ap.add_argument("--gateway-cores", default="1")
    ap.add_argument("--load-cores", default="0")
    ap.add_argument("--nice", type=int, default=0, help="niceness for every process started here (negative: above other work)")
    ap.add_argument("--rt", type=int, default=0, help="SCHED_FIFO priority for every process started here (0: off)")
    ap.add_argument("--redis-cores", default=None,
                    help="cores for the redis-server (default: the load cores); on a machine with cores to spare, "
                         "one of its own, as a production Redis has")
    ap.add_argument("--redis-rt", type=int, default=None,
                    help="SCHED_FIFO priority for the redis-server (default: --rt); above --rt, it runs the moment "
                         "it is woken instead of waiting for the load generator or the stub to end a loop pass")
    ap.add_argument("--keep-awake", action="store_true",
                    help="keep the benchmark's cores from idling (a SCHED_IDLE busy loop on each): what idle=poll or "
                         "cpu_dma_latency=0 give a latency-tuned host; this VM halts idle vCPUs")
    ap.add_argument("--rates", default="250,500,1000,1500,2000")
    ap.add_argument("--litellm-rates", default="10,25,50,100")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--grace", type=float, default=10.0)
    ap.add_argument("--arrivals", choices=["poisson", "uniform"], default="poisson")
    ap.add_argument("--paired", action=argparse.BooleanOptionalAction, default=True,
                    help="send each arrival (and open each of the 16 streams) direct and through at once (default) "
                         "instead of one run after the other")
    ap.add_argument("--search", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--search-steps", type=int, default=10)
    ap.add_argument("--criteria", default="strict,capacity", help="which max-rate searches: strict, capacity or both")
    ap.add_argument("--refine", type=int, default=2)
    ap.add_argument("--streams", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--hold", type=int, default=1000, help="concurrent open streams to hold on one worker (0: skip)")
    ap.add_argument("--hold-ramp", type=float, default=3.0)
    ap.add_argument("--chunks", type=int, default=64)
    ap.add_argument("--stream-concurrency", type=int, default=16, help="concurrent streams (the issue's: 16)")
    ap.add_argument("--stream-duration", type=float, default=15.0,
                    help="seconds of streams measured (16 streams of 64 chunks 5 ms apart: ~50 streams a second); "
                         "a TTFT p99 needs hundreds of streams to mean anything, 4 s gives ~200")
    ap.add_argument("--chunk-interval-ms", type=float, default=5.0)
    ap.add_argument("--hold-interval-ms", type=float, default=100.0)
    ap.add_argument("--redis", action="store_true", help="start a redis-server (on the load cores) as Noor's store and limiter")
    ap.add_argument("--store-url", default=None, help="Noor's store (default: SQLite in a temp dir)")
    ap.add_argument("--server", default="uvicorn", help="Noor's ASGI server(s): uvicorn (noor serve), granian, or both: uvicorn,granian")
    ap.add_argument("--workers-scaling", default="",
                    help="also measure N workers (a list: 2,4,8) on the first N of --scaling-cores, each against one")
    ap.add_argument("--scaling-cores", default="0,1")
    ap.add_argument("--stub-cores", default=None, help="cores for the stubs (default: the load cores)")
    ap.add_argument("--stub-procs", type=int, default=1,
                    help="stub processes sharing its port (SO_REUSEPORT), for rates one cannot answer")
    ap.add_argument("--load-procs", type=int, default=1,
                    help="load generators offering each rate together (their samples merged), for rates one cannot "
                         "hold; give them as many --load-cores")
    ap.add_argument("--concurrency-cap", action="store_true", help="give the bench tenant a (huge) concurrency cap too")
    ap.add_argument("--no-tokenizer", action="store_true", help="serve without a tokenizer (prompts not counted)")
    ap.add_argument("--noor-env", action="append", default=[], help="extra NAME=VALUE for Noor's environment")
    ap.add_argument("--litellm-venv", type=Path, default=targets.DEFAULT_LITELLM_VENV)
    ap.add_argument("--start-timeout", type=float, default=120.0)
    ap.add_argument("--profile", type=Path, default=None, help="py-spy Noor's worker into this file (collapsed stacks)")
    ap.add_argument("--profile-rate", type=float, default=1000.0)
    ap.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = ap.parse_args()
    if args.layout == "auto":
        if (cores := layout.auto()) is None:
            print(f"# --layout auto: {len(layout.physical_cores())} cores, too few; the core options stay", flush=True)
        else:
            cores["scaling_cores"] = cores["scaling_cores"] or args.scaling_cores
            vars(args).update(cores)
            print("# --layout auto: " + ", ".join(f"{k} {v}" for k, v in cores.items()), flush=True)
    # Stopped by a timeout or a kill: still stop every process started here and write the figures so far.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    for rt in {args.rt, args.redis_rt or 0} - {0}:
        if why := rt_refused(rt):
            sys.exit(f"--rt/--redis-rt {rt}: SCHED_FIFO is refused on this machine ({why}); run without it")
    rates = [float(r) for r in args.rates.split(",") if r]  # --rates "": no table (streams only, say)
    scaling = [int(n) for n in args.workers_scaling.split(",") if n and int(n) > 1]
    top = max(rates, default=1000.0)
    run_dir = Path(tempfile.mkdtemp(prefix="noor-overhead-"))
    bench = Bench(args, run_dir)
    report: dict = {"argv": sys.argv, "machine": machine(), "pinning": {
        "gateway": args.gateway_cores, "loadgen": args.load_cores, "stub": args.stub_cores or args.load_cores,
        "redis": args.redis_cores or args.load_cores, "load_procs": args.load_procs, "stub_procs": args.stub_procs,
        "nice": args.nice, "rt": args.rt, "redis_rt": args.redis_rt,
        "keep_awake": args.keep_awake}}
    tokenizer = None if args.no_tokenizer else targets.find_tokenizer()
    extra_env = dict(kv.split("=", 1) for kv in args.noor_env)
    print(f"# gateway overhead — logs in {run_dir}; tokenizer: {tokenizer or 'none'}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    try:
        if args.keep_awake:
            cores = ",".join([args.gateway_cores, args.load_cores] + ([args.scaling_cores] if scaling else [])
                             + ([args.redis_cores] if args.redis_cores else [])
                             + ([args.stub_cores] if args.stub_cores else []))
            bench.keep_awake(cores)
            print(f"# cores {cores} kept awake (a SCHED_IDLE busy loop each)", flush=True)
        bench.start_stubs()
        store_url = args.store_url or (bench.start_redis() if args.redis else None)
        report["store"] = store_url or "sqlite"
        stubs = {targets.MODEL: bench.stub_url, "bench-hold": bench.hold_url}

        def make_noor(workers: int = 1, server: str = "uvicorn") -> targets.Target:
            sub = run_dir / f"noor-{workers}w-{time.monotonic_ns()}"
            limits = dict(targets.BENCH_LIMITS, **({"max_concurrent": 10**6} if args.concurrency_cap else {}))
            return targets.noor(stubs, sub, free_port(), store_url=store_url, workers=workers, server=server, limits=limits,
                                tokenizer=tokenizer, extra_env=extra_env)

        servers = args.server.split(",")
        if args.only in ("noor", "both"):
            for server in servers:
                name = "noor" if server == servers[0] else f"noor-{server}"
                report[name] = run_target(bench, f"Noor ({server})", lambda s=server: make_noor(server=s), rates,
                                          top, 100, args.gateway_cores, args.streams, args.hold)
                report[name]["server"] = server
        if args.mini:
            report["mini"] = run_target(bench, "minimal proxy (raw ASGI + aiohttp, no features)",
                                        lambda: targets.mini(bench.stub_url, free_port()), rates, top, 100,
                                        args.gateway_cores, args.streams, 0)
        if args.only in ("litellm", "both"):
            print("\ninstalling/checking LiteLLM in", args.litellm_venv, flush=True)
            targets.ensure_litellm(args.litellm_venv)
            report["litellm_version"] = targets.litellm_version(args.litellm_venv)
            lrates = [float(r) for r in args.litellm_rates.split(",") if r]
            report["litellm"] = run_target(
                bench, f"LiteLLM {report['litellm_version']}",
                lambda: targets.litellm(bench.stub_url, run_dir / "litellm", free_port(), venv=args.litellm_venv),
                lrates, lrates[len(lrates) // 2], min(lrates), args.gateway_cores, args.streams, 0,
            )
        one = _max(report.get("noor"), "capacity") or top
        spare = sorted(cpu_list(args.scaling_cores))
        for n in scaling:
            if n > len(spare):
                print(f"\n## worker scaling: {n} workers skipped, --scaling-cores has {len(spare)}", flush=True)
                continue
            cores = ",".join(map(str, spare[:n]))
            print(f"\n## worker scaling: {n} workers on cores {cores} (one worker's capacity: {one})", flush=True)
            # First at 0.9·N× one worker's capacity (the bar), then their own capacity from there.
            goal = round(0.9 * n * one)
            result = run_target(bench, f"Noor ×{n}", lambda n=n: make_noor(n, servers[0]), [goal], goal, 100,
                                cores, False, 0, criteria="capacity")
            result.update(workers=n, cores=cores, goal=goal)
            report.setdefault("scaling", []).append(result)
        report["machine"]["loadavg_end"] = os.getloadavg()
        summarize(report)
    finally:
        bench.stop_all()
        if args.json:
            args.json.write_text(json.dumps(report, indent=1))
            print(f"\nfigures written to {args.json}")


def _max(result: dict | None, criterion: str) -> float | None:
    return ((result or {}).get("search") or {}).get(criterion, {}).get("max")


def _at(result: dict | None, rate: float) -> dict | None:
    return next((r for r in (result or {}).get("table", []) if r["offered"] == rate), None)


def summarize(report: dict) -> None:
    """The figures the issue asks for, and the ratios, all from this run."""
    print("\n## summary (same run)")
    named = [(k, report[k]) for k in report if k.startswith(("noor", "mini", "litellm")) and isinstance(report[k], dict)
             and "table" in report[k]]
    for name, result in named:
        for criterion in CRITERIA:
            m = _max(result, criterion)
            if criterion in (result.get("search") or {}):
                print(f"- {name}: {criterion} max rate {m if m is not None else 'none measured'} req/s")
        row = _at(result, 1000.0)
        if row and "added_p50" in row:
            print(f"- {name} at 1,000 req/s: added p50 {row['added_p50']:.2f} ms, p99 {row['added_p99']:.2f} ms, "
                  f"{row['gateway_cpu_us_per_request']:.0f} µs CPU per request")
        st = result.get("streams")
        if st and "added_ttft_ms" in st:
            print(f"- {name} streams x{st['concurrency']}: added TTFT p50/p99 {st['added_ttft_ms']['p50']:.2f}/{st['added_ttft_ms']['p99']:.2f} ms, "
                  f"added per-chunk p50/p99 {st['added_chunk_transit_ms']['p50']:.3f}/{st['added_chunk_transit_ms']['p99']:.3f} ms")
        if result.get("hold"):
            h = result["hold"]["via"]
            print(f"- {name} {result['hold']['streams']} open streams: {h['ok']} ok, {h['errors']} errors, max open {h['max_open']}")
    noor, lite, mini = report.get("noor"), report.get("litellm"), report.get("mini")
    for criterion in CRITERIA:
        n, l, m = _max(noor, criterion), _max(lite, criterion), _max(mini, criterion)
        if n and l:
            print(f"- {criterion} max rate, Noor / LiteLLM: {n / l:.0f}×")
        if n and m:
            print(f"- {criterion} max rate, Noor / minimal proxy: {n / m:.2f}")
    n1 = _max(noor, "capacity")
    for sc in report.get("scaling", []):
        m, goal = _max(sc, "capacity"), _at(sc, sc["goal"])
        if n1 and m:
            print(f"- {sc['workers']} workers: capacity {m} req/s = {m / n1:.2f}× one worker's {n1}")
        if goal:
            print(f"- {sc['workers']} workers at 0.9·{sc['workers']}× one worker ({sc['goal']} req/s): "
                  f"{'carried' if goal['carried'] else 'NOT carried'}, achieved {goal['via']['achieved']:.0f}, "
                  f"errors {goal['via']['errors']}, added p99 {goal.get('added_p99', float('nan')):.2f} ms")


if __name__ == "__main__":
    main()
