"""Budget periods: a token budget is per UTC day or per UTC calendar month, and resets at its end."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone


def budget_period(period: str, now: float) -> tuple[str, float]:
    """The id of the period ``now`` falls in (``day:2026-11-27`` / ``month:2026-11``) and seconds until it ends."""
    t = datetime.fromtimestamp(now, tz=timezone.utc)
    if period == "day":
        start = t.replace(hour=0, minute=0, second=0, microsecond=0)
        return "day:" + start.strftime("%Y-%m-%d"), (start + timedelta(days=1)).timestamp() - now
    if period == "month":
        start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
        return "month:" + start.strftime("%Y-%m"), end.timestamp() - now
    raise ValueError(f"unknown budget period {period!r} (use day or month)")
