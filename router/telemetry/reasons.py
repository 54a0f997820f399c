"""Why a request was refused, as one of a few fixed words (a metric label must stay bounded).

Stages raise ``OpenAIError``; the reason is read from the error after the fact, so no stage has to
report to telemetry. A stage may set ``reason`` on the error to say it outright (the limiter, the
budget check and the fair scheduler, built on other branches, can); otherwise it is inferred from the
status and OpenAI error code the client was answered with.
"""

from __future__ import annotations

from typing import Final

AUTH: Final = "auth"
VALIDATION: Final = "validation"
LIMIT: Final = "limit"
BUDGET: Final = "budget"
DEADLINE: Final = "deadline"
NO_CAPACITY: Final = "no_capacity"
CLIENT_CLOSED: Final = "client_closed"
ERROR: Final = "error"

REASONS: Final = frozenset({AUTH, VALIDATION, LIMIT, BUDGET, DEADLINE, NO_CAPACITY, CLIENT_CLOSED, ERROR})

_BY_CODE: Final = {
    "invalid_api_key": AUTH,
    "store_unavailable": AUTH,  # the key could not be checked
    "insufficient_quota": BUDGET,  # OpenAI's code for a spent budget
    "budget_exceeded": BUDGET,
    "deadline_exceeded": DEADLINE,
    "queue_timeout": DEADLINE,
    "engine_unavailable": NO_CAPACITY,
    "no_capacity": NO_CAPACITY,
}


def refusal_reason(exc: BaseException) -> str:
    """The reason label for an error the gateway answered with (always one of ``REASONS``)."""
    explicit = getattr(exc, "reason", None)
    if explicit in REASONS:
        return explicit  # type: ignore[return-value]
    code = getattr(exc, "code", None)
    if code in _BY_CODE:
        return _BY_CODE[code]
    status = getattr(exc, "status", 500)
    if status == 401:
        return AUTH
    if status == 429:
        return LIMIT
    if status in (408, 504):
        return DEADLINE
    if status == 499:
        return CLIENT_CLOSED
    if status in (502, 503):
        return NO_CAPACITY
    if 400 <= status < 500:
        return VALIDATION
    return ERROR
