"""Drive an engine in virtual time: no sleeping, the clock jumps from one step's end to the next.

Tests use it to check the batching model deterministically in milliseconds of real time, and the
calibration fit uses it to search the timing parameters that reproduce measured throughput.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field

from .engine import Engine, Sequence
from .profiles import Profile


def run_until_idle(engine: Engine, now: float = 0.0, *, max_steps: int = 10_000_000) -> float:
    """Run steps until nothing is waiting or running; returns the clock at the end."""
    for _ in range(max_steps):
        step = engine.schedule(now)
        if step is None:
            return now
        now += step.duration
        engine.complete(step, now)
    raise RuntimeError("engine did not go idle")


@dataclass
class ClosedLoopResult:
    """What a closed-loop benchmark client would have measured."""

    concurrency: int
    requests: int
    output_tokens: int
    duration: float
    ttfts: list[float] = field(default_factory=list)
    max_running: int = 0

    @property
    def output_tokens_per_s(self) -> float:
        return self.output_tokens / self.duration if self.duration > 0 else 0.0

    @property
    def mean_ttft(self) -> float:
        return sum(self.ttfts) / len(self.ttfts) if self.ttfts else 0.0


def closed_loop(
    profile: Profile,
    *,
    concurrency: int,
    num_requests: int,
    prompt: Callable[[int], list[int]],
    max_tokens: int,
    ignore_eos: bool = True,
    client_gap_s: float = 0.0,
    seed: int = 0,
) -> ClosedLoopResult:
    """``concurrency`` clients each send a request, wait for its last token, and send the next.

    ``prompt(i)`` gives the token ids of request ``i``; ``client_gap_s`` is the time between one
    request's end and the next one's arrival (HTTP round trip, client work).
    """
    engine = Engine(profile, seed=seed)
    now = 0.0
    sent = 0
    arrivals: list[tuple[float, int]] = []  # (time, request index)
    for _ in range(min(concurrency, num_requests)):
        heapq.heappush(arrivals, (0.0, sent))
        sent += 1
    in_flight: set[Sequence] = set()
    result = ClosedLoopResult(concurrency, num_requests, 0, 0.0)
    done = 0
    while done < num_requests:
        while arrivals and arrivals[0][0] <= now + 1e-12:
            _, i = heapq.heappop(arrivals)
            in_flight.add(engine.add_request(prompt(i), max_tokens=max_tokens, ignore_eos=ignore_eos, now=now))
        step = engine.schedule(now)
        if step is None:
            now = arrivals[0][0]  # idle until the next client comes back
            continue
        now += step.duration
        result.max_running = max(result.max_running, engine.num_running)
        engine.complete(step, now)
        for seq in [s for s in in_flight if s.finished]:
            in_flight.discard(seq)
            done += 1
            result.output_tokens += seq.num_output_tokens
            if seq.first_token_at is not None:
                result.ttfts.append(seq.first_token_at - seq.arrival)
            if sent < num_requests:
                heapq.heappush(arrivals, (now + client_gap_s, sent))
                sent += 1
    result.duration = now
    return result
