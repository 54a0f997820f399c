"""``noor signoff`` end to end: Locust (a child process) → the gateway → a real vLLM on CPU.

Short steps (seconds each) keep this under a minute or two of CPU. What is proven:
- an easy SLO passes with exit code 0 and a report (Markdown, HTML, PNGs) is written;
- the load generator's counts (its per-request records and Locust's own CSV) equal what Noor metered
  for the run's tenants, request by request and token by token;
- an SLO that cannot be met fails with exit code 1 and stops after the first step.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import ADMIN_TOKEN, MODEL_A

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]

PROFILE = f"""
tenants = 2
[mix]
model = "{MODEL_A}"
prompt_tokens = {{ dist = "uniform", min = 10, max = 40 }}
output_tokens = {{ dist = "uniform", min = 4, max = 12 }}
stream_share = 0.75
# Fixed, so that the run's dozen requests hold both kinds (its first two draws: non-streamed, then
# streamed); a fresh seed gave all-streamed runs now and then (0.75^14 ≈ 2 %), failing the check below.
seed = 13
system_prompts = 2
system_prompt_tokens = {{ dist = "fixed", value = 40 }}
system_prompt_share = 0.5
[sweep]
request_timeout_s = 60
[arrivals]
max_concurrency = 64
"""

# Easy, yet not blind: on a CPU shared with other work the gateway's health probe may time out and mark
# the only engine unhealthy for a moment (503s); the ledger must agree on those requests too.
EASY = "[slo]\nttft_p99_ms = 60000\ntpot_p99_ms = 10000\nmax_error_rate = 0.5\nmin_requests = 2\n"
IMPOSSIBLE = "[slo]\nttft_p99_ms = 0.001\ntpot_p99_ms = 0.001\nmax_error_rate = 0\nmin_requests = 1\n"


def signoff(gateway_url: str, vllm_url: str, tmp: Path, slo: str, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    (tmp / "profile.toml").write_text(PROFILE)
    (tmp / "slo.toml").write_text(slo)
    out = tmp / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "noor", "signoff", "--gateway", gateway_url, "--admin-token", ADMIN_TOKEN,
         "--profile", str(tmp / "profile.toml"), "--slo", str(tmp / "slo.toml"), "--engine-metrics", vllm_url,
         "--warmup", "1", "--duration", "4", "--out", str(out), "--note", "test run", *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    return proc, out


def test_easy_slo_passes_and_counts_match_the_ledger(gateway, vllm_url, tmp_path):
    proc, out = signoff(gateway.url, vllm_url, tmp_path, EASY, "--rates", "1,2", "--target-rate", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Target 2 requests/s: PASS" in proc.stdout
    result = json.loads((out / "signoff.json").read_text())
    assert result["max_rate"] == 2 and result["target_passed"] and [s["verdict"]["passed"] for s in result["steps"]] == [True, True]
    # On a loaded CPU a short step's tokens may all arrive in its drain, after the measured window, so
    # the served rate may be 0 here; the tokens themselves are checked against the ledger below.
    assert result["max_output_tokens_per_s"] is not None

    # the load generator's own records…
    records = [json.loads(x) for x in (out / "requests.jsonl").read_text().splitlines()]
    ok = [r for r in records if r["error"] is None]
    assert len(ok) >= 0.8 * len(records) and all(r["request_id"] for r in records)
    assert any(r["stream"] for r in ok) and any(not r["stream"] for r in ok)
    streamed = [r for r in ok if r["stream"]]
    assert all(r["ttft_ms"] > 0 and r["completion_tokens"] > 0 for r in streamed)
    assert all(r["tpot_ms"] > 0 and len(r["itl_ms"]) >= 1 for r in streamed if r["completion_tokens"] > 2)

    # …against what Noor metered for the run's tenants, read straight from the gateway's store
    tenants = json.loads((out / "tenants.json").read_text())
    store = gateway.gateway.store

    async def ledger():
        await gateway.gateway.meter.flush()
        return {t["name"]: await store.usage_records(tenant_id=t["id"]) for t in tenants}

    metered = gateway.call(ledger())
    for t in tenants:
        mine = {r["request_id"]: r for r in records if r["tenant"] == t["name"]}
        theirs = {u.request_id: u for u in metered[t["name"]]}
        assert mine.keys() == theirs.keys() and mine
        for rid, r in mine.items():
            assert theirs[rid].stream == r["stream"]
            if r["error"] is None:
                assert (r["prompt_tokens"], r["completion_tokens"]) == (theirs[rid].prompt_tokens, theirs[rid].completion_tokens)
                assert theirs[rid].outcome == "ok"
            else:
                assert theirs[rid].outcome == "error" and theirs[rid].status == r["status"]
    all_metered = [u for us in metered.values() for u in us]

    # Locust's own statistics (CSV) count the same requests and tokens
    rows = {(row["Type"], row["Name"]): row for row in csv.DictReader(open(out / "locust_stats.csv"))}
    chat = sum(int(rows[("CHAT", n)]["Request Count"]) for n in ("stream", "non-stream") if ("CHAT", n) in rows)
    assert chat == len(all_metered) == len(records)
    failures = sum(int(rows[("CHAT", n)]["Failure Count"]) for n in ("stream", "non-stream") if ("CHAT", n) in rows)
    assert failures == len(records) - len(ok)
    assert int(rows[("LLM", "TTFT")]["Request Count"]) == len(streamed)
    tokens_out = float(rows[("TOKENS", "out")]["Average Content Size"]) * int(rows[("TOKENS", "out")]["Request Count"])
    assert tokens_out == pytest.approx(sum(u.completion_tokens for u in all_metered), abs=1)
    tokens_in = float(rows[("TOKENS", "in")]["Average Content Size"]) * int(rows[("TOKENS", "in")]["Request Count"])
    assert tokens_in == pytest.approx(sum(u.prompt_tokens for u in all_metered), abs=1)

    # the report says so, and has its figures
    assert result["ledger"]["agrees"]
    md = (out / "report.md").read_text()
    assert "Maximum sustainable rate: 2 requests/s" in md and "Every request the load generator sent" in md
    assert "> test run" in md
    for png in ("latency_vs_rate.png", "throughput_vs_rate.png", "tenants.png", "metrics_timeline.png"):
        assert (out / png).stat().st_size > 10_000, png
    assert "vllm:kv_cache_usage_perc" in (out / "metrics.jsonl").read_text()
    assert (out / "report.html").read_text().count("<img") == 4 and (out / "locust.html").exists()


def test_impossible_slo_fails_with_exit_code_1(gateway, vllm_url, tmp_path):
    proc, out = signoff(gateway.url, vllm_url, tmp_path, IMPOSSIBLE, "--rates", "1,2", "--target-rate", "1",
                        "--duration", "3")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    result = json.loads((out / "signoff.json").read_text())
    assert result["max_rate"] is None and result["target_passed"] is False
    assert len(result["steps"]) == 1 and not result["steps"][0]["verdict"]["passed"]  # stopped at the first step
    assert "No step met the SLO" in (out / "report.md").read_text()


def test_unreachable_gateway_is_exit_code_2(tmp_path):
    from tests.servers import free_port

    (tmp_path / "slo.toml").write_text(EASY)
    proc = subprocess.run(
        [sys.executable, "-m", "noor", "signoff", "--gateway", f"http://127.0.0.1:{free_port()}", "--admin-token", "x",
         "--slo", str(tmp_path / "slo.toml"), "--out", str(tmp_path / "run")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "could not create the run's tenants" in proc.stdout
