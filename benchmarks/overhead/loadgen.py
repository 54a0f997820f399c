"""An open-loop HTTP load generator that holds a fixed offered rate, for measuring added latency.

Closed-loop tools (wrk, hey, autocannon) send the next request only when one returns, so a slow server
slows the load and its latency hides in a lower rate. This one offers requests at fixed times
(Poisson or uniform arrivals) whatever the server does, on a pool of keep-alive connections that grows
when all are busy. It is a raw asyncio protocol on uvloop with httptools' response parser and
pre-built request bytes, so it costs a few microseconds per request and can hold several thousand
requests per second on a fraction of one core: run it straight against the stub first to see that
(the ``lag`` figures say how late it sent; its own CPU share is reported too).

Modes (each prints one JSON object):

- ``rate``: offer ``--rate`` req/s for ``--duration`` s after ``--warmup`` s; latency is measured from
  the moment each request was written to the moment its response was complete. With
  ``--baseline-url`` every arrival also goes to that URL (the stub, direct), so both see the same
  arrivals and the same stalls of the machine, and "added" latency compares like with like.
- ``streams``: ``--concurrency`` streams back to back for ``--duration`` s: time to first chunk and
  each chunk's transit time (the stub stamps every chunk with CLOCK_MONOTONIC; same machine, same clock).
  With ``--baseline-url`` each stream is paired with one straight to the stub, opened in the same instant.
- ``hold``: open ``--concurrency`` streams at once (over ``--ramp`` s), keep them all open, count errors.

    python benchmarks/overhead/loadgen.py rate --url http://127.0.0.1:8000 --key sk-... --rate 1000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import httptools
import orjson
import uvloop

_NS = time.CLOCK_MONOTONIC
_STAMP = b'"system_fingerprint":"'
_CONTENT = b'"content":" tok"'


def now() -> float:
    return time.perf_counter()


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q / 100.0 * len(s)))]


def summary(values: list[float], scale: float = 1000.0) -> dict:
    """p50/p90/p99/p99.9/max of ``values`` (seconds by default) in milliseconds."""
    if not values:
        return {"n": 0}
    s = sorted(values)
    n = len(s)
    pick = lambda q: round(s[min(n - 1, int(q / 100.0 * n))] * scale, 4)  # noqa: E731
    return {"n": n, "p50": pick(50), "p90": pick(90), "p99": pick(99), "p999": pick(99.9), "max": round(s[-1] * scale, 4)}


def build_request(url: str, path: str, body: dict, key: str | None) -> bytes:
    parts = urlsplit(url)
    payload = orjson.dumps(body)
    head = [
        f"POST {path} HTTP/1.1", f"host: {parts.netloc}", "content-type: application/json",
        f"content-length: {len(payload)}", "accept: */*",
    ]
    if key:
        head.append(f"authorization: Bearer {key}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


class Exchange:
    """One request in flight: told about body bytes, completion and failure."""

    def on_body(self, data: bytes) -> None:
        pass

    def on_complete(self, status: int) -> None:
        pass

    def on_error(self, reason: str) -> None:
        pass


class Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one exchange at a time."""

    def __init__(self, on_idle: Callable[[Conn], None], on_lost: Callable[[Conn], None]) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self._on_idle = on_idle
        self._on_lost = on_lost

    def send(self, request: bytes, exchange: Exchange) -> None:
        assert self.transport is not None
        self.exchange = exchange
        self.transport.write(request)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(f"parse: {exc}")
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"connection lost: {exc!r}")
        self._on_lost(self)

    def _fail(self, reason: str) -> None:
        ex, self.exchange = self.exchange, None
        if ex is not None:
            ex.on_error(reason)

    def on_body(self, body: bytes) -> None:
        if self.exchange is not None:
            self.exchange.on_body(body)

    def on_message_complete(self) -> None:
        ex, self.exchange = self.exchange, None
        if ex is not None:
            ex.on_complete(self.parser.get_status_code())
        if self.parser.should_keep_alive():
            self._on_idle(self)
        elif self.transport is not None:
            self.transport.close()


class ConnPool:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[Conn] = []
        self.all: set[Conn] = set()
        self.opened = 0

    def _idle(self, conn: Conn) -> None:
        self.idle.append(conn)

    def _lost(self, conn: Conn) -> None:
        self.all.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)

    async def connect(self) -> Conn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: Conn(self._idle, self._lost), self.host, self.port)
        self.all.add(conn)
        self.opened += 1
        return conn

    async def prefill(self, n: int) -> None:
        conns = await asyncio.gather(*(self.connect() for _ in range(n)))
        self.idle.extend(conns)

    def close(self) -> None:
        for c in list(self.all):
            if c.transport is not None:
                c.transport.close()


# ---- unary requests at a fixed rate ------------------------------------------------------------


