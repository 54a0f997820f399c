"""The report's figures (PNG, matplotlib): latency and throughput against offered rate, per tenant, and
the gateway's and engines' own gauges over the run.

Each figure answers one question a reader of the sign-off has; the SLO's thresholds and the maximum
sustainable rate are drawn on them so the answer can be read without the tables.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from loadtest.results import SignoffResult, StepResult  # noqa: E402

PASS, FAIL, SLO_COLOR = "#2a9d4b", "#d1342f", "#d1342f"
GATEWAY_GAUGE = re.compile(r"queue|inflight|in_flight|outstanding|waiting|running|active|concurren", re.I)


def _rate_axis(ax, steps: list[StepResult]) -> None:
    rates = [s.rate for s in steps]
    if len(rates) > 1 and max(rates) / min(rates) >= 4:
        ax.set_xscale("log", base=2)
    ax.set_xticks(rates)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
    ax.minorticks_off()
    ax.set_xlabel("offered rate (requests/s, open loop)")
    ax.grid(True, alpha=0.3)


def _mark_verdicts(ax, steps: list[StepResult], ys: list[float | None]) -> None:
    for s, y in zip(steps, ys, strict=True):
        if y is None or s.verdict is None:
            continue
        ax.scatter([s.rate], [y], s=90, marker="o" if s.verdict.passed else "X",
                   color=PASS if s.verdict.passed else FAIL, zorder=5)


def _slo_line(ax, result: SignoffResult, metric: str, data_max: float | None) -> None:
    """The SLO's threshold as a line; far above the data it would squash the curves, so it is only named."""
    if result.slo is None:
        return
    for o in result.slo.objectives:
        if o.metric != metric:
            continue
        if data_max and o.limit_ms > 4 * data_max:
            ax.plot([], [], color=SLO_COLOR, ls="--", lw=1.5, label=f"SLO: {o.label} (far above)")
        else:
            ax.axhline(o.limit_ms, color=SLO_COLOR, ls="--", lw=1.5, label=f"SLO: {o.label}")


def _max(*seqs) -> float | None:
    vals = [v for seq in seqs for v in seq if v is not None and v == v]
    return max(vals) if vals else None


def _max_rate_line(ax, result: SignoffResult) -> None:
    if result.max_rate is not None:
        ax.axvline(result.max_rate, color=PASS, ls=":", lw=2, label=f"max sustainable: {result.max_rate:g}/s")


