"""The run's tenants and keys, made through the gateway's admin API, and their usage ledger read back.

Each run makes fresh tenants (``loadtest-<run id>-<name>``), so its ledger holds exactly the run's
requests and nothing of anyone else's; the tenants stay afterwards, so the ledger can be audited later.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from loadtest.config import TenantSpec

TENANTS_ENV = "NOOR_LOADTEST_TENANTS"  # JSON list of {name, id, key, weight}: tenants made by the caller


class AdminError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class RunTenant:
    name: str  # the profile's name (alpha, beta…)
    id: str | None  # the gateway's tenant id; None for a key given by hand
    key: str
    weight: float = 1.0

    def public(self) -> dict:
        """What may be written to disk: never the key."""
        return {"name": self.name, "id": self.id, "weight": self.weight}

    def with_key(self) -> dict:
        """For handing the tenant to the Locust child process (through its environment)."""
        return {**self.public(), "key": self.key}


class AdminClient:
    def __init__(self, base_url: str, admin_token: str | None, timeout_s: float = 30.0) -> None:
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"), timeout=timeout_s,
            headers={"Authorization": f"Bearer {admin_token}"} if admin_token else {},
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check(self, r: httpx.Response, what: str) -> dict:
        if r.status_code >= 400:
            try:
                msg = r.json()["error"]["message"]
            except Exception:  # noqa: BLE001
                msg = r.text[:200]
            raise AdminError(f"{what}: HTTP {r.status_code}: {msg}")
        return r.json()

    def create_tenant(self, name: str, allowed_models: list[str]) -> str:
        body = self._check(self.http.post("/admin/tenants", json={"name": name, "allowed_models": allowed_models}),
                           f"creating tenant {name}")
        return body["id"]

    def create_key(self, tenant_id: str, name: str = "loadtest") -> str:
        body = self._check(self.http.post(f"/admin/tenants/{tenant_id}/keys", json={"name": name}),
                           f"creating a key for {tenant_id}")
        return body["key"]

    def usage_records(self, tenant_id: str, since: float | None = None, until: float | None = None) -> list[dict]:
        params: dict = {"tenant_id": tenant_id}
        if since is not None:
            params["since"] = since
        if until is not None:
            params["until"] = until
        return self._check(self.http.get("/admin/usage/records", params=params), f"usage of {tenant_id}")["data"]


def provision(admin: AdminClient, tenants: list[TenantSpec], run_id: str, model: str) -> list[RunTenant]:
    """Create every tenant without a key (and one key each); keep the ones given with a key."""
    out = []
    for t in tenants:
        if t.key:
            out.append(RunTenant(t.name, t.id, t.key, t.weight))
            continue
        tid = admin.create_tenant(f"loadtest-{run_id}-{t.name}", [model])
        out.append(RunTenant(t.name, tid, admin.create_key(tid, name=f"loadtest-{run_id}"), t.weight))
    return out