class Unary(Exchange):
    __slots__ = ("flow", "intended", "sent", "measured", "ok_body")

    def __init__(self, flow: Flow, intended: float, measured: bool) -> None:
        self.flow, self.intended, self.measured = flow, intended, measured
        self.sent = 0.0
        self.ok_body = False

    def on_body(self, data: bytes) -> None:
        if b'"usage"' in data:
            self.ok_body = True

    def on_complete(self, status: int) -> None:
        self.flow.done(self, status == 200 and self.ok_body, f"status {status}")

    def on_error(self, reason: str) -> None:
        self.flow.done(self, False, reason)


class Flow:
    """The requests to one URL in a rate run: their connections, latencies, lateness and errors."""

    def __init__(self, pool: ConnPool, request: bytes, on_idle: Callable[[], None]) -> None:
        self.pool, self.request = pool, request
        self.latencies: list[float] = []
        self.lags: list[float] = []
        self.errors: dict[str, int] = {}
        self.outstanding = 0
        self.measured_sent = 0
        self.total_sent = 0
        self.last_done = 0.0
        self._on_idle = on_idle

    def done(self, ex: Unary, ok: bool, reason: str) -> None:
        t = now()
        self.outstanding -= 1
        if ex.measured:
            if ok:
                self.latencies.append(t - ex.sent)
            else:
                self.errors[reason[:80]] = self.errors.get(reason[:80], 0) + 1
            self.last_done = t
        if self.outstanding == 0:
            self._on_idle()

    def issue(self, intended: float, measured: bool) -> None:
        ex = Unary(self, intended, measured)
        self.outstanding += 1
        self.total_sent += 1
        if measured:
            self.measured_sent += 1
        if self.pool.idle:
            conn = self.pool.idle.pop()
            ex.sent = now()
            if measured:
                self.lags.append(ex.sent - intended)
            conn.send(self.request, ex)
        else:
            asyncio.ensure_future(self._connect_then_send(ex))

    async def _connect_then_send(self, ex: Unary) -> None:
        try:
            conn = await self.pool.connect()
        except OSError as exc:
            ex.on_error(f"connect: {exc!r}")
            return
        ex.sent = ex.intended  # a connection had to be opened: count its cost from the intended time
        if ex.measured:
            self.lags.append(now() - ex.intended)
        conn.send(self.request, ex)

    def report(self, window: float, end: float) -> dict:
        ok = len(self.latencies)
        return {
            "sent": self.measured_sent, "sent_total": self.total_sent, "ok": ok, "errors": sum(self.errors.values()),
            "error_kinds": self.errors, "achieved": round(ok / (max(self.last_done, end) - window), 1),
            "latency_ms": summary(self.latencies), "lag_ms": summary(self.lags), "connections": self.pool.opened,
        }


class RateRun:
    """Offer ``rate`` req/s to every flow at the same instants (a baseline flow shares the run's fate:
    whatever stalls the load generator or the machine stalls both)."""

    def __init__(self, flows: list[Flow], rate: float, duration: float, warmup: float, arrivals: str) -> None:
        self.flows = flows
        self.rate, self.duration, self.warmup, self.arrivals = rate, duration, warmup, arrivals
        self.all_done = asyncio.Event()
        self.sending = True

    def idle(self) -> None:
        if not self.sending and all(f.outstanding == 0 for f in self.flows):
            self.all_done.set()

    def _gap(self) -> float:
        return random.expovariate(self.rate) if self.arrivals == "poisson" else 1.0 / self.rate

    async def go(self, grace: float) -> list[dict]:
        start = now() + 0.01
        window = start + self.warmup
        end = window + self.duration
        t = start
        cpu0 = wall0 = None
        while t < end:
            cur = now()
            if cpu0 is None and cur >= window:
                cpu0, wall0 = os.times(), cur
            while t <= cur and t < end:
                for flow in self.flows:
                    flow.issue(t, t >= window)
                t += self._gap()
            delay = t - now()
            if delay > 0:
                await asyncio.sleep(delay)
        self.sending = False
        cpu1, wall1 = os.times(), now()
        if any(f.outstanding for f in self.flows):
            try:
                await asyncio.wait_for(self.all_done.wait(), grace)
            except TimeoutError:
                for f in self.flows:
                    if f.outstanding:
                        f.errors["timeout"] = f.errors.get("timeout", 0) + f.outstanding
        assert cpu0 is not None and wall0 is not None
        cpu = round((cpu1.user + cpu1.system - cpu0.user - cpu0.system) / (wall1 - wall0), 3)
        return [
            {"mode": "rate", "offered": self.rate, "arrivals": self.arrivals, "duration_s": self.duration,
             **f.report(window, end), "loadgen_cpu": cpu}
            for f in self.flows
        ]