def latency_vs_rate(result: SignoffResult, path: Path) -> Path:
    steps = result.steps
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for ax, metric, title in ((axes[0], "ttft", "Time to first token"), (axes[1], "tpot", "Time per output token")):
        rates = [s.rate for s in steps]
        p50 = [s.summary.p(metric, 0.5) for s in steps]
        p99 = [s.summary.p(metric, 0.99) for s in steps]
        ax.plot(rates, p50, "-o", color="#4c78a8", label=f"{metric.upper()} p50", ms=4)
        ax.plot(rates, p99, "-s", color="#f58518", label=f"{metric.upper()} p99", ms=4)
        _mark_verdicts(ax, steps, p99)
        _slo_line(ax, result, metric, _max(p50, p99))
        _max_rate_line(ax, result)
        _rate_axis(ax, steps)
        ax.set_ylabel("milliseconds")
        ax.set_title(f"{title} vs offered rate (● pass, ✕ fail)")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def throughput_vs_rate(result: SignoffResult, path: Path) -> Path:
    steps = result.steps
    fig, ax = plt.subplots(figsize=(8, 4.6))
    rates = [s.rate for s in steps]
    tps = [s.served_tokens_per_s or 0.0 for s in steps]
    offered = [s.summary.output_tokens_per_s or 0.0 for s in steps]
    ax.plot(rates, offered, ":", color="grey", label="offered: output tokens asked for by the window's arrivals, per s")
    ax.plot(rates, tps, "-o", color="#4c78a8", label="served: output tokens received in the window, per s")
    _mark_verdicts(ax, steps, tps)
    _max_rate_line(ax, result)
    if result.max_tokens_per_s is not None:
        ax.axhline(result.max_tokens_per_s, color=PASS, ls="--", lw=1,
                   label=f"within SLO: {result.max_tokens_per_s:.0f} tokens/s")
    for s, y in zip(steps, tps, strict=True):
        if s.verdict is not None and not s.verdict.passed:
            ax.axvspan(s.rate * 0.97, s.rate * 1.03, color=FAIL, alpha=0.12)
    _rate_axis(ax, steps)
    ax.set_ylabel("output tokens / s")
    ax.set_ylim(bottom=0)
    ax.set_title("Throughput vs offered rate, with the SLO limit")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def per_tenant(result: SignoffResult, path: Path) -> Path:
    steps = result.steps
    names = sorted({n for s in steps for n in s.tenants})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for ax, metric in ((axes[0], "ttft"), (axes[1], "tpot")):
        top = _max(*([s.tenants[n].p(metric, 0.99) for s in steps if n in s.tenants] for n in names))
        for name in names:
            ys = [s.tenants[name].p(metric, 0.99) if name in s.tenants else None for s in steps]
            ax.plot([s.rate for s in steps], [y if y is not None else float("nan") for y in ys], "-o", ms=4,
                    label=f"{name} p99")
            ys50 = [s.tenants[name].p(metric, 0.5) if name in s.tenants else None for s in steps]
            ax.plot([s.rate for s in steps], [y if y is not None else float("nan") for y in ys50], ":", lw=1,
                    color=ax.lines[-1].get_color(), label=f"{name} p50")
        _slo_line(ax, result, metric, top)
        _rate_axis(ax, steps)
        ax.set_ylim(bottom=0)
        ax.set_ylabel("milliseconds")
        ax.set_title(f"{metric.upper()} per tenant (p99 solid, p50 dotted)")
        ax.legend(fontsize=7, ncol=2, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def series(samples: list[dict], target: str, key: str) -> tuple[list[float], list[float]]:
    ts, ys = [], []
    for s in samples:
        if s["target"] == target and s.get("ok") and key in s["values"]:
            ts.append(s["t"])
            ys.append(s["values"][key])
    return ts, ys


def gateway_gauges(samples: list[dict], limit: int = 6) -> list[str]:
    keys: set[str] = set()
    for s in samples:
        if s["target"] == "gateway" and s.get("ok"):
            keys.update(k for k in s["values"] if GATEWAY_GAUGE.search(k.split("{")[0]) and "_total" not in k)
    return sorted(keys)[:limit]


def engine_targets(samples: list[dict]) -> list[str]:
    return sorted({s["target"] for s in samples if s["target"] != "gateway"})


def metrics_timeline(result: SignoffResult, path: Path) -> Path | None:
    samples = result.data.metrics
    engines = engine_targets(samples)
    gw = gateway_gauges(samples)
    if not engines and not gw:
        return None
    t0 = min((s.warmup_start for s in result.steps if s.warmup_start), default=None)
    t0 = t0 if t0 is not None else min(s["t"] for s in samples)
    fig, axes = plt.subplots(3, 1, figsize=(14, 8.5), sharex=True)
    q_ax, kv_ax, rate_ax = axes
    for e in engines:
        label = e.replace("http://", "")
        for key, style in (("vllm:num_requests_waiting", "-"), ("vllm:num_requests_running", ":")):
            ts, ys = series(samples, e, key)
            if ts:
                q_ax.plot([t - t0 for t in ts], ys, style, label=f"{label} {key.split(':')[1]}")
        for key in ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"):
            ts, ys = series(samples, e, key)
            if ts:
                kv_ax.plot([t - t0 for t in ts], [y * 100 for y in ys], label=f"{label} KV cache used")
                break
    for key in gw:
        ts, ys = series(samples, "gateway", key)
        q_ax.plot([t - t0 for t in ts], ys, "--", label=f"gateway {key}")
    q_ax.set_ylabel("requests")
    q_ax.set_title("Engine queue (waiting), running requests" + (" and gateway gauges" if gw else
                   " (the gateway exposed no /metrics gauges)"))
    kv_ax.set_ylabel("KV cache used (%)")
    kv_ax.set_ylim(0, 100)
    kv_ax.set_title("Engine KV-cache use")
    # offered rate as a step function; completions per second from the run's own records
    xs, ys = [], []
    for s in result.steps:
        if s.warmup_start and s.measure_end:
            xs += [s.warmup_start - t0, s.measure_end - t0, s.measure_end - t0]
            ys += [s.rate, s.rate, 0]
    rate_ax.plot(xs, ys, drawstyle="steps-post", color="black", label="offered rate")
    done = sorted(r.started_at + (r.e2e_ms or 0) / 1000 - t0 for r in result.data.records if r.ok)
    if done:
        bins = max(1, int(done[-1]) + 1)
        rate_ax.hist(done, bins=bins, range=(0, bins), color="#4c78a8", alpha=0.5, label="completed / s")
    rate_ax.set_ylabel("requests/s")
    rate_ax.set_xlabel("seconds since the run started")
    rate_ax.set_title("Offered rate (steps) and completions per second")
    for ax in axes:
        for s in result.steps:
            if s.measure_start and s.measure_end:
                color = "grey" if s.verdict is None else (PASS if s.verdict.passed else FAIL)
                ax.axvspan(s.measure_start - t0, s.measure_end - t0, color=color, alpha=0.08)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # beside the plot: a legend must not hide a step
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0), borderaxespad=0)
    for s in result.steps:  # name each measured window on the bottom panel: rate and verdict
        if s.measure_start and s.measure_end:
            mark = "" if s.verdict is None else (" ✓" if s.verdict.passed else " ✗")
            rate_ax.text((s.measure_start + s.measure_end) / 2 - t0, 0.97, f"{s.rate:g}/s{mark}", ha="center", va="top",
                         fontsize=8, transform=rate_ax.get_xaxis_transform())
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
