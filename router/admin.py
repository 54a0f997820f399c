"""The admin API under ``/admin/``: tenants, keys and usage.

Two kinds of caller: the operator, with the admin token from settings, who may do everything; and a
tenant, with one of its own API keys, who may read its own usage and keys and nothing of anyone else's.
Errors keep OpenAI's shape, like the rest of the gateway.
"""

# No "from __future__ import annotations": FastAPI resolves the dependency aliases defined inside build_admin_api at runtime.

import csv
import hmac
import io
from dataclasses import asdict
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from router.auth import Authenticator
from router.errors import OpenAIError, unauthorized
from router.keys import create_key, rotate_key
from router.store.base import Store, Tenant, TenantLimits, UsageRecord


class Caller(BaseModel):
    admin: bool
    tenant_id: str | None = None

    def require_admin(self) -> None:
        if not self.admin:
            raise OpenAIError(403, "This operation needs the admin token.", code="admin_only")

    def require_tenant(self, tenant_id: str) -> None:
        if not self.admin and self.tenant_id != tenant_id:
            raise OpenAIError(403, "This key may only read its own tenant's data.", code="other_tenant")


class LimitsIn(BaseModel):
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    max_concurrent: int | None = Field(default=None, ge=1)
    token_budget: int | None = Field(default=None, ge=1)
    budget_period: Literal["day", "month"] = "month"


