"""The sign-off's pure parts: distributions, arrivals, the sweep's state machine, SLO verdicts, the
ledger check and the report, on synthetic data (the real run is in tests/e2e/test_signoff.py)."""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

import pytest

from loadtest.analysis import summarize
from loadtest.arrivals import Arrivals
from loadtest.client import RequestResult
from loadtest.config import LoadConfig, SweepSpec, load_config
from loadtest.distributions import Dist
from loadtest.ledger import reconcile
from loadtest.mix import TrafficMix
from loadtest.provision import RunTenant
from loadtest.report import write_report
from loadtest.results import RunData, evaluate
from loadtest.slo import SLO, judge
from loadtest.sweep import Phase, Sweep

ROOT = Path(__file__).resolve().parents[2]


def test_distributions_keep_their_mean_and_bounds():
    rng = random.Random(1)
    d = Dist(dist="lognormal", mean=200, sigma=0.6, min=8, max=5000)
    xs = [d.sample(rng) for _ in range(20000)]
    assert 190 < statistics.mean(xs) < 210 and min(xs) >= 8
    u = Dist(dist="uniform", min=16, max=64)
    assert {u.sample(rng) for _ in range(2000)} == set(range(16, 65))
    assert Dist.fixed(7).sample(rng) == 7
    with pytest.raises(ValueError):
        Dist(dist="normal", mean=3)


def test_arrivals_poisson_rate_and_burstiness():
    rng = random.Random(2)
    poisson = [Arrivals(1.0, rng).gap(4.0) for _ in range(20000)]
    assert 0.24 < statistics.mean(poisson) < 0.26
    assert 0.95 < statistics.stdev(poisson) / statistics.mean(poisson) < 1.05  # CV of exponential gaps = 1
    bursty = [Arrivals(0.25, rng).gap(4.0) for _ in range(20000)]
    assert 0.23 < statistics.mean(bursty) < 0.27  # same rate…
    assert statistics.stdev(bursty) / statistics.mean(bursty) > 1.8  # …in clumps (CV = 1/sqrt(0.25) = 2)


def test_mix_shares_tenants_and_system_prompts():
    cfg = LoadConfig.model_validate({"tenants": [{"name": "a", "weight": 3}, {"name": "b"}],
                                     "mix": {"stream_share": 0.5, "system_prompts": 2, "seed": 3}})
    mix = TrafficMix(cfg.mix, [(t.name, t.weight) for t in cfg.tenants])
    specs = [mix.draw() for _ in range(4000)]
    share_a = sum(s.tenant == "a" for s in specs) / len(specs)
    assert 0.72 < share_a < 0.78
    assert 0.45 < sum(s.stream for s in specs) / len(specs) < 0.55
    systems = {s.messages[0]["content"] for s in specs if s.system_prompt is not None}
    assert len(systems) == 2  # shared, identical text each time
    users = [s.messages[-1]["content"] for s in specs]
    assert len(set(u.split(":")[0] for u in users)) > 3500  # user prompts differ from their first token
    assert all(16 <= s.max_tokens <= 64 for s in specs)


def test_config_files_toml_and_yaml(tmp_path):
    cfg = load_config(ROOT / "loadtest" / "traffic.example.toml")
    assert [t.name for t in cfg.tenants] == ["alpha", "beta", "gamma"]
    assert cfg.sweep.step_rates() == [0.5, 1, 2, 4, 8, 16]
    y = tmp_path / "p.yaml"
    y.write_text("tenants: 2\nsweep:\n  start_rate: 1\n  increment: 1\n  max_rate: 3\n")
    cfg = load_config(y)
    assert [t.name for t in cfg.tenants] == ["tenant-1", "tenant-2"] and cfg.sweep.step_rates() == [1, 2, 3]
    with pytest.raises(ValueError):
        LoadConfig.model_validate({"mix": {"nonsense": 1}})
    assert SweepSpec(rates=[4, 1]).step_rates() == [1, 4]


def test_slo_file_and_verdict(tmp_path):
    slo = SLO.load(ROOT / "loadtest" / "slo.example.toml")
    assert {o.key for o in slo.objectives} == {"ttft_p99", "tpot_p99"} and slo.max_error_rate == 0.01
    assert judge(slo, {"ttft_p99": 100, "tpot_p99": 20}, 0.0, 50).passed
    v = judge(slo, {"ttft_p99": 2500, "tpot_p99": 20}, 0.05, 50)
    assert not v.passed and len(v.broken) == 2 and "TTFT p99 2500 ms > 2000 ms" in v.broken[0]
    assert not judge(slo, {"ttft_p99": 1, "tpot_p99": 1}, 0, 3).passed  # too few requests
    y = tmp_path / "s.yaml"
    y.write_text("slo:\n  ttft_p50_ms: 300\n  e2e_p99.9_ms: 9000\n  max_error_rate: 0\n")
    assert {o.key for o in SLO.load(y).objectives} == {"ttft_p50", "e2e_p99.9"}
    with pytest.raises(ValueError, match="unknown SLO key"):
        SLO.from_mapping({"slo": {"ttft_ms": 3}})


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_sweep_warms_measures_drains_and_stops_on_failure():
    clock, inflight, judged = FakeClock(), [0], []

    def judge_step(i):
        judged.append(i)
        from loadtest.slo import Verdict

        return Verdict(i < 1, [] if i < 1 else ["too slow"])

    sw = Sweep([1, 2, 4], warmup_s=2, duration_s=5, drain_s=10, in_flight=lambda: inflight[0], judge=judge_step,
               clock=clock, wall=lambda: 1000 + clock.t)
    assert sw.poll().phase is Phase.PENDING
    sw.start()
    st = sw.poll()
    assert (st.phase, st.step, st.rate, st.active_until) == (Phase.WARMUP, 0, 1, 7)
    clock.t = 3
    assert sw.poll().phase is Phase.MEASURE
    clock.t, inflight[0] = 7.5, 2
    st = sw.poll()
    assert st.phase is Phase.DRAIN and st.rate == 0  # requests of step 0 still running
    inflight[0] = 0
    st = sw.poll()
    assert (st.phase, st.step, st.rate) == (Phase.WARMUP, 1, 2) and judged == [0]
    assert sw.steps[0].measure_start == 1002 and sw.steps[0].measure_end == 1007 and sw.steps[0].drained
    clock.t = 7.5 + 7 + 0.1
    inflight[0] = 1
    assert sw.poll().phase is Phase.DRAIN
    clock.t += 10.0  # the drain times out
    assert sw.poll().phase is Phase.DONE and judged == [0, 1]
    assert sw.steps[1].drained is False and "broke the SLO" in sw.stop_reason
    assert sw.steps[2].warmup_start is None


