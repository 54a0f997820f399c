"""The SLO a pool is signed off against, and the verdict of one rate step.

An SLO file (TOML or YAML) holds thresholds on latency percentiles and on the error rate::

    [slo]
    ttft_p99_ms = 2000      # time to first token, streamed requests
    tpot_p99_ms = 150       # time per output token after the first
    max_error_rate = 0.01   # failed arrivals / all arrivals of the step

Any ``{ttft,tpot,itl,e2e}_p{50,90,95,99,99.9}_ms`` key works, so a stricter sign-off can add
``ttft_p50_ms`` or ``e2e_p99_ms`` without code changes. A step passes when every objective holds and
it had at least ``min_requests`` completed requests (too few samples prove nothing).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.config import read_mapping

METRICS = ("ttft", "tpot", "itl", "e2e")
_KEY = re.compile(r"^(ttft|tpot|itl|e2e)_p(\d+(?:[._]\d+)?)_ms$")


@dataclass(frozen=True, slots=True)
class Objective:
    metric: str  # ttft | tpot | itl | e2e
    quantile: float  # 0.99
    limit_ms: float

    @property
    def label(self) -> str:
        return f"{self.metric.upper()} p{_pct(self.quantile)} ≤ {self.limit_ms:g} ms"

    @property
    def key(self) -> str:
        return f"{self.metric}_p{_pct(self.quantile)}"


@dataclass(frozen=True, slots=True)
class SLO:
    objectives: tuple[Objective, ...] = ()
    max_error_rate: float = 0.01
    min_requests: int = 5
    source: str = ""

    @classmethod
    def from_mapping(cls, raw: dict[str, Any], source: str = "") -> SLO:
        body = dict(raw.get("slo", raw))
        max_err = float(body.pop("max_error_rate", body.pop("error_rate", 0.01)))
        min_req = int(body.pop("min_requests", 5))
        objectives = []
        for key, value in body.items():
            m = _KEY.match(key)
            if m is None:
                raise ValueError(f"unknown SLO key {key!r}; expected e.g. ttft_p99_ms, tpot_p99_ms, max_error_rate")
            q = float(m.group(2).replace("_", ".")) / 100
            if not 0 < q < 1:
                raise ValueError(f"{key}: percentile must be between 0 and 100")
            objectives.append(Objective(m.group(1), q, float(value)))
        if not 0 <= max_err <= 1:
            raise ValueError("max_error_rate must be between 0 and 1")
        return cls(tuple(objectives), max_err, min_req, source)

    @classmethod
    def load(cls, path: Path) -> SLO:
        return cls.from_mapping(read_mapping(path), source=str(path))

    def describe(self) -> str:
        parts = [o.label for o in self.objectives] + [f"errors ≤ {self.max_error_rate:.2%}"]
        return ", ".join(parts)

    def to_dict(self) -> dict:
        d: dict[str, Any] = {f"{o.key}_ms": o.limit_ms for o in self.objectives}
        d.update(max_error_rate=self.max_error_rate, min_requests=self.min_requests)
        return d


@dataclass(slots=True)
class Verdict:
    passed: bool
    broken: list[str] = field(default_factory=list)  # human-readable reasons

    def to_dict(self) -> dict:
        return {"passed": self.passed, "broken": self.broken}


def judge(slo: SLO, percentiles: dict[str, float | None], error_rate: float, completed: int) -> Verdict:
    """``percentiles`` maps ``ttft_p99`` etc. to milliseconds (None when there were no samples)."""
    broken: list[str] = []
    if completed < slo.min_requests:
        broken.append(f"only {completed} completed requests (< {slo.min_requests})")
    for o in slo.objectives:
        value = percentiles.get(o.key)
        if value is None:
            broken.append(f"no {o.metric.upper()} samples")
        elif value > o.limit_ms:
            broken.append(f"{o.metric.upper()} p{_pct(o.quantile)} {value:.0f} ms > {o.limit_ms:g} ms")
    if error_rate > slo.max_error_rate:
        broken.append(f"error rate {error_rate:.2%} > {slo.max_error_rate:.2%}")
    return Verdict(not broken, broken)


def _pct(q: float) -> str:
    return f"{q * 100:g}"
