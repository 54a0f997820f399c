"""The sign-off report: Markdown (for a repository or a ticket) and the same content as HTML, with PNGs.

Written for someone who was not there: what was offered (tenants, mix, arrivals, steps), the verdict
of each step against the SLO and why a step failed, what the engines' queues and KV cache did, and
whether the load generator's counts agree with what Noor billed.
"""

from __future__ import annotations

import html
from datetime import datetime, timezone
from pathlib import Path

from markdown_it import MarkdownIt

from loadtest import plots
from loadtest.analysis import Summary
from loadtest.results import SignoffResult, StepResult


def _ms(v: float | None) -> str:
    return "–" if v is None else (f"{v:.0f}" if v >= 100 else f"{v:.1f}")


def _num(v: float | None, fmt: str = "{:.1f}") -> str:
    return "–" if v is None else fmt.format(v)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(out)


def _verdict(s: StepResult) -> str:
    if s.verdict is None:
        return "(no SLO)"
    return "✅ pass" if s.verdict.passed else "❌ fail: " + "; ".join(s.verdict.broken)


def _errors(s: Summary) -> str:
    if not s.errors:
        return "0"
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(s.errors.items(), key=lambda kv: -kv[1]))
    return f"{s.error_count} ({s.error_rate:.1%}: {kinds})"


def headline(result: SignoffResult) -> str:
    if result.slo is None:
        return "No SLO given: figures only, no verdict."
    if result.max_rate is None:
        line = "**No step met the SLO**: the pool does not sustain even the lowest offered rate"
        line += f" ({result.steps[0].rate:g} requests/s)." if result.steps else "."
    else:
        line = (f"**Maximum sustainable rate: {result.max_rate:g} requests/s**, "
                f"≈ {result.max_tokens_per_s:.0f} output tokens/s, within the SLO.")
        last = result.steps[-1]
        if last.verdict is not None and not last.verdict.passed:
            line += f" The next step ({last.rate:g}/s) broke it: {'; '.join(last.verdict.broken)}."
        elif result.max_step is result.steps[-1]:
            line += " Every step passed: the limit is above the highest rate tried."
    if result.target_rate is not None:
        line += f"\n\nTarget {result.target_rate:g} requests/s: **{'PASS' if result.target_passed else 'FAIL'}**."
    return line


