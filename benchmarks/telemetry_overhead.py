"""What does telemetry cost the gateway? Metrics + tracing on vs off, same offered load.

A fast upstream (tests/stub_engine.py: an OpenAI-speaking aiohttp server, 16 streamed tokens per
request, no model) sits behind the gateway so the gateway's own work dominates. One gateway process
per configuration (uvicorn + uvloop + httptools, as in production), all running side by side:

  off       metrics off, tracing none, access log off
  metrics   Prometheus metrics only
  traced    metrics + tracing at the default sampling ratio (OTLP/HTTP exporter to a sink in the stub)
  traced100 metrics + tracing with every request sampled
  full      traced + the JSON access log (written to a file)

Paired, because this machine is shared and its speed drifts by tens of percent from minute to minute:
every configuration is measured in the same time window, so drift hits all of them alike.
  * open loop: each gateway gets the same fixed request rate (requests start on schedule, not when
    the previous ends; latency from the scheduled start); the figure is each gateway's CPU time per
    request (/proc, all threads — the span exporter's included);
  * closed loop: N clients per gateway, all gateways at once, as fast as each answers: the OS shares
    the CPU, so a gateway that needs more CPU per request serves fewer requests per second.
Fresh processes every round; medians over rounds. Also measured in process: each telemetry part's
CPU per request alone (``--components``).

    python benchmarks/telemetry_overhead.py [--rate 40] [--seconds 10] [--rounds 5]

Target: metrics + tracing (default sampling) cost <= 5 % of the gateway's CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import free_port  # noqa: E402

MODEL = "bench"
ADMIN = "bench-admin-token"
CONFIGS = {
    "off": {"METRICS_ENABLED": "false", "TRACES_EXPORTER": "none", "ACCESS_LOG": "false"},
    "metrics": {"METRICS_ENABLED": "true", "TRACES_EXPORTER": "none", "ACCESS_LOG": "false"},
    # tracing at the default sampling ratio, and with every request traced
    "traced": {"METRICS_ENABLED": "true", "TRACES_EXPORTER": "otlp", "ACCESS_LOG": "false"},
    "traced100": {"METRICS_ENABLED": "true", "TRACES_EXPORTER": "otlp", "ACCESS_LOG": "false", "TRACES_SAMPLE_RATIO": "1.0"},
    "full": {"METRICS_ENABLED": "true", "TRACES_EXPORTER": "otlp", "ACCESS_LOG": "true"},
}
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me about the sea."}], "max_tokens": 16, "stream": True}
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """user + system CPU of a process, all its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


@dataclass
class Result:
    config: str
    ok: int = 0
    errors: int = 0
    seconds: float = 0.0
    cpu_s: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def cpu_us_per_req(self) -> float:
        return self.cpu_s / self.ok * 1e6 if self.ok else float("nan")

    def pct(self, q: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000.0 if xs else float("nan")


async def _one(session: aiohttp.ClientSession, url: str, headers: dict) -> bool:
    async with session.post(url, json=BODY, headers=headers) as r:
        if r.status != 200:
            await r.read()
            return False
        done = False
        async for line in r.content:
            if line.startswith(b"data: [DONE]"):
                done = True
        return done


def start_stub(port: int, tokens: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.stub_engine", "--port", str(port), "--tokens", str(tokens)], cwd=ROOT)


def start_gateway(config: str, stub_url: str, data: Path, port: int, pin: str | None) -> subprocess.Popen:
    catalog = data / "catalog.toml"
    catalog.write_text(
        f'[pools.stub]\nengine = "vllm"\nendpoints = ["{stub_url}"]\n\n[models.{MODEL}]\npool = "stub"\ncontext_length = 4096\n'
    )
    env = os.environ | {
        "NOOR_CATALOG_PATH": str(catalog), "NOOR_DATA_DIR": str(data), "NOOR_SERVER__ADMIN_TOKEN": ADMIN,
        "NOOR_TELEMETRY__OTLP_ENDPOINT": f"{stub_url}/v1/traces", "NOOR_TELEMETRY__LOG_LEVEL": "INFO",
        "PYTHONPATH": str(ROOT),
    } | {f"NOOR_TELEMETRY__{k}": v for k, v in CONFIGS[config].items()}
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "router.app:create_app", "--host", "127.0.0.1",
           "--port", str(port), "--loop", "uvloop", "--http", "httptools", "--log-level", "warning", "--no-access-log"]
    if pin is not None:
        cmd = ["taskset", "-c", pin, *cmd]
    log = open(data / f"gateway-{config}.log", "ab")  # the access log lands here, as in production
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=log, stdout=log)


def wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/ready").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready")


@dataclass
class Running:
    config: str
    proc: subprocess.Popen
    url: str
    key: str = ""


async def paired_open_loop(gws: list[Running], rate: float, seconds: float, warmup: float) -> dict[str, Result]:
    """The same schedule for every gateway: at each tick one request to each, in a shuffled order."""
    results = {g.config: Result(g.config) for g in gws}
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as session:
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task] = []
        total, n_warm = int((warmup + seconds) * rate), int(warmup * rate)
        cpu0: dict[str, float] = {}
        w0 = 0.0
        rng = random.Random(7)

        async def fire(g: Running, i: int, scheduled: float) -> None:
            try:
                ok = await _one(session, g.url + "/v1/chat/completions", {"Authorization": f"Bearer {g.key}"})
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            if i < n_warm:
                return
            res = results[g.config]
            if ok:
                res.ok += 1
                res.latencies.append(loop.time() - scheduled)
            else:
                res.errors += 1

        t0 = loop.time()
        for i in range(total):
            at = t0 + i / rate
            delay = at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if i == n_warm:
                cpu0 = {g.config: cpu_seconds(g.proc.pid) for g in gws}
                w0 = loop.time()
            order = gws[:]
            rng.shuffle(order)
            tasks.extend(asyncio.create_task(fire(g, i, at)) for g in order)
        await asyncio.gather(*tasks)
        for g in gws:
            results[g.config].cpu_s = cpu_seconds(g.proc.pid) - cpu0[g.config]
            results[g.config].seconds = loop.time() - w0
    return results


async def paired_closed_loop(gws: list[Running], concurrency: int, seconds: float) -> dict[str, Result]:
    results = {g.config: Result(g.config) for g in gws}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=120)) as session:
        loop = asyncio.get_running_loop()
        warm_end = loop.time() + 1.0
        end = warm_end + seconds

        async def worker(g: Running) -> None:
            res = results[g.config]
            while loop.time() < end:
                t = loop.time()
                try:
                    ok = await _one(session, g.url + "/v1/chat/completions", {"Authorization": f"Bearer {g.key}"})
                except (aiohttp.ClientError, TimeoutError):
                    ok = False
                if t < warm_end or loop.time() > end:
                    continue
                if ok:
                    res.ok += 1
                    res.latencies.append(loop.time() - t)
                else:
                    res.errors += 1

        tasks = [asyncio.create_task(worker(g)) for g in gws for _ in range(concurrency)]
        await asyncio.sleep(max(0.0, warm_end - loop.time()))
        cpu0 = {g.config: cpu_seconds(g.proc.pid) for g in gws}
        await asyncio.sleep(max(0.0, end - loop.time()))
        cpu1 = {g.config: cpu_seconds(g.proc.pid) for g in gws}
        await asyncio.gather(*tasks)
        for g in gws:
            results[g.config].cpu_s, results[g.config].seconds = cpu1[g.config] - cpu0[g.config], seconds
    return results


def run_round(configs: list[str], stub_url: str, args, data: Path) -> tuple[dict[str, Result], dict[str, Result]]:
    gws = []
    try:
        for config in configs:
            port = free_port()
            gws.append(Running(config, start_gateway(config, stub_url, data, port, args.pin), f"http://127.0.0.1:{port}"))
        admin = {"Authorization": f"Bearer {ADMIN}"}
        for g in gws:
            wait_ready(g.url)
            tenant = httpx.post(g.url + "/admin/tenants", json={"name": f"bench-{g.config}-{time.time_ns()}"}, headers=admin).json()
            g.key = httpx.post(f"{g.url}/admin/tenants/{tenant['id']}/keys", json={}, headers=admin).json()["key"]
        ol = asyncio.run(paired_open_loop(gws, args.rate, args.seconds, 2.0))
        cl = asyncio.run(paired_closed_loop(gws, args.concurrency, args.seconds))
        for g in gws:
            if g.config != "off":  # the metrics page answers and counted what was served
                assert "noor_tokens_total" in httpx.get(g.url + "/metrics").text, "metrics missing"
        return ol, cl
    finally:
        for g in gws:
            g.proc.terminate()
        for g in gws:
            try:
                g.proc.wait(15)
            except subprocess.TimeoutExpired:
                g.proc.kill()
                g.proc.wait()


