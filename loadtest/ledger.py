"""Does the bill match the load? The run's own counts against the gateway's usage ledger.

Every request that reached the gateway came back with an ``x-request-id``; the ledger keeps one record
per request id. So the check is exact, request by request: the same ids on both sides, and for each
completed request the same prompt and completion tokens (the client's come from the stream's usage
chunk, the ledger's from the engine through the gateway's meter). Requests that never reached the
gateway (connection refused, the load generator's own cap) have no id and no record, as it should be.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from loadtest.client import RequestResult
from loadtest.provision import AdminClient, RunTenant


@dataclass(slots=True)
class TenantLedger:
    name: str
    tenant_id: str | None
    client_requests: int = 0  # requests that reached the gateway (had a request id)
    ledger_requests: int = 0
    client_prompt_tokens: int = 0
    ledger_prompt_tokens: int = 0
    client_completion_tokens: int = 0
    ledger_completion_tokens: int = 0
    missing: list[str] = field(default_factory=list)  # ids the client saw that the ledger lacks
    extra: list[str] = field(default_factory=list)  # ledger ids the client never saw
    token_mismatches: list[str] = field(default_factory=list)
    billed_unseen: list[str] = field(default_factory=list)  # failed on the client, yet tokens were billed

    @property
    def agrees(self) -> bool:
        return (not self.missing and not self.extra and not self.token_mismatches
                and self.client_requests == self.ledger_requests
                and self.client_prompt_tokens == self.ledger_prompt_tokens
                and self.client_completion_tokens == self.ledger_completion_tokens)

    def to_dict(self) -> dict:
        return {
            "name": self.name, "tenant_id": self.tenant_id, "client_requests": self.client_requests,
            "ledger_requests": self.ledger_requests, "client_prompt_tokens": self.client_prompt_tokens,
            "ledger_prompt_tokens": self.ledger_prompt_tokens, "client_completion_tokens": self.client_completion_tokens,
            "ledger_completion_tokens": self.ledger_completion_tokens, "missing": self.missing[:20],
            "extra": self.extra[:20], "token_mismatches": self.token_mismatches[:20],
            "billed_unseen": self.billed_unseen[:20], "agrees": self.agrees,
        }


@dataclass(slots=True)
class Reconciliation:
    tenants: list[TenantLedger]
    checked: bool = True  # False when the ledger could not be read (no admin token, keys given by hand)
    note: str = ""

    @property
    def agrees(self) -> bool:
        return self.checked and all(t.agrees for t in self.tenants)

    def to_dict(self) -> dict:
        return {"checked": self.checked, "agrees": self.agrees, "note": self.note,
                "tenants": [t.to_dict() for t in self.tenants]}


def fetch(admin: AdminClient, tenants: list[RunTenant], since: float, expect: dict[str, int],
          timeout_s: float = 20.0) -> dict[str, list[dict]]:
    """Each tenant's records since ``since``; waits (the meter writes in batches) until the expected
    number arrived or ``timeout_s`` passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = {t.id: admin.usage_records(t.id, since=since) for t in tenants if t.id}
        if all(len(got.get(tid, [])) >= n for tid, n in expect.items()) or time.monotonic() > deadline:
            return got
        time.sleep(0.5)


def reconcile(records: list[RequestResult], ledger: dict[str, list[dict]], tenants: list[RunTenant]) -> Reconciliation:
    out = []
    for t in tenants:
        tl = TenantLedger(t.name, t.id)
        mine = {r.request_id: r for r in records if r.tenant == t.name and r.request_id}
        theirs = {rec["request_id"]: rec for rec in ledger.get(t.id or "", [])}
        tl.client_requests, tl.ledger_requests = len(mine), len(theirs)
        tl.missing = sorted(set(mine) - set(theirs))
        tl.extra = sorted(set(theirs) - set(mine))
        # what Noor billed: every record, failed ones included (a client that left mid-stream is billed
        # for the tokens generated until then); what the client saw: the usage of its completed requests
        tl.ledger_prompt_tokens = sum(rec["prompt_tokens"] for rec in theirs.values())
        tl.ledger_completion_tokens = sum(rec["completion_tokens"] for rec in theirs.values())
        for rid, r in mine.items():
            rec = theirs.get(rid)
            if not r.ok:
                if rec is not None and rec["prompt_tokens"] + rec["completion_tokens"] > 0:
                    tl.billed_unseen.append(rid)
                continue
            tl.client_prompt_tokens += r.prompt_tokens or 0
            tl.client_completion_tokens += r.completion_tokens or 0
            if rec is not None and (rec["prompt_tokens"], rec["completion_tokens"]) != (r.prompt_tokens, r.completion_tokens):
                tl.token_mismatches.append(rid)
        out.append(tl)
    return Reconciliation(out)


def expected_counts(records: list[RequestResult], tenants: list[RunTenant]) -> dict[str, int]:
    by_name = {t.name: t.id for t in tenants if t.id}
    counts: dict[str, int] = {tid: 0 for tid in by_name.values()}
    for r in records:
        if r.request_id and r.tenant in by_name:
            counts[by_name[r.tenant]] += 1
    return counts