def _rec(seq, tenant, step, ttft, tokens=20, error=None, rid=True, phase="measure"):
    r = RequestResult(seq, tenant, step, phase, 1.0, True, tokens)
    r.started_at = 1000.0 + seq
    if error:
        r.error = error
        r.request_id = f"req_{seq}" if rid else None
        return r
    r.ttft_ms, r.e2e_ms, r.tpot_ms = ttft, ttft + 19 * 10, 10.0
    r.itl_ms = [10.0] * 19
    r.prompt_tokens, r.completion_tokens, r.request_id = 50, tokens, f"req_{seq}"
    return r


def test_summary_and_ledger_reconciliation():
    recs = [_rec(i, "a" if i % 2 else "b", 0, 100 + i) for i in range(1, 101)]
    recs.append(_rec(101, "a", 0, 0, error="http_503"))
    recs.append(_rec(102, "a", 0, 0, error="client_overload", rid=False))
    s = summarize(recs, window_s=50)
    assert s.arrivals == 102 and s.completed == 100 and s.errors == {"http_503": 1, "client_overload": 1}
    assert s.p("ttft", 0.5) == pytest.approx(150.5) and s.p("itl", 0.99) == 10.0
    assert s.output_tokens_per_s == 100 * 20 / 50
    tenants = [RunTenant("a", "t_a", "k"), RunTenant("b", "t_b", "k")]
    ledger = {"t_a": [], "t_b": []}
    for r in recs:
        if r.request_id:
            ledger["t_a" if r.tenant == "a" else "t_b"].append(
                {"request_id": r.request_id, "prompt_tokens": r.prompt_tokens or 0, "completion_tokens": r.completion_tokens or 0})
    rec = reconcile(recs, ledger, tenants)
    assert rec.agrees and rec.tenants[0].client_requests == 51  # the 503 reached the gateway, the drop did not
    ledger["t_b"][0]["completion_tokens"] += 1
    ledger["t_a"].append({"request_id": "req_x", "prompt_tokens": 1, "completion_tokens": 1})
    rec = reconcile(recs, ledger, tenants)
    assert not rec.agrees and rec.tenants[0].extra == ["req_x"] and len(rec.tenants[1].token_mismatches) == 1


def test_report_from_a_synthetic_run(tmp_path):
    """Two steps, the second breaking the SLO: the report names the max rate, plots render."""
    steps, recs = [], []
    seq = 0
    for i, (rate, ttft) in enumerate(((1.0, 200.0), (2.0, 3000.0))):
        t0 = 1000.0 + i * 20
        steps.append({"index": i, "rate": rate, "warmup_start": t0, "measure_start": t0 + 2, "measure_end": t0 + 12,
                      "drain_end": t0 + 14, "drained": True, "verdict": None})
        for _ in range(int(rate * 12)):
            seq += 1
            recs.append(_rec(seq, "alpha" if seq % 2 else "beta", i, ttft + seq))
    (tmp_path / "requests.jsonl").write_text("".join(json.dumps(r.to_dict()) + "\n" for r in recs))
    (tmp_path / "steps.json").write_text(json.dumps({"steps": steps, "stop_reason": "step 1 at 2/s broke the SLO"}))
    (tmp_path / "tenants.json").write_text(json.dumps([{"name": "alpha", "id": "t1", "weight": 1},
                                                       {"name": "beta", "id": "t2", "weight": 1}]))
    (tmp_path / "run.json").write_text(json.dumps({"run_id": "x", "host": "http://gw", "started_at": 1000, "ended_at": 1040}))
    metrics = [{"t": 1000 + k, "target": "http://engine", "ok": True,
                "values": {"vllm:num_requests_waiting": k % 5, "vllm:num_requests_running": 3,
                           "vllm:kv_cache_usage_perc": 0.01 * k}} for k in range(40)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    slo = SLO.from_mapping({"ttft_p99_ms": 2000, "tpot_p99_ms": 200, "min_requests": 5})
    result = evaluate(RunData.load(tmp_path), slo, target_rate=1.0)
    assert result.max_rate == 1.0 and result.target_passed and result.passed
    assert [s.verdict.passed for s in result.steps] == [True, False]
    files = write_report(result, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "Maximum sustainable rate: 1 requests/s" in md and "TTFT p99" in md and "Target 1 requests/s: **PASS**" in md
    assert "<table>" in (tmp_path / "report.html").read_text()
    for key in ("latency", "throughput", "tenants", "metrics"):
        assert files[key].stat().st_size > 10_000
    assert not evaluate(RunData.load(tmp_path), slo, target_rate=2.0).passed
