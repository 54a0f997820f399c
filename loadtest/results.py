"""A finished run, read back from its folder, and the sign-off's answer: the maximum sustainable rate.

The run folder is the contract between the Locust process and everything after it:
``requests.jsonl`` (one line per arrival), ``steps.json`` (the sweep's phases and live verdicts),
``metrics.jsonl`` (``/metrics`` samples), ``tenants.json``, ``config.json`` and ``run.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from loadtest.analysis import Summary, delivered_tokens_per_s, quantiles_for, summarize
from loadtest.client import RequestResult
from loadtest.config import LoadConfig
from loadtest.ledger import Reconciliation
from loadtest.scrape import read_samples
from loadtest.slo import SLO, Verdict, judge


@dataclass(slots=True)
class StepResult:
    index: int
    rate: float
    measure_start: float | None
    measure_end: float | None
    warmup_start: float | None
    drain_end: float | None
    drained: bool | None
    summary: Summary
    verdict: Verdict | None
    tenants: dict[str, Summary] = field(default_factory=dict)
    all_arrivals: int = 0  # warm-up included
    served_tokens_per_s: float | None = None  # output tokens received during the measured window


@dataclass(slots=True)
class RunData:
    folder: Path
    config: LoadConfig
    records: list[RequestResult]
    sweep: dict
    metrics: list[dict]
    tenants: list[dict]
    run: dict

    @classmethod
    def load(cls, folder: Path) -> RunData:
        def js(name: str, default):
            p = folder / name
            return json.loads(p.read_text()) if p.exists() else default

        lines = (folder / "requests.jsonl").read_text().splitlines() if (folder / "requests.jsonl").exists() else []
        return cls(
            folder=folder, config=LoadConfig.model_validate(js("config.json", {})),
            records=[RequestResult.from_dict(json.loads(x)) for x in lines if x.strip()],
            sweep=js("steps.json", {"steps": []}), metrics=read_samples(folder / "metrics.jsonl"),
            tenants=js("tenants.json", []), run=js("run.json", {}),
        )


@dataclass(slots=True)
class SignoffResult:
    data: RunData
    slo: SLO | None
    steps: list[StepResult]
    target_rate: float | None = None
    ledger: Reconciliation | None = None
    note: str = ""

    @property
    def max_step(self) -> StepResult | None:
        """The highest step of the unbroken run of passing steps from the lowest rate up."""
        best = None
        for s in self.steps:
            if s.verdict is None or not s.verdict.passed:
                break
            best = s
        return best

    @property
    def max_rate(self) -> float | None:
        return self.max_step.rate if self.max_step else None

    @property
    def max_tokens_per_s(self) -> float | None:
        return self.max_step.served_tokens_per_s if self.max_step else None

    @property
    def target_passed(self) -> bool | None:
        if self.target_rate is None:
            return None
        return self.max_rate is not None and self.max_rate >= self.target_rate - 1e-9

    @property
    def passed(self) -> bool:
        """The exit code's question: the target passed (or, without a target, some step passed)."""
        return bool(self.target_passed) if self.target_rate is not None else self.max_rate is not None

    @property
    def stop_reason(self) -> str:
        return self.data.sweep.get("stop_reason") or ""

    def to_dict(self) -> dict:
        return {
            "run_id": self.data.run.get("run_id"), "slo": self.slo.to_dict() if self.slo else None,
            "max_rate": self.max_rate, "max_output_tokens_per_s": self.max_tokens_per_s,
            "target_rate": self.target_rate, "target_passed": self.target_passed, "passed": self.passed,
            "stop_reason": self.stop_reason, "note": self.note,
            "steps": [{"index": s.index, "rate": s.rate, "verdict": s.verdict.to_dict() if s.verdict else None,
                       "summary": s.summary.to_dict(), "drained": s.drained,
                       "served_tokens_per_s": s.served_tokens_per_s,
                       "tenants": {n: t.to_dict() for n, t in s.tenants.items()}} for s in self.steps],
            "ledger": self.ledger.to_dict() if self.ledger else None,
        }


def evaluate(data: RunData, slo: SLO | None, target_rate: float | None = None) -> SignoffResult:
    """Judge every step that ran (measured requests only), overall and per tenant."""
    qs = quantiles_for(slo)
    steps = []
    for st in data.sweep.get("steps", []):
        if st.get("measure_end") is None:
            continue  # the step never finished measuring (run stopped before)
        window = st["measure_end"] - st["measure_start"]
        mine = [r for r in data.records if r.step == st["index"] and r.phase == "measure"]
        summary = summarize(mine, window, qs)
        verdict = judge(slo, summary.percentiles, summary.error_rate, summary.completed) if slo else None
        tenants = {t["name"]: summarize([r for r in mine if r.tenant == t["name"]], window, qs) for t in data.tenants}
        this_step = [r for r in data.records if r.step == st["index"]]
        steps.append(StepResult(
            st["index"], st["rate"], st["measure_start"], st["measure_end"], st.get("warmup_start"), st.get("drain_end"),
            st.get("drained"), summary, verdict, tenants, len(this_step),
            delivered_tokens_per_s(this_step, st["measure_start"], st["measure_end"]),
        ))
    return SignoffResult(data, slo, steps, target_rate)
