"""``/metrics`` of the gateway and the engines, sampled while the load runs.

Latency seen by clients says *that* a pool is saturated; the engines' own gauges say *why*: requests
waiting in vLLM's queue, KV cache filling up. Each sample is one line of ``metrics.jsonl``:
``{"t": unix time, "target": "gateway" | engine URL, "ok": bool, "values": {"name{labels}": value}}``.

Only gauges and counters are kept (histogram buckets would swamp the file). For vLLM the interesting
series are ``vllm:num_requests_waiting``, ``vllm:num_requests_running``, ``vllm:kv_cache_usage_perc``
and the token counters; for the gateway (its ``/metrics`` may not exist on every version) every gauge
and counter it exposes. A target that answers 404 is dropped after its first try, without failing.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
from prometheus_client.parser import text_string_to_metric_families

VLLM_KEEP = (
    "vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc",
    "vllm:generation_tokens", "vllm:prompt_tokens", "vllm:prefix_cache_queries", "vllm:prefix_cache_hits",
    "vllm:num_preemptions",
)


def metrics_url(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/metrics") else url + "/metrics"


def parse(text: str, keep_prefixes: tuple[str, ...] | None = None) -> dict[str, float]:
    """Gauge and counter samples as ``{"name{a="x"}": value}``; only ``keep_prefixes`` when given."""
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        if fam.type not in ("gauge", "counter", "unknown"):
            continue
        if keep_prefixes is not None and not fam.name.startswith(keep_prefixes):
            continue
        for s in fam.samples:
            if s.name.endswith("_created"):
                continue
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()) if k not in ("engine", "model_name"))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


@dataclass
class Target:
    name: str
    url: str
    keep: tuple[str, ...] | None = None
    gone: bool = False
    failures: int = 0


@dataclass
class Scraper:
    """Scrapes every target each ``interval_s`` from a thread (a greenlet under Locust's gevent)."""

    targets: list[Target]
    out: Path
    interval_s: float = 1.0
    timeout_s: float = 2.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @classmethod
    def for_run(cls, gateway: str | None, engines: list[str], out: Path, interval_s: float = 1.0) -> Scraper:
        targets = [Target("gateway", metrics_url(gateway))] if gateway else []
        targets += [Target(e.rstrip("/").removesuffix("/metrics"), metrics_url(e), VLLM_KEEP) for e in engines]
        return cls(targets, out, interval_s)

    def scrape_once(self, client: httpx.Client, sink: IO[str]) -> None:
        for t in self.targets:
            if t.gone:
                continue
            line: dict = {"t": time.time(), "target": t.name, "ok": False, "values": {}}
            try:
                r = client.get(t.url)
                if r.status_code == 404:
                    t.gone = True  # no /metrics on this target (e.g. a gateway without it): not an error
                    continue
                r.raise_for_status()
                line["values"] = parse(r.text, t.keep)
                line["ok"] = True
            except Exception as exc:  # noqa: BLE001 - a scrape miss is data, not a crash
                t.failures += 1
                line["error"] = f"{type(exc).__name__}: {exc}"[:200]
            sink.write(json.dumps(line) + "\n")
        sink.flush()

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout_s) as client, open(self.out, "a") as sink:
            while not self._stop.is_set():
                t0 = time.monotonic()
                self.scrape_once(client, sink)
                self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - t0)))
            self.scrape_once(client, sink)  # one last look after the load

    def start(self) -> None:
        if self.targets and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="noor-metrics-scraper", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None


def read_samples(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
