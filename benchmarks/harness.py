"""What the scheduling benchmarks and the simulator integration tests share: a real gateway over real
engines (simulated replicas or a vLLM), in the calling process, and a streaming client that times TTFT.

Everything talks HTTP, as in production: client → gateway (uvicorn, raw-ASGI OpenAI API) → engines. The
gateway runs on the caller's event loop (no thread), so side-by-side runs in one process share one loop
and their numbers are comparable within a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import uvicorn

from models.catalog import Catalog
from noor.settings import Settings
from router.app import Gateway
from router.keys import create_key

MODEL = "sim-model"
log = logging.getLogger("noor.bench")


def find_tokenizer() -> Path | None:
    """SmolLM2's tokenizer.json if a prepared model exists here (prompt counts for VTC's estimates)."""
    root = Path.home() / ".cache" / "noor" / "models"
    found = sorted(root.glob("smollm2*/tokenizer.json"))
    return found[-1] if found else None


@dataclass
class GatewayUnderTest:
    url: str
    gateway: Gateway
    model: str

    async def tenant(self, name: str, *, weight: float = 1.0, priority: str = "interactive") -> str:
        """Create a tenant with one key; returns the key's secret."""
        t = await self.gateway.store.create_tenant(name, weight=weight, priority=priority)
        _, secret = await create_key(self.gateway.store, t.id)
        return secret


@contextlib.asynccontextmanager
async def serve_gateway(
    endpoints: Sequence[str], *, engine: str = "sim", model: str = MODEL, engine_model: str | None = None,
    admission: bool = True, policy: str = "least_outstanding", window: int | None = None,
    deadline_s: float = 60.0, metrics_interval_s: float = 0.25, context_length: int = 32768,
    scheduler: dict | None = None,
) -> AsyncIterator[GatewayUnderTest]:
    """A gateway on a free port of 127.0.0.1, on this event loop, in front of ``endpoints``."""
    with tempfile.TemporaryDirectory(prefix="noor-bench-") as tmp:
        data = Path(tmp)
        settings = Settings(data_dir=data, cache_dir=data / "cache", _env_file=None)
        settings.telemetry.access_log = False
        settings.store.usage_flush_interval_s = 0.5
        settings.engine.metrics_interval_s = metrics_interval_s
        settings.engine.health_interval_s = 1.0
        s = settings.scheduler
        s.admission_enabled, s.policy, s.window_per_endpoint, s.queue_deadline_s = admission, policy, window, deadline_s
        for k, v in (scheduler or {}).items():
            setattr(s, k, v)
        tok = find_tokenizer()
        catalog = Catalog.from_dict({
            "pools": {"bench": {"engine": engine, "endpoints": list(endpoints)}},
            "models": {model: {"pool": "bench", "context_length": context_length, "engine_model": engine_model,
                               "tokenizer": str(tok) if tok else None}},
        })
        gw = Gateway(settings, catalog)
        config = uvicorn.Config(gw.asgi(), host="127.0.0.1", port=0, log_level="warning", lifespan="on",
                                http="router.http_server:GatewayHTTPProtocol", loop="none", access_log=False)
        server = uvicorn.Server(config)
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]  # Ctrl-C stays the caller's
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("gateway did not start")
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield GatewayUnderTest(f"http://127.0.0.1:{port}", gw, model)
        finally:
            server.should_exit = True
            await task


@dataclass(slots=True)
class Result:
    tenant: str
    sent: float  # monotonic
    ttft: float | None = None  # seconds
    latency: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    status: int = 0
    retry_after: str | None = None
    reply: str = ""


@dataclass
class Client:
    """A streaming OpenAI client on aiohttp (cheap enough to drive hundreds of streams on a shared core)."""

    session: aiohttp.ClientSession
    base_url: str
    results: list[Result] = field(default_factory=list)

    async def chat(self, key: str, tenant: str, messages: list[dict], *, model: str, max_tokens: int,
                   ignore_eos: bool = True) -> Result:
        body = {"model": model, "messages": messages, "max_tokens": max_tokens, "stream": True,
                "stream_options": {"include_usage": True}, "ignore_eos": ignore_eos}
        r = Result(tenant, time.monotonic())
        self.results.append(r)
        try:
            async with self.session.post(self.base_url + "/v1/chat/completions", data=orjson.dumps(body),
                                         headers={"authorization": f"Bearer {key}",
                                                  "content-type": "application/json"}) as resp:
                r.status = resp.status
                if resp.status != 200:
                    r.retry_after = resp.headers.get("retry-after")
                    await resp.read()
                    return r
                text: list[str] = []
                async for line in resp.content:
                    if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                        continue
                    chunk = orjson.loads(line[6:])
                    if chunk.get("choices"):
                        delta = chunk["choices"][0].get("delta", {}).get("content")
                        if delta:
                            if r.ttft is None:
                                r.ttft = time.monotonic() - r.sent
                            text.append(delta)
                    if chunk.get("usage"):
                        r.prompt_tokens = chunk["usage"]["prompt_tokens"]
                        r.completion_tokens = chunk["usage"]["completion_tokens"]
                r.latency = time.monotonic() - r.sent
                r.reply = "".join(text)
        except aiohttp.ClientError:
            r.status = 599
        return r


@contextlib.asynccontextmanager
async def client(base_url: str) -> AsyncIterator[Client]:
    conn = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        yield Client(session, base_url)


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0–100), nearest rank; nan when empty."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (pastes straight into docs/)."""
    def fmt(v: object) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(list(headers)), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])
