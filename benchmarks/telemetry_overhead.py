"""What does telemetry cost the gateway? Metrics + tracing on vs off, same offered load.

A fast upstream (tests/stub_engine.py: an OpenAI-speaking aiohttp server, 16 streamed tokens per
request, no model) sits behind the gateway so the gateway's own work dominates. One gateway process
per configuration (uvicorn + uvloop + httptools, as in production), all running side by side:

  off       metrics off, tracing none, access log off
  off2      the same again: the A/A pair shows this machine's noise floor
  metrics   Prometheus metrics only
  traced    metrics + tracing at the default sampling ratio (OTLP/HTTP exporter to a sink in the stub)
  traced100 metrics + tracing with every request sampled
  full      traced + the JSON access log (written to a file)

Paired, because this machine is shared and its speed drifts by tens of percent from minute to minute:
every configuration is measured in the same time window, so drift hits all of them alike.
  * open loop: each gateway gets the same fixed request rate (requests start on schedule, not when
    the previous ends; latency from the scheduled start); the figure is each gateway's CPU time per
    request (/proc, all threads — the span exporter's included), less what it burns idle (health
    checks, engine scrapes; measured before the load);
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
    "off2": {"METRICS_ENABLED": "false", "TRACES_EXPORTER": "none", "ACCESS_LOG": "false"},  # A/A: the noise floor
    "metrics": {"METRICS_ENABLED": "true", "TRACES_EXPORTER": "none", "ACCESS_LOG": "false"},
    # tracing at the default sampling ratio, and with every request traced
    "traced": {"METRICS_ENABLED": "true", "TRACES_EXPORTER": "otlp", "ACCESS_LOG": "false"},
    "traced0": {"METRICS_ENABLED": "true", "TRACES_EXPORTER": "otlp", "ACCESS_LOG": "false", "TRACES_SAMPLE_RATIO": "0.0"},
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
    idle_cpu_s: float = 0.0  # what the process spends anyway in the window (health checks, scrapes)

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def cpu_us_per_req(self) -> float:
        return (self.cpu_s - self.idle_cpu_s) / self.ok * 1e6 if self.ok else float("nan")

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
        idle0 = {g.config: cpu_seconds(g.proc.pid) for g in gws}
        time.sleep(args.idle)
        idle_rate = {g.config: (cpu_seconds(g.proc.pid) - idle0[g.config]) / args.idle for g in gws}
        ol = asyncio.run(paired_open_loop(gws, args.rate, args.seconds, 2.0))
        cl = asyncio.run(paired_closed_loop(gws, args.concurrency, args.seconds))
        for res in (*ol.values(), *cl.values()):
            res.idle_cpu_s = idle_rate[res.config] * res.seconds
        for g in gws:
            if CONFIGS[g.config]["METRICS_ENABLED"] == "true":  # the metrics page answers and counted what was served
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


async def _inprocess(configs: list[str], stub_url: str, batches: int, batch: int, concurrency: int) -> dict[str, list[float]]:
    """Each configuration's Gateway in this one process, driven by direct ASGI calls (no client
    sockets), batches of requests alternating between configurations: CPU µs per request per batch."""
    import logging

    from models.catalog import Catalog
    from noor.settings import Settings
    from router.app import Gateway
    from router.keys import create_key
    from router.telemetry.logs import JsonFormatter

    catalog = Catalog.from_dict({"pools": {"stub": {"engine": "vllm", "endpoints": [stub_url]}},
                                 "models": {MODEL: {"pool": "stub", "context_length": 4096}}})
    log_file = open(tempfile.mktemp(prefix="noor-access-"), "w")
    handler = logging.StreamHandler(log_file)
    handler.setFormatter(JsonFormatter())
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    apps, keys, gateways = {}, {}, []
    for config in configs:
        data = Path(tempfile.mkdtemp(prefix=f"noor-inproc-{config}-"))
        settings = Settings(data_dir=data, cache_dir=data / "cache", _env_file=None)
        for k, v in CONFIGS[config].items():
            setattr(settings.telemetry, k.lower(), v.lower() if v in ("true", "false") else v)
        settings.telemetry.otlp_endpoint = f"{stub_url}/v1/traces"
        gw = Gateway(settings, catalog)
        await gw.start()
        gateways.append(gw)
        tenant = await gw.store.create_tenant(f"bench-{config}")
        _, keys[config] = await create_key(gw.store, tenant.id)
        apps[config] = gw.asgi()
    body = json.dumps(BODY).encode()

    async def one(config: str) -> None:
        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [
            (b"authorization", f"Bearer {keys[config]}".encode()), (b"content-type", b"application/json")]}
        sent = [False]
        never = asyncio.Event()

        async def receive() -> dict:
            if not sent[0]:
                sent[0] = True
                return {"type": "http.request", "body": body, "more_body": False}
            await never.wait()
            return {"type": "http.disconnect"}

        done = []

        async def send(message: dict) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                done.append(True)

        await apps[config](scope, receive, send)
        assert done, "response not finished"

    async def run_batch(config: str) -> None:
        sem = asyncio.Semaphore(concurrency)

        async def guarded() -> None:
            async with sem:
                await one(config)

        await asyncio.gather(*(guarded() for _ in range(batch)))

    per_batch: dict[str, list[float]] = {c: [] for c in configs}
    for c in configs:  # warm-up: connections, caches, first-request paths
        await run_batch(c)
    rng = random.Random(11)
    for _ in range(batches):
        order = configs[:]
        rng.shuffle(order)
        for c in order:
            c0 = time.process_time()
            await run_batch(c)
            per_batch[c].append((time.process_time() - c0) / batch * 1e6)
    for gw in gateways:
        await gw.close()
    logging.getLogger().removeHandler(handler)
    return per_batch


def inprocess(configs: list[str], stub_url: str, batches: int, batch: int, concurrency: int) -> dict[str, list[float]]:
    try:
        import uvloop

        return uvloop.run(_inprocess(configs, stub_url, batches, batch, concurrency))
    except ImportError:  # pragma: no cover
        return asyncio.run(_inprocess(configs, stub_url, batches, batch, concurrency))


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


def _wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(url)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="off,off2,metrics,traced,full", help=f"from {','.join(CONFIGS)}")
    ap.add_argument("--tokens", type=int, default=16, help="streamed tokens per request")
    ap.add_argument("--components", type=int, default=20000, help="in-process requests per telemetry part (0: skip)")
    ap.add_argument("--inprocess", type=int, default=40, help="alternating batches per configuration, in process (0: skip)")
    ap.add_argument("--batch", type=int, default=100, help="requests per in-process batch")
    ap.add_argument("--rounds", type=int, default=4, help="paired rounds with gateway processes (0: skip)")
    ap.add_argument("--rate", type=float, default=8.0, help="open-loop requests/s, to each gateway")
    ap.add_argument("--seconds", type=float, default=12.0, help="measured seconds per round and loop kind")
    ap.add_argument("--concurrency", type=int, default=4, help="clients per gateway (closed loop, in process)")
    ap.add_argument("--idle", type=float, default=4.0, help="seconds of idle CPU measured per round, subtracted")
    ap.add_argument("--pin", default=None, help="CPU list for the gateways (taskset), e.g. 0")
    ap.add_argument("--json", type=Path, help="write every figure here")
    args = ap.parse_args()
    configs = args.configs.split(",")
    base = configs[0]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # run the finally blocks: stop every process started
    report: dict[str, object] = {"args": {k: str(v) for k, v in vars(args).items()}}

    if args.components:
        comp = components(args.components)
        report["components_us"] = comp
        print("1. Telemetry parts alone: CPU µs per request, in process")
        for name, us in comp.items():
            print(f"   {name:<46} {us:7.1f}")

    stub_port = free_port()
    stub = start_stub(stub_port, args.tokens)
    stub_url = f"http://127.0.0.1:{stub_port}"
    try:
        _wait_http(stub_url + "/health")
        if args.inprocess:
            per_batch = inprocess(configs, stub_url, args.inprocess, args.batch, args.concurrency)
            report["inprocess_us_per_batch"] = per_batch
            off = _median(per_batch[base])
            print(f"\n2. Whole gateway, in process: CPU µs per streamed request, {args.inprocess} rounds of one batch of "
                  f"{args.batch} per configuration (shuffled order); cost = median over rounds of the ratio to '{base}' "
                  f"in the same round (interquartile range in brackets)")
            for c in configs:
                ratios = [x / y - 1 for x, y in zip(per_batch[c], per_batch[base], strict=True)]
                q1, q3 = (statistics.quantiles(ratios, n=4)[i] for i in (0, 2)) if len(ratios) > 1 else (0.0, 0.0)
                print(f"   {c:>9} {_median(per_batch[c]):7.0f} µs  {_median(ratios):>+7.1%}  [{q1:+.1%}, {q3:+.1%}]")
            if args.components:
                print(f"   parts of 1. as a share of '{base}': " + ", ".join(
                    f"{name} {us / off:.1%}" for name, us in report["components_us"].items()))  # type: ignore[union-attr]

        if args.rounds:
            runs: dict[str, list[tuple[Result, Result]]] = {c: [] for c in configs}
            data = Path(tempfile.mkdtemp(prefix="noor-telbench-"))
            print(f"\n3. Gateway processes side by side, {args.rounds} rounds: open loop at {args.rate:g} req/s each, "
                  f"closed loop with {args.concurrency} clients each")
            for rnd in range(args.rounds):
                ols, cls = run_round(configs, stub_url, args, data)
                for c in configs:
                    ol, cl = ols[c], cls[c]
                    runs[c].append((ol, cl))
                    print(f"   round {rnd + 1} {c:>9}: open {ol.rps:6.1f} req/s {ol.cpu_us_per_req:6.0f} µs CPU/req "
                          f"p50 {ol.pct(0.5):7.2f} ms p99 {ol.pct(0.99):8.2f} ms err {ol.errors} | closed "
                          f"{cl.rps:6.1f} req/s {cl.cpu_us_per_req:6.0f} µs CPU/req err {cl.errors}", flush=True)
            b_cpu = _median([ol.cpu_us_per_req for ol, _ in runs[base]])
            b_rps = _median([cl.rps for _, cl in runs[base]])
            print(f"   {'median':>9} | {'CPU µs/req':>10} {'cost':>7} | {'p50 ms':>7} {'p99 ms':>8} | {'closed req/s':>12} {'cost':>7}")
            summary = {}
            for c in configs:
                cpu = _median([ol.cpu_us_per_req for ol, _ in runs[c]])
                p50, p99 = _median([ol.pct(0.5) for ol, _ in runs[c]]), _median([ol.pct(0.99) for ol, _ in runs[c]])
                rps = _median([cl.rps for _, cl in runs[c]])
                summary[c] = {"open_cpu_us_per_req": cpu, "open_p50_ms": p50, "open_p99_ms": p99, "closed_rps": rps}
                print(f"   {c:>9} | {cpu:>10.0f} {cpu / b_cpu - 1:>+7.1%} | {p50:>7.2f} {p99:>8.2f} | {rps:>12.1f} {1 - rps / b_rps:>+7.1%}")
            report["paired"] = summary
    finally:
        stub.terminate()
        stub.wait(10)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