def markdown(result: SignoffResult, figures: dict[str, Path | None]) -> str:
    d, cfg = result.data, result.data.config
    run = d.run
    started = datetime.fromtimestamp(run.get("started_at", 0), timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    dur = (run.get("ended_at", 0) - run.get("started_at", 0)) if run else 0
    mix, arr, sw = cfg.mix, cfg.arrivals, cfg.sweep
    parts = [f"# Capacity sign-off: `{mix.model}` via {run.get('host', '?')}", headline(result)]
    if result.slo is not None:
        parts.append(f"SLO ({result.slo.source or 'given'}): {result.slo.describe()}; at least "
                     f"{result.slo.min_requests} completed requests per step. Judged on each step's measured window "
                     f"(warm-up excluded); TTFT over streamed requests.")
    if result.note:
        parts.append(f"> {result.note}")
    parts.append(f"Run `{run.get('run_id', '?')}`, started {started}, {dur:.0f} s; stopped because: "
                 f"{result.stop_reason or '?'}; {len(d.records)} arrivals in all.")

    parts.append("## Traffic offered")
    tenants = ", ".join(f"{t['name']} (weight {t.get('weight', 1):g})" for t in d.tenants)
    parts.append(_table(["", ""], [
        ["tenants", tenants or "–"],
        ["prompt (user message, ≈ tokens)", mix.prompt_tokens.describe()],
        ["system prompts", f"{mix.system_prompts} shared, {mix.system_prompt_tokens.describe()} tokens, on "
                           f"{mix.system_prompt_share:.0%} of requests"],
        ["output tokens (max_tokens)", mix.output_tokens.describe() + (" (ignore_eos)" if mix.ignore_eos else "")],
        ["streamed", f"{mix.stream_share:.0%}"],
        ["arrivals", ("Poisson" if arr.burstiness == 1 else f"gamma, burstiness {arr.burstiness:g}")
                     + f", open loop, at most {arr.max_concurrency} in flight"],
        ["steps", f"{', '.join(f'{r:g}' for r in sw.step_rates())} requests/s; {sw.warmup_s:g} s warm-up + "
                  f"{sw.duration_s:g} s measured each, then drained"],
    ]))

    parts.append("## Steps")
    rows = []
    for s in result.steps:
        m = s.summary
        rows.append([
            f"{s.rate:g}", _num(m.arrival_rate, "{:.2f}"), str(m.completed), _errors(m),
            _ms(m.p("ttft", 0.5)), _ms(m.p("ttft", 0.99)), _ms(m.p("tpot", 0.5)), _ms(m.p("tpot", 0.99)),
            _ms(m.p("itl", 0.99)), _ms(m.p("e2e", 0.99)), _num(s.served_tokens_per_s, "{:.0f}"), _verdict(s),
        ])
    parts.append(_table(["offered /s", "arrived /s", "done", "errors", "TTFT p50", "TTFT p99", "TPOT p50",
                         "TPOT p99", "ITL p99", "E2E p99", "out tok/s", "verdict"], rows))
    parts.append("Latencies in milliseconds. *arrived /s* is the measured arrival rate (the offered rate's "
                 "Poisson draw); *out tok/s* is the output tokens clients received during the measured window, "
                 "per second (served, not offered: it flattens where the pool saturates).")
    for key, alt in (("latency", "TTFT and TPOT vs offered rate"), ("throughput", "tokens/s vs offered rate")):
        if figures.get(key):
            parts.append(f"![{alt}]({figures[key].name})")

    parts.append("## Per tenant")
    rows = []
    for s in result.steps:
        for name, t in sorted(s.tenants.items()):
            rows.append([f"{s.rate:g}", name, str(t.arrivals), _errors(t), _ms(t.p("ttft", 0.5)), _ms(t.p("ttft", 0.99)),
                         _ms(t.p("tpot", 0.99)), _ms(t.p("e2e", 0.99)), str(t.prompt_tokens), str(t.completion_tokens)])
    parts.append(_table(["offered /s", "tenant", "arrivals", "errors", "TTFT p50", "TTFT p99", "TPOT p99", "E2E p99",
                         "tokens in", "tokens out"], rows))
    if figures.get("tenants"):
        parts.append(f"![per-tenant latency]({figures['tenants'].name})")

    parts.append("## Gateway and engines")
    parts.append(_metrics_section(result))
    if figures.get("metrics"):
        parts.append(f"![gateway and engine metrics over the run]({figures['metrics'].name})")

    parts.append("## Usage ledger")
    parts.append(_ledger_section(result))

    parts.append("## Files")
    parts.append("Per-request records: `requests.jsonl`; sweep phases and live verdicts: `steps.json`; "
                 "`/metrics` samples: `metrics.jsonl`; Locust's own report: `locust.html` and `locust_stats.csv` "
                 "(rows `LLM TTFT`, `LLM TPOT`, `LLM ITL`, `TOKENS in/out`); this summary as JSON: `signoff.json`.")
    return "\n\n".join(parts) + "\n"


def _metrics_section(result: SignoffResult) -> str:
    samples = result.data.metrics
    engines = plots.engine_targets(samples)
    gw_seen = any(s["target"] == "gateway" for s in samples)
    lines = []
    if not gw_seen:
        lines.append("The gateway exposed no `/metrics` during this run (or it was not scraped).")
    else:
        gauges = plots.gateway_gauges(samples)
        lines.append("Gateway `/metrics` sampled" + (f"; queue/in-flight gauges: {', '.join(f'`{g}`' for g in gauges)}."
                                                      if gauges else "; it has no queue or in-flight gauges."))
    if not engines:
        lines.append("No engine `/metrics` given (`--engine-metrics`), so queue depth and KV-cache use are not shown.")
        return "\n\n".join(lines)
    rows = []
    for s in result.steps:
        if not (s.measure_start and s.measure_end):
            continue
        for e in engines:
            def window(key: str) -> list[float]:
                ts, ys = plots.series(samples, e, key)
                return [y for t, y in zip(ts, ys, strict=True) if s.measure_start <= t <= s.measure_end]

            waiting, running = window("vllm:num_requests_waiting"), window("vllm:num_requests_running")
            kv = window("vllm:kv_cache_usage_perc") or window("vllm:gpu_cache_usage_perc")
            q, h = window("vllm:prefix_cache_queries_total"), window("vllm:prefix_cache_hits_total")
            hit = (h[-1] - h[0]) / (q[-1] - q[0]) if len(q) > 1 and q[-1] > q[0] and len(h) > 1 else None
            gen_ts, gen = plots.series(samples, e, "vllm:generation_tokens_total")
            inside = [(t, y) for t, y in zip(gen_ts, gen, strict=True) if s.measure_start <= t <= s.measure_end]
            gen_rate = ((inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])
                        if len(inside) > 1 and inside[-1][0] > inside[0][0] else None)
            rows.append([f"{s.rate:g}", e.replace("http://", ""), _num(max(waiting, default=None), "{:.0f}"),
                         _num(sum(running) / len(running) if running else None),
                         _num(max(kv, default=None) * 100 if kv else None, "{:.1f}%"),
                         _num(hit * 100 if hit is not None else None, "{:.0f}%"), _num(gen_rate, "{:.0f}")])
    lines.append(_table(["offered /s", "engine", "max waiting", "mean running", "max KV used", "prefix-cache hits",
                         "generated tok/s"], rows))
    lines.append("From each engine's own `/metrics` during the step's measured window. *generated tok/s* is the "
                 "engine's output rate in that window (all its traffic, in-flight requests of earlier arrivals "
                 "included), a cross-check of the client-side figure.")
    return "\n\n".join(lines)


