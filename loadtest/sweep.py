"""The rate sweep as a small state machine: warm up, measure, drain, judge — then the next rate or stop.

Each step offers arrivals at its rate for ``warmup_s`` (not judged: queues and caches settle) and then
``duration_s`` (judged). Then arrivals pause until every request of the step has finished (or
``drain_s`` passed), so a step is judged on all its requests and an overloaded step does not spill
into the next one. A failed step ends the sweep when ``stop_on_fail``.

The machine is driven by whoever polls it (the arrival loop every few milliseconds, Locust's shape
every second); it has no thread of its own and never blocks, so it is safe under gevent.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import Enum

from loadtest.slo import Verdict


class Phase(str, Enum):
    PENDING = "pending"
    WARMUP = "warmup"
    MEASURE = "measure"
    DRAIN = "drain"
    DONE = "done"


@dataclass(slots=True)
class StepRecord:
    """When each phase of a step began (unix time) and its verdict."""

    index: int
    rate: float
    warmup_start: float | None = None
    measure_start: float | None = None
    measure_end: float | None = None
    drain_end: float | None = None
    drained: bool | None = None  # False: the drain timed out with requests still in flight
    verdict: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class State:
    phase: Phase
    step: int
    rate: float  # offered arrivals/s now (0 outside warm-up and measure)
    active_until: float  # monotonic time at which arrivals at this rate end


@dataclass
class Sweep:
    rates: list[float]
    warmup_s: float
    duration_s: float
    drain_s: float
    in_flight: Callable[[], int]
    judge: Callable[[int], Verdict | None] = lambda _i: None
    stop_on_fail: bool = True
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    steps: list[StepRecord] = field(init=False)
    stop_reason: str | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if not self.rates:
            raise ValueError("a sweep needs at least one rate")
        self.steps = [StepRecord(i, r) for i, r in enumerate(self.rates)]
        self._phase = Phase.PENDING
        self._step = 0
        self._since = 0.0  # monotonic start of the current phase

    # -- driving --------------------------------------------------------------------------------
    def start(self) -> None:
        if self._phase is Phase.PENDING:
            self._enter(Phase.WARMUP, self.clock())

    def stop(self, reason: str) -> None:
        """End the sweep from outside (e.g. the test was stopped)."""
        if self._phase is not Phase.DONE:
            self.stop_reason = self.stop_reason or reason
            self._phase = Phase.DONE

    @property
    def done(self) -> bool:
        return self._phase is Phase.DONE

    def poll(self) -> State:
        """Advance through every phase change that is due, then say what to do now."""
        now = self.clock()
        while True:
            p = self._phase
            if p is Phase.WARMUP and now >= self._since + self.warmup_s:
                self._enter(Phase.MEASURE, self._since + self.warmup_s)
            elif p is Phase.MEASURE and now >= self._since + self.duration_s:
                self._enter(Phase.DRAIN, self._since + self.duration_s)
            elif p is Phase.DRAIN and (self.in_flight() == 0 or now >= self._since + self.drain_s):
                self._finish_step(now)
            else:
                break
        return self.state(now)

    def state(self, now: float | None = None) -> State:
        now = self.clock() if now is None else now
        p = self._phase
        if p is Phase.WARMUP:
            return State(p, self._step, self.rates[self._step], self._since + self.warmup_s + self.duration_s)
        if p is Phase.MEASURE:
            return State(p, self._step, self.rates[self._step], self._since + self.duration_s)
        return State(p, self._step, 0.0, now)

    # -- internals ------------------------------------------------------------------------------
    def _enter(self, phase: Phase, at_mono: float) -> None:
        rec = self.steps[self._step]
        wall = self.wall() - (self.clock() - at_mono)
        if phase is Phase.WARMUP:
            rec.warmup_start = wall
        elif phase is Phase.MEASURE:
            rec.measure_start = wall
        elif phase is Phase.DRAIN:
            rec.measure_end = wall
        self._phase, self._since = phase, at_mono

    def _finish_step(self, now: float) -> None:
        rec = self.steps[self._step]
        rec.drain_end = self.wall()
        rec.drained = self.in_flight() == 0
        verdict = self.judge(self._step)
        rec.verdict = verdict.to_dict() if verdict is not None else None
        if verdict is not None and not verdict.passed and self.stop_on_fail:
            self.stop_reason = f"step {self._step} at {rec.rate:g}/s broke the SLO"
            self._phase = Phase.DONE
        elif self._step + 1 >= len(self.rates):
            self.stop_reason = "all steps run"
            self._phase = Phase.DONE
        else:
            self._step += 1
            self._enter(Phase.WARMUP, now)

    def to_dict(self) -> dict:
        return {
            "rates": self.rates, "warmup_s": self.warmup_s, "duration_s": self.duration_s, "drain_s": self.drain_s,
            "stop_on_fail": self.stop_on_fail, "stop_reason": self.stop_reason,
            "steps": [s.to_dict() for s in self.steps],
        }
