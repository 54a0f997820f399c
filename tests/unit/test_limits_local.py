"""The in-process limiter with a hand-driven clock, and the pieces both limiters share."""

from __future__ import annotations

from datetime import datetime, timezone

from router.limits.decision import format_duration
from router.limits.local import LocalLimiter
from router.limits.periods import budget_period
from router.store.base import TenantLimits


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def test_at_most_n_tokens_in_any_window():
    clock = Clock()
    lim = LocalLimiter(clock=clock)
    limits = TenantLimits(tokens_per_minute=100)
    admitted = []  # (time, tokens)
    for step in range(600):  # 10 minutes, a request of 30 tokens every second
        clock.t = 1_000_000.0 + step
        d, res = lim.take("t", f"r{step}", limits, 30)
        if d.allowed:
            admitted.append((clock.t, 30))
        else:
            assert d.reason == "tokens" and 0 < d.retry_after_s <= 60
    for start, _ in admitted:
        assert sum(n for t, n in admitted if start <= t < start + 60) <= 100
    assert len(admitted) == 30  # 3 per minute, steadily


def test_fail_open_share_divides_each_limit():
    lim = LocalLimiter(share=0.5, clock=Clock())
    limits = TenantLimits(requests_per_minute=10)
    assert sum(lim.take("t", f"r{i}", limits, 0)[0].allowed for i in range(10)) == 5


def test_budget_counter_rolls_over_with_the_period():
    clock = Clock()
    clock.t = datetime(2026, 1, 31, 23, 59, tzinfo=timezone.utc).timestamp()
    lim = LocalLimiter(clock=clock)
    limits = TenantLimits(token_budget=10, budget_period="month")
    assert lim.take("t", "a", limits, 10)[0].allowed
    d, _ = lim.take("t", "b", limits, 1)
    assert d.reason == "budget" and d.retry_after_s == 60
    clock.t += 61
    assert lim.take("t", "c", limits, 10)[0].allowed


def test_periods_and_durations():
    jan31 = datetime(2026, 1, 31, 12, tzinfo=timezone.utc).timestamp()
    assert budget_period("month", jan31) == ("month:2026-01", 12 * 3600)
    assert budget_period("day", jan31) == ("day:2026-01-31", 12 * 3600)
    dec = datetime(2026, 12, 31, 23, tzinfo=timezone.utc).timestamp()
    assert budget_period("month", dec) == ("month:2026-12", 3600)
    assert [format_duration(s) for s in (0.0204, 1.0, 1.25, 59.99, 60, 360, 3725)] == [
        "21ms", "1s", "1.3s", "60s", "1m0s", "6m0s", "1h2m5s"]
