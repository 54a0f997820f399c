"""Endpoint-picking policies by name. Adding a policy: one file, one line here."""

from __future__ import annotations

from collections.abc import Callable

from router.picking.base import Policy
from router.picking.least_outstanding import LeastOutstanding
from router.picking.round_robin import RoundRobin

POLICIES: dict[str, Callable[[], Policy]] = {
    LeastOutstanding.name: LeastOutstanding,
    RoundRobin.name: RoundRobin,
}


def make_policy(name: str) -> Policy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown routing policy {name!r}; known: {', '.join(sorted(POLICIES))}") from None