def merge_rate(results: list[dict], samples: list[list[dict]]) -> dict:
    """One rate result from several load generators that each offered a share of the rate at once: counts
    summed, percentiles recomputed from every generator's samples (``--samples``), CPU summed."""

    def one(parts: list[dict], raw: list[dict]) -> dict:
        out = dict(parts[0])
        for k in ("offered", "sent", "sent_total", "ok", "errors", "achieved", "connections", "loadgen_cpu"):
            if k in out:
                out[k] = round(sum(p.get(k, 0) for p in parts), 3)
        kinds: dict[str, int] = {}
        for p in parts:
            for reason, n in p.get("error_kinds", {}).items():
                kinds[reason] = kinds.get(reason, 0) + n
        out["error_kinds"] = kinds
        out["latency_ms"] = summary([x for r in raw for x in r["latencies"]])
        out["lag_ms"] = summary([x for r in raw for x in r["lags"]])
        out["load_procs"] = len(parts)
        return out

    merged = one([r for r in results], [s[0] for s in samples])
    if "baseline" in results[0]:
        merged["baseline"] = one([r["baseline"] for r in results], [s[1] for s in samples])
    return merged


# ---- streams ----------------------------------------------------------------------------------


class Stream(Exchange):
    """One SSE stream: time to first event, each event's transit, and whether it arrived whole."""

    def __init__(self, stats: StreamStats, fut: asyncio.Future) -> None:
        self.stats, self.fut = stats, fut
        self.sent = now()
        self.buf = b""
        self.first = True
        self.content = 0
        self.done_seen = False

    def on_body(self, data: bytes) -> None:
        t_ns = time.clock_gettime_ns(_NS)
        t = now()
        self.buf += data
        *events, self.buf = self.buf.split(b"\n\n")
        for ev in events:
            if self.first:
                self.first = False
                self.stats.ttft.append(t - self.sent)
            if ev == b"data: [DONE]":
                self.done_seen = True
                continue
            if _CONTENT in ev:
                self.content += 1
            i = ev.find(_STAMP)
            if i >= 0:
                j = ev.index(b'"', i + len(_STAMP))
                self.stats.transit.append((t_ns - int(ev[i + len(_STAMP) : j])) / 1e9)

    def on_complete(self, status: int) -> None:
        if status != 200:
            self._end(f"status {status}")
        elif not self.done_seen or self.content != self.stats.expect_chunks:
            self._end(f"incomplete stream ({self.content} chunks, done={self.done_seen})")
        else:
            self._end(None)

    def on_error(self, reason: str) -> None:
        self._end(reason)

    def _end(self, error: str | None) -> None:
        if not self.fut.done():
            self.fut.set_result(error)


class StreamStats:
    def __init__(self, expect_chunks: int) -> None:
        self.expect_chunks = expect_chunks
        self.ttft: list[float] = []
        self.transit: list[float] = []
        self.ok = 0
        self.errors: dict[str, int] = {}
        self.open = 0
        self.max_open = 0

    def finish(self, error: str | None) -> None:
        if error is None:
            self.ok += 1
        else:
            self.errors[error[:80]] = self.errors.get(error[:80], 0) + 1

    def report(self, **extra: object) -> dict:
        return {
            **extra, "ok": self.ok, "errors": sum(self.errors.values()), "error_kinds": self.errors,
            "ttft_ms": summary(self.ttft), "chunk_transit_ms": summary(self.transit), "max_open": self.max_open,
        }


async def one_stream(pool: ConnPool, request: bytes, stats: StreamStats, conn: Conn | None = None) -> None:
    try:
        conn = conn or (pool.idle.pop() if pool.idle else await pool.connect())
    except OSError as exc:
        stats.finish(f"connect: {exc!r}")
        return
    fut = asyncio.get_running_loop().create_future()
    stats.open += 1
    stats.max_open = max(stats.max_open, stats.open)
    conn.send(request, Stream(stats, fut))
    try:
        stats.finish(await fut)
    finally:
        stats.open -= 1


