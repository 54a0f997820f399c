"""``noor tenants``, ``noor keys`` and ``noor usage``: the admin API's operations, straight on the store.

They act on the store the settings name (SQLite in the data directory by default, or Redis), so they
work with or without a gateway running; a running gateway sees each change on its next request.
"""

from __future__ import annotations

import asyncio
import csv
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Annotated, TypeVar

import orjson
import typer
from rich.console import Console
from rich.table import Table

from noor.settings import Settings
from router.keys import create_key, rotate_key
from router.store import open_store
from router.store.base import Store, Tenant, TenantLimits, UsageRecord

T = TypeVar("T")
console = Console()
tenants = typer.Typer(help="Create, list and delete tenants.", no_args_is_help=True)
keys = typer.Typer(help="Create, list, revoke and rotate API keys.", no_args_is_help=True)


def _run(fn: Callable[[Store], Awaitable[T]]) -> T:
    async def go() -> T:
        settings = Settings()
        store = open_store(settings.store_url, settings.store)
        try:
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(go())


async def _tenant(store: Store, ref: str) -> Tenant:
    tenant = await store.get_tenant(ref) or await store.find_tenant(ref)
    if tenant is None:
        console.print(f"[red]no tenant {ref!r}[/red]")
        raise typer.Exit(1)
    return tenant


def _models(value: str | None) -> list[str] | None:
    return [m.strip() for m in value.split(",") if m.strip()] if value else None


@tenants.command("create")
def tenants_create(
    name: str,
    models: Annotated[str | None, typer.Option(help="Comma-separated model names; default: all.")] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute.")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Concurrent requests.")] = None,
    budget: Annotated[int | None, typer.Option(help="Token budget per period.")] = None,
    period: Annotated[str, typer.Option(help="Budget period: day or month.")] = "month",
    weight: Annotated[float, typer.Option(help="Fair-share weight.")] = 1.0,
    priority: Annotated[str, typer.Option(help="interactive or batch.")] = "interactive",
) -> None:
    """Create a tenant."""
    limits = TenantLimits(rpm, tpm, concurrency, budget, period)

    async def go(store: Store) -> Tenant:
        return await store.create_tenant(name, allowed_models=_models(models) or ["*"], limits=limits, weight=weight, priority=priority)

    t = _run(go)
    console.print(f"tenant [bold]{t.name}[/bold] id={t.id}")


@tenants.command("list")
def tenants_list() -> None:
    """List tenants."""
    rows = _run(lambda s: s.list_tenants())
    table = Table("id", "name", "models", "limits", "weight", "priority")
    for t in rows:
        lim = ", ".join(f"{k}={v}" for k, v in t.to_dict()["limits"].items() if v is not None)
        table.add_row(t.id, t.name, ",".join(t.allowed_models), lim, str(t.weight), t.priority)
    console.print(table)


@tenants.command("delete")
def tenants_delete(tenant: str) -> None:
    """Delete a tenant (and its keys)."""

    async def go(store: Store) -> bool:
        return await store.delete_tenant((await _tenant(store, tenant)).id)

    console.print("deleted" if _run(go) else "not found")


@keys.command("create")
def keys_create(
    tenant: str,
    name: Annotated[str, typer.Option(help="A label for the key.")] = "default",
    models: Annotated[str | None, typer.Option(help="Narrow the key to these models (comma-separated).")] = None,
) -> None:
    """Create an API key; its secret is printed once and never stored."""

    async def go(store: Store):
        return await create_key(store, (await _tenant(store, tenant)).id, name=name, models=_models(models))

    key, secret = _run(go)
    console.print(f"key id={key.id} prefix={key.prefix}", highlight=False)
    print(secret)


@keys.command("list")
def keys_list(tenant: str) -> None:
    """List a tenant's keys (prefixes only)."""

    async def go(store: Store):
        return await store.list_keys((await _tenant(store, tenant)).id)

    table = Table("id", "name", "prefix", "models", "created", "revoked")
    for k in _run(go):
        table.add_row(k.id, k.name, k.prefix + "…", ",".join(k.models or ["(tenant's)"]), _ts(k.created_at), _ts(k.revoked_at))
    console.print(table)


@keys.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key; it fails on its next request."""
    ok = _run(lambda s: s.revoke_key(key_id))
    console.print("revoked" if ok else "[red]no such active key[/red]")
    raise typer.Exit(0 if ok else 1)


@keys.command("rotate")
def keys_rotate(key_id: str) -> None:
    """Replace a key by a new one with the same scope; the old one stops at once."""
    rotated = _run(lambda s: rotate_key(s, key_id))
    if rotated is None:
        console.print("[red]no such active key[/red]")
        raise typer.Exit(1)
    key, secret = rotated
    console.print(f"key id={key.id} prefix={key.prefix} replaces {key_id}", highlight=False)
    print(secret)


def usage(
    tenant: Annotated[str | None, typer.Option(help="Tenant name or id; default: all.")] = None,
    since: Annotated[str | None, typer.Option(help="ISO date/time (UTC), inclusive.")] = None,
    until: Annotated[str | None, typer.Option(help="ISO date/time (UTC), exclusive.")] = None,
    records: Annotated[bool, typer.Option(help="Raw records instead of daily totals.")] = False,
    format: Annotated[str, typer.Option(help="table, json or csv.")] = "table",
) -> None:
    """Usage totals per tenant/model/day, or raw records (json/csv export)."""
    t0, t1 = _parse_time(since), _parse_time(until)

    async def go(store: Store):
        tid = (await _tenant(store, tenant)).id if tenant else None
        if records:
            return await store.usage_records(tenant_id=tid, since=t0, until=t1)
        return await store.usage_totals(tenant_id=tid, since=t0, until=t1)

    rows = [r.to_dict() for r in _run(go)]
    if format == "json":
        sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif format == "csv":
        fields = list(UsageRecord.__dataclass_fields__) if records else list(rows[0]) if rows else ["day"]
        writer = csv.DictWriter(sys.stdout, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    else:
        if not rows:
            console.print("no usage")
            return
        table = Table(*rows[0].keys())
        for r in rows:
            table.add_row(*(str(v) for v in r.values()))
        console.print(table)


def _parse_time(value: str | None) -> float | None:
    if value is None:
        return None
    dt = datetime.fromisoformat(value)
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


def _ts(value: float | None) -> str:
    return "" if value is None else datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%d %H:%M")