def _ledger_section(result: SignoffResult) -> str:
    led = result.ledger
    if led is None or not led.checked:
        return "Not checked" + (f": {led.note}" if led and led.note else " (no admin token, or keys given by hand).")
    rows = [[t.name, f"{t.client_requests} / {t.ledger_requests}", f"{t.client_prompt_tokens} / {t.ledger_prompt_tokens}",
             f"{t.client_completion_tokens} / {t.ledger_completion_tokens}", "✅" if t.agrees else "❌"]
            for t in led.tenants]
    text = _table(["tenant", "requests (client / ledger)", "prompt tokens", "completion tokens", "agree"], rows)
    verdict = ("Every request the load generator sent to the gateway is in the ledger, with the same token counts."
               if led.agrees else "**The counts differ** (see `signoff.json` → ledger for the request ids).")
    unseen = sum(len(t.billed_unseen) for t in led.tenants)
    if unseen:
        verdict += (f" {unseen} requests failed on the client side after tokens were generated; the ledger bills "
                    "those tokens, the client never saw them.")
    return text + "\n\n" + verdict


CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
blockquote { border-left: 4px solid #f0ad4e; margin: 1em 0; padding: 0.3em 1em; background: #fff8ec; }
code { background: #f5f5f5; padding: 0 3px; }
"""


def to_html(md: str, title: str) -> str:
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(md)  # notes, names: text, not markup
    return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>\n{body}</body></html>\n")


def write_report(result: SignoffResult, folder: Path) -> dict[str, Path]:
    """Write figures, ``report.md`` and ``report.html`` into ``folder``; return their paths."""
    figures: dict[str, Path | None] = {}
    if result.steps:
        figures["latency"] = plots.latency_vs_rate(result, folder / "latency_vs_rate.png")
        figures["throughput"] = plots.throughput_vs_rate(result, folder / "throughput_vs_rate.png")
        figures["tenants"] = plots.per_tenant(result, folder / "tenants.png")
    figures["metrics"] = plots.metrics_timeline(result, folder / "metrics_timeline.png")
    md = markdown(result, figures)
    (folder / "report.md").write_text(md)
    (folder / "report.html").write_text(to_html(md, f"Capacity sign-off {result.data.run.get('run_id', '')}"))
    out = {k: v for k, v in figures.items() if v is not None}
    out.update(markdown=folder / "report.md", html=folder / "report.html")
    return out