class TenantIn(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    allowed_models: list[str] = Field(default_factory=lambda: ["*"])
    limits: LimitsIn = Field(default_factory=LimitsIn)
    weight: float = Field(default=1.0, gt=0)
    priority: Literal["interactive", "batch"] = "interactive"


class TenantPatch(BaseModel):
    name: str | None = None
    allowed_models: list[str] | None = None
    limits: LimitsIn | None = None
    weight: float | None = Field(default=None, gt=0)
    priority: Literal["interactive", "batch"] | None = None


class KeyIn(BaseModel):
    name: str = "default"
    models: list[str] | None = Field(default=None, description="Narrow the key to these models; None = the tenant's.")


def build_admin_api(store: Store, auth: Authenticator, admin_token: str | None) -> APIRouter:
    api = APIRouter(prefix="/admin", tags=["admin"])

    async def caller(authorization: Annotated[str | None, Header()] = None) -> Caller:
        if not authorization:
            raise unauthorized("The admin API needs 'Authorization: Bearer <admin token or API key>'.")
        token = authorization.partition(" ")[2].strip()
        if admin_token and hmac.compare_digest(token.encode(), admin_token.encode()):
            return Caller(admin=True)
        identity = await auth.authenticate(authorization)
        return Caller(admin=False, tenant_id=identity.tenant_id)

    Who = Annotated[Caller, Depends(caller)]

    async def tenant_or_404(tenant_id: str) -> Tenant:
        tenant = await store.get_tenant(tenant_id)
        if tenant is None:
            raise OpenAIError(404, f"No tenant {tenant_id}.", code="tenant_not_found")
        return tenant

    @api.post("/tenants", status_code=201)
    async def create_tenant(body: TenantIn, who: Who) -> dict:
        who.require_admin()
        if await store.find_tenant(body.name) is not None:
            raise OpenAIError(409, f"A tenant named {body.name!r} exists already.", code="tenant_exists")
        t = await store.create_tenant(
            body.name, allowed_models=body.allowed_models, limits=TenantLimits(**body.limits.model_dump()),
            weight=body.weight, priority=body.priority,
        )
        return t.to_dict()

    @api.get("/tenants")
    async def list_tenants(who: Who) -> dict:
        who.require_admin()
        return {"data": [t.to_dict() for t in await store.list_tenants()]}

    @api.get("/tenants/{tenant_id}")
    async def get_tenant(tenant_id: str, who: Who) -> dict:
        who.require_tenant(tenant_id)
        return (await tenant_or_404(tenant_id)).to_dict()

    @api.patch("/tenants/{tenant_id}")
    async def patch_tenant(tenant_id: str, body: TenantPatch, who: Who) -> dict:
        who.require_admin()
        t = await tenant_or_404(tenant_id)
        changes = body.model_dump(exclude_unset=True)
        if "limits" in changes and body.limits is not None:
            t.limits = TenantLimits(**body.limits.model_dump())
        for field in ("name", "allowed_models", "weight", "priority"):
            if changes.get(field) is not None:
                setattr(t, field, changes[field])
        await store.update_tenant(t)
        return t.to_dict()

    @api.delete("/tenants/{tenant_id}")
    async def delete_tenant(tenant_id: str, who: Who) -> dict:
        who.require_admin()
        if not await store.delete_tenant(tenant_id):
            raise OpenAIError(404, f"No tenant {tenant_id}.", code="tenant_not_found")
        return {"id": tenant_id, "deleted": True}

    @api.post("/tenants/{tenant_id}/keys", status_code=201)
    async def new_key(tenant_id: str, body: KeyIn, who: Who) -> dict:
        who.require_admin()
        await tenant_or_404(tenant_id)
        key, secret = await create_key(store, tenant_id, name=body.name, models=body.models)
        return {**key.public(), "key": secret}

    @api.get("/tenants/{tenant_id}/keys")
    async def list_keys(tenant_id: str, who: Who) -> dict:
        who.require_tenant(tenant_id)
        return {"data": [k.public() for k in await store.list_keys(tenant_id)]}

    @api.post("/keys/{key_id}/revoke")
    async def revoke(key_id: str, who: Who) -> dict:
        who.require_admin()
        if not await store.revoke_key(key_id):
            raise OpenAIError(404, f"No active key {key_id}.", code="key_not_found")
        return {"id": key_id, "revoked": True}

    @api.post("/keys/{key_id}/rotate", status_code=201)
    async def rotate(key_id: str, who: Who) -> dict:
        who.require_admin()
        rotated = await rotate_key(store, key_id)
        if rotated is None:
            raise OpenAIError(404, f"No active key {key_id}.", code="key_not_found")
        key, secret = rotated
        return {**key.public(), "key": secret, "replaces": key_id}

    def scope(who: Caller, tenant_id: str | None) -> str | None:
        if who.admin:
            return tenant_id
        if tenant_id is not None:
            who.require_tenant(tenant_id)
        return who.tenant_id

    @api.get("/usage")
    async def usage(
        who: Who,
        tenant_id: str | None = None,
        since: Annotated[float | None, Query(description="Unix time, inclusive")] = None,
        until: Annotated[float | None, Query(description="Unix time, exclusive")] = None,
    ) -> dict:
        rows = await store.usage_totals(tenant_id=scope(who, tenant_id), since=since, until=until)
        return {"data": [r.to_dict() for r in rows]}

    @api.get("/usage/records")
    async def usage_records(
        who: Who,
        tenant_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: Annotated[int | None, Query(ge=1)] = None,
        format: Literal["json", "csv"] = "json",
    ) -> Response:
        records = await store.usage_records(tenant_id=scope(who, tenant_id), since=since, until=until, limit=limit)
        if format == "json":
            return JSONResponse({"data": [r.to_dict() for r in records]})
        return Response(records_csv([asdict(r) for r in records]), media_type="text/csv")

    return api


def records_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(UsageRecord.__dataclass_fields__))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def install_error_handlers(app: FastAPI) -> None:
    """FastAPI's own errors (validation, 404, 405) in OpenAI's shape too."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(OpenAIError)
    async def _openai(_: Request, exc: OpenAIError) -> Response:
        return Response(exc.body(), status_code=exc.status, media_type="application/json", headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        err = OpenAIError(400, f"Invalid request: {first.get('msg', 'bad input')}", param=param, code="invalid_value")
        return Response(err.body(), status_code=400, media_type="application/json")

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> Response:
        err = OpenAIError(exc.status_code, str(exc.detail))
        return Response(err.body(), status_code=exc.status_code, media_type="application/json")