async def streams_closed_loop(
    pool: ConnPool, request: bytes, concurrency: int, duration: float, warmup: float, chunks: int,
    baseline: tuple[ConnPool, bytes] | None = None,
) -> dict:
    """``concurrency`` streams back to back. With ``baseline``, each is paired with one to the baseline
    URL (the stub, direct) opened in the same loop pass, and the next pair starts when both ended: both
    sides see the same moments of the machine, as the rate mode's paired arrivals do."""
    warm = StreamStats(chunks)
    stats = StreamStats(chunks)
    base_stats = StreamStats(chunks)
    await pool.prefill(concurrency)
    if baseline is not None:
        await baseline[0].prefill(concurrency)
    t_window = now() + warmup
    t_end = t_window + duration

    async def worker() -> None:
        while now() < t_end:
            measured = now() >= t_window
            if baseline is None:
                await one_stream(pool, request, stats if measured else warm)
                continue
            # both conns taken first, so that both requests are written in this same loop pass
            conn = None
            try:
                conn = pool.idle.pop() if pool.idle else await pool.connect()
                base_conn = baseline[0].idle.pop() if baseline[0].idle else await baseline[0].connect()
            except OSError as exc:
                if conn is not None:
                    pool.idle.append(conn)  # taken but unused: back to the pool
                (stats if measured else warm).finish(f"connect: {exc!r}")
                await asyncio.sleep(0.01)
                continue
            await asyncio.gather(one_stream(pool, request, stats if measured else warm, conn),
                                 one_stream(baseline[0], baseline[1], base_stats if measured else warm, base_conn))

    cpu0, wall0 = os.times(), now()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu1, wall1 = os.times(), now()
    cpu = round((cpu1.user + cpu1.system - cpu0.user - cpu0.system) / (wall1 - wall0), 3)
    out = stats.report(mode="streams", concurrency=concurrency, duration_s=duration, loadgen_cpu=cpu)
    if baseline is not None:
        out["baseline"] = base_stats.report(mode="streams", concurrency=concurrency, duration_s=duration)
    return out


async def hold_streams(pool: ConnPool, request: bytes, n: int, ramp: float, chunks: int, timeout: float) -> dict:
    stats = StreamStats(chunks)
    tasks = []
    t0 = now()
    for i in range(n):
        delay = t0 + ramp * i / n - now()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one_stream(pool, request, stats)))
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    if pending:
        stats.errors["timeout"] = len(pending)
    return stats.report(mode="hold", streams=n, ramp_s=ramp, wall_s=round(now() - t0, 2))


# ---- entry point ------------------------------------------------------------------------------


def body_for(args: argparse.Namespace, stream: bool) -> dict:
    body: dict = {
        "model": args.model, "messages": [{"role": "user", "content": "Hello! Say something nice about the sea."}],
        "max_tokens": args.max_tokens,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


async def amain(args: argparse.Namespace) -> dict:
    parts = urlsplit(args.url)
    pool = ConnPool(parts.hostname or "127.0.0.1", parts.port or 80)
    pools = [pool]
    try:
        if args.mode == "rate":
            flows: list[Flow] = []
            run = None
            targets = [(pool, args.url, args.key)]
            if args.baseline_url:
                parts = urlsplit(args.baseline_url)
                pools.append(ConnPool(parts.hostname or "127.0.0.1", parts.port or 80))
                targets.append((pools[-1], args.baseline_url, None))
            for p, url, key in targets:
                await p.prefill(args.connections)
                flows.append(Flow(p, build_request(url, args.path, body_for(args, stream=False), key), lambda: run.idle()))
            run = RateRun(flows, args.rate, args.duration, args.warmup, args.arrivals)
            result, *baseline = await run.go(args.grace)
            if baseline:
                result["baseline"] = baseline[0]
            if args.samples:
                with open(args.samples, "wb") as f:
                    f.write(orjson.dumps([{"latencies": fl.latencies, "lags": fl.lags} for fl in flows]))
            return result
        request = build_request(args.url, args.path, body_for(args, stream=True), args.key)
        if args.mode == "streams":
            baseline = None
            if args.baseline_url:
                parts = urlsplit(args.baseline_url)
                pools.append(ConnPool(parts.hostname or "127.0.0.1", parts.port or 80))
                baseline = (pools[-1], build_request(args.baseline_url, args.path, body_for(args, stream=True), None))
            return await streams_closed_loop(pool, request, args.concurrency, args.duration, args.warmup, args.chunks,
                                             baseline)
        return await hold_streams(pool, request, args.concurrency, args.ramp, args.chunks, args.grace)
    finally:
        for p in pools:
            p.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["rate", "streams", "hold"])
    ap.add_argument("--url", required=True)
    ap.add_argument("--baseline-url", default=None,
                    help="rate and streams modes: send each request to this URL too (no key), at the same instants")
    ap.add_argument("--path", default="/v1/chat/completions")
    ap.add_argument("--key", default=None)
    ap.add_argument("--model", default="bench-model")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--arrivals", choices=["poisson", "uniform"], default="poisson")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--grace", type=float, default=10.0, help="seconds to wait for stragglers (rate) or all streams (hold)")
    ap.add_argument("--connections", type=int, default=32, help="keep-alive connections opened before the run")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--ramp", type=float, default=2.0)
    ap.add_argument("--chunks", type=int, default=64, help="content chunks each stream must carry")
    ap.add_argument("--samples", default=None,
                    help="rate mode: also write every latency and send lag (seconds) to this file, so the results "
                         "of several load generators can be merged exactly (merge_rate)")
    args = ap.parse_args()
    result = uvloop.run(amain(args))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