def components(n: int) -> dict[str, float]:
    """CPU µs per request of each telemetry part alone, in process: the hooks the pipeline calls with a
    finished request's context, spans OTLP-encoded as the exporter would (minus the HTTP post)."""
    import logging

    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    from models.catalog import ModelSpec
    from router.context import RequestContext
    from router.store.base import Identity, TenantLimits
    from router.telemetry import Telemetry
    from router.telemetry.logs import AccessLog, JsonFormatter
    from router.telemetry.metrics import GatewayMetrics
    from router.telemetry.tracing import Tracing
    from serving.backends.base import UpstreamRequest, Usage
    from serving.backends.vllm import VLLMBackend
    from serving.endpoint import Endpoint

    class OTLPEncoding(SpanExporter):
        def export(self, spans):  # type: ignore[override]
            encode_spans(spans).SerializeToString()
            return SpanExportResult.SUCCESS

    log_file = open(tempfile.mktemp(prefix="noor-access-"), "w")
    handler = logging.StreamHandler(log_file)
    handler.setFormatter(JsonFormatter())
    access_logger = logging.getLogger("noor.bench.access")
    access_logger.addHandler(handler)
    access_logger.setLevel(logging.INFO)
    access_logger.propagate = False
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False

    ident = Identity(key_id="key_1", tenant_id="ten_1", tenant_name="bench", models=frozenset({"*"}), limits=TenantLimits())
    endpoint = Endpoint(name="http://127.0.0.1:9", pool="stub", backend=VLLMBackend("http://127.0.0.1:9"))
    spec = ModelSpec(name=MODEL, pool="stub")
    last = b'{"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"tok "},"finish_reason":"length"}]}'

    def tracing(ratio: float) -> Tracing:
        return Tracing(BatchSpanProcessor(OTLPEncoding(), max_queue_size=1 << 20), sample_ratio=ratio)

    parts = {
        "none": lambda: Telemetry(),
        "metrics": lambda: Telemetry(metrics=GatewayMetrics()),
        "tracing, unsampled": lambda: Telemetry(tracing=tracing(0.0)),
        "tracing, sampled (per traced request)": lambda: Telemetry(tracing=tracing(1.0)),
        "access log": lambda: Telemetry(access=AccessLog(access_logger)),
        "default (metrics + tracing 5 % + access log)": lambda: Telemetry(
            metrics=GatewayMetrics(), tracing=tracing(0.05), access=AccessLog(access_logger)),
    }
    out = {}
    for name, make in parts.items():
        tel = make()
        c0 = time.process_time()
        for _ in range(n):
            t = time.perf_counter()
            ctx = RequestContext(request_id="req_bench", kind="chat", body={"model": MODEL, "max_tokens": 16}, started=t)
            tel.begin(ctx)
            ctx.identity, ctx.authed_at, ctx.model, ctx.stream = ident, t + 1e-5, spec, True
            ctx.validated_at, ctx.reserved_at, ctx.queued_at, ctx.dequeued_at = t + 2e-5, t + 3e-5, t + 4e-5, t + 5e-5
            ctx.endpoint, ctx.admitted_at = endpoint, t + 6e-5
            ctx.upstream_at = ctx.admitted_at
            tel.upstream(ctx, UpstreamRequest(kind="chat", body=ctx.body, stream=True, request_id=ctx.request_id))
            ctx.opened_at, ctx.first_token_at, ctx.last_token_at = t + 1e-3, t + 2e-3, t + 1.7e-2
            ctx.chunks, ctx.relay_s, ctx.usage, ctx.last_chunk = 16, 3e-4, Usage(12, 16), last
            tel.finish(ctx)
        if tel.tracing is not None:
            tel.tracing.force_flush()
        out[name] = (time.process_time() - c0) / n * 1e6
    base = out.pop("none")
    return {k: v - base for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=40.0, help="open-loop requests/s, to each gateway")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run and loop kind")
    ap.add_argument("--concurrency", type=int, default=8, help="closed-loop clients per gateway")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=16, help="streamed tokens per request")
    ap.add_argument("--configs", default="off,metrics,traced,traced100,full")
    ap.add_argument("--pin", default=None, help="CPU list for the gateway (taskset), e.g. 0")
    ap.add_argument("--json", type=Path, help="write every run's figures here")
    ap.add_argument("--components", type=int, default=20000, help="in-process requests per part (0: skip)")
    args = ap.parse_args()
    configs = args.configs.split(",")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # run the finally blocks: stop every process started
    comp = components(args.components) if args.components else {}
    if comp:
        print("telemetry parts alone, CPU µs per request (in process):")
        for name, us in comp.items():
            print(f"  {name:<46} {us:7.1f}")
        print()

    stub_port = free_port()
    stub = start_stub(stub_port, args.tokens)
    stub_url = f"http://127.0.0.1:{stub_port}"
    data = Path(tempfile.mkdtemp(prefix="noor-telbench-"))
    runs: dict[str, list[tuple[Result, Result]]] = {c: [] for c in configs}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(stub_url + "/health")
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        for rnd in range(args.rounds):
            ols, cls = run_round(configs, stub_url, args, data)
            for config in configs:
                ol, cl = ols[config], cls[config]
                runs[config].append((ol, cl))
                print(f"round {rnd + 1} {config:>9}: open loop {ol.rps:6.1f} req/s, {ol.cpu_us_per_req:6.0f} µs CPU/req, "
                      f"p50 {ol.pct(0.5):7.2f} ms, p99 {ol.pct(0.99):8.2f} ms, errors {ol.errors} | closed loop "
                      f"{cl.rps:6.1f} req/s, {cl.cpu_us_per_req:6.0f} µs CPU/req, errors {cl.errors}", flush=True)
    finally:
        stub.terminate()
        stub.wait(10)

    def med(xs: list[float]) -> float:
        return statistics.median(xs) if xs else float("nan")

    base_cpu = med([ol.cpu_us_per_req for ol, _ in runs[configs[0]]])
    base_cl_cpu = med([cl.cpu_us_per_req for _, cl in runs[configs[0]]])
    base_rps = med([cl.rps for _, cl in runs[configs[0]]])
    print(f"\nmedians over {args.rounds} rounds; open loop at {args.rate:g} req/s per gateway, closed loop with "
          f"{args.concurrency} clients per gateway, {args.tokens} streamed tokens per request; cost vs '{configs[0]}'")
    print(f"{'config':>9} | {'CPU µs/req':>10} {'cost':>7} | {'p50 ms':>7} {'p99 ms':>7} | "
          f"{'max req/s':>9} {'cost':>7} | {'CPU µs/req':>10} {'cost':>7}")
    summary = {}
    for c in configs:
        cpu = med([ol.cpu_us_per_req for ol, _ in runs[c]])
        p50 = med([ol.pct(0.5) for ol, _ in runs[c]])
        p99 = med([ol.pct(0.99) for ol, _ in runs[c]])
        rps = med([cl.rps for _, cl in runs[c]])
        cl_cpu = med([cl.cpu_us_per_req for _, cl in runs[c]])
        summary[c] = {"open_cpu_us_per_req": cpu, "open_p50_ms": p50, "open_p99_ms": p99, "closed_rps": rps,
                      "closed_cpu_us_per_req": cl_cpu}
        print(f"{c:>9} | {cpu:>10.0f} {cpu / base_cpu - 1:>+7.1%} | {p50:>7.2f} {p99:>7.2f} | "
              f"{rps:>9.1f} {1 - rps / base_rps:>+7.1%} | {cl_cpu:>10.0f} {cl_cpu / base_cl_cpu - 1:>+7.1%}")
    if comp:
        off_cpu = base_cpu
        print(f"\nparts as a share of the gateway's own CPU per request with telemetry off ({off_cpu:.0f} µs, open loop):")
        for name, us in comp.items():
            print(f"  {name:<46} {us / off_cpu:>7.1%}")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "components_us": comp, "summary": summary, "runs": {
            c: [{"open": {"rps": o.rps, "cpu_us": o.cpu_us_per_req, "p50": o.pct(0.5), "p99": o.pct(0.99), "errors": o.errors},
                 "closed": {"rps": k.rps, "cpu_us": k.cpu_us_per_req, "errors": k.errors}} for o, k in rs]
            for c, rs in runs.items()}}, indent=2))


if __name__ == "__main__":
    main()
