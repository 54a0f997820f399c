"""The embedded store: one SQLite file in the data directory, in WAL mode.

Two connections: a reader used on the event loop for the only hot read (key → identity, a single
indexed row, microseconds); and a writer used from a worker thread for everything else, so batch
inserts of usage never block the loop. The auth epoch is a shared memory-mapped file beside the database
(``epoch_file.py``) that every change to tenants or keys, from any process, bumps after its commit, so a
revoke anywhere reaches the gateway's key cache on the next request.
"""

from __future__ import annotations

import asyncio
import operator
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import orjson

from router.store.base import (
    ApiKey,
    Identity,
    Store,
    Tenant,
    TenantLimits,
    UsageRecord,
    UsageTotal,
    effective_models,
)
from router.store.epoch_file import EpochFile

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
    id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, allowed_models TEXT NOT NULL, limits TEXT NOT NULL,
    weight REAL NOT NULL DEFAULT 1.0, priority TEXT NOT NULL DEFAULT 'interactive', created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE, name TEXT NOT NULL,
    prefix TEXT NOT NULL, key_hash TEXT UNIQUE NOT NULL, models TEXT, created_at REAL NOT NULL, revoked_at REAL
);
CREATE INDEX IF NOT EXISTS api_keys_tenant ON api_keys(tenant_id);
CREATE TABLE IF NOT EXISTS usage (
    request_id TEXT PRIMARY KEY, ts REAL NOT NULL, tenant_id TEXT NOT NULL, key_id TEXT NOT NULL,
    model TEXT NOT NULL, pool TEXT, endpoint TEXT, engine TEXT, prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL, usage_source TEXT NOT NULL, status INTEGER NOT NULL, outcome TEXT NOT NULL,
    stream INTEGER NOT NULL, latency_ms REAL, ttft_ms REAL
);
CREATE INDEX IF NOT EXISTS usage_tenant_ts ON usage(tenant_id, ts);
"""

_USAGE_COLS = (
    "request_id", "ts", "tenant_id", "key_id", "model", "pool", "endpoint", "engine", "prompt_tokens",
    "completion_tokens", "usage_source", "status", "outcome", "stream", "latency_ms", "ttft_ms",
)

_usage_row = operator.attrgetter(*_USAGE_COLS)  # a record's row in one C call (4x a tuple of getattrs)
_INSERT_USAGE = f"INSERT OR IGNORE INTO usage ({','.join(_USAGE_COLS)}) VALUES ({','.join('?' * len(_USAGE_COLS))})"


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def _tenant(row: tuple) -> Tenant:
    return Tenant(
        id=row[0], name=row[1], allowed_models=orjson.loads(row[2]), limits=TenantLimits(**orjson.loads(row[3])),
        weight=row[4], priority=row[5], created_at=row[6],
    )


def _key(row: tuple) -> ApiKey:
    return ApiKey(
        id=row[0], tenant_id=row[1], name=row[2], prefix=row[3], key_hash=row[4],
        models=orjson.loads(row[5]) if row[5] is not None else None, created_at=row[6], revoked_at=row[7],
    )


class SQLiteStore(Store):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._writer = _connect(path)
        self._writer.executescript(_SCHEMA)
        self._reader = _connect(path)
        self._lock = threading.Lock()
        self._epoch = EpochFile(path.with_name(path.name + "-epoch"))

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        return cls(Path(url.removeprefix("sqlite:///").removeprefix("sqlite://")))

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            with self._lock:
                return fn(self._writer)

        return await asyncio.to_thread(locked)

    async def _change(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A write to tenants or keys: committed, then the auth epoch moved (key caches everywhere drop)."""
        try:
            return await self._run(fn)
        finally:
            self._epoch.bump()  # also after a failure: a partial change must not stay hidden behind a cache

    # ---- tenants
    async def create_tenant(self, name, *, allowed_models=None, limits=None, weight=1.0, priority="interactive") -> Tenant:
        t = Tenant(
            id="ten_" + uuid.uuid4().hex[:16], name=name, allowed_models=list(allowed_models or ["*"]),
            limits=limits or TenantLimits(), weight=weight, priority=priority,
        )
        await self._change(lambda c: c.execute(
            "INSERT INTO tenants VALUES (?,?,?,?,?,?,?)",
            (t.id, t.name, orjson.dumps(t.allowed_models), orjson.dumps(t.limits), t.weight, t.priority, t.created_at),
        ))
        return t

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        row = await self._run(lambda c: c.execute("SELECT * FROM tenants WHERE id=?", (tenant_id,)).fetchone())
        return _tenant(row) if row else None

    async def find_tenant(self, name: str) -> Tenant | None:
        row = await self._run(lambda c: c.execute("SELECT * FROM tenants WHERE name=?", (name,)).fetchone())
        return _tenant(row) if row else None

    async def list_tenants(self) -> list[Tenant]:
        rows = await self._run(lambda c: c.execute("SELECT * FROM tenants ORDER BY created_at").fetchall())
        return [_tenant(r) for r in rows]

    async def update_tenant(self, tenant: Tenant) -> None:
        await self._change(lambda c: c.execute(
            "UPDATE tenants SET name=?, allowed_models=?, limits=?, weight=?, priority=? WHERE id=?",
            (tenant.name, orjson.dumps(tenant.allowed_models), orjson.dumps(tenant.limits), tenant.weight,
             tenant.priority, tenant.id),
        ))

    async def delete_tenant(self, tenant_id: str) -> bool:
        cur = await self._change(lambda c: c.execute("DELETE FROM tenants WHERE id=?", (tenant_id,)))
        return cur.rowcount > 0

    # ---- keys
    async def add_key(self, key: ApiKey) -> None:
        await self._change(lambda c: c.execute(
            "INSERT INTO api_keys VALUES (?,?,?,?,?,?,?,?)",
            (key.id, key.tenant_id, key.name, key.prefix, key.key_hash,
             orjson.dumps(key.models) if key.models is not None else None, key.created_at, key.revoked_at),
        ))

    async def get_key(self, key_id: str) -> ApiKey | None:
        row = await self._run(lambda c: c.execute("SELECT * FROM api_keys WHERE id=?", (key_id,)).fetchone())
        return _key(row) if row else None

    async def list_keys(self, tenant_id: str) -> list[ApiKey]:
        rows = await self._run(
            lambda c: c.execute("SELECT * FROM api_keys WHERE tenant_id=? ORDER BY created_at", (tenant_id,)).fetchall()
        )
        return [_key(r) for r in rows]

    async def revoke_key(self, key_id: str) -> bool:
        cur = await self._change(lambda c: c.execute(
            "UPDATE api_keys SET revoked_at=? WHERE id=? AND revoked_at IS NULL", (time.time(), key_id)
        ))
        return cur.rowcount > 0

    async def resolve_key(self, key_hash: str) -> Identity | None:
        # On the loop thread: one indexed row, cheaper than a hop to a worker thread.
        row = self._reader.execute(
            "SELECT k.*, t.* FROM api_keys k JOIN tenants t ON t.id = k.tenant_id WHERE k.key_hash=? AND k.revoked_at IS NULL",
            (key_hash,),
        ).fetchone()
        if row is None:
            return None
        key, tenant = _key(row[:8]), _tenant(row[8:])
        return Identity(
            key_id=key.id, tenant_id=tenant.id, tenant_name=tenant.name, models=effective_models(tenant, key),
            limits=tenant.limits, weight=tenant.weight, priority=tenant.priority,
        )

    async def auth_epoch(self) -> object:
        return self._epoch.read()

    # ---- usage
    async def add_usage(self, records: list[UsageRecord]) -> None:
        rows = list(map(_usage_row, records))

        def insert(c: sqlite3.Connection) -> None:
            c.execute("BEGIN")
            c.executemany(_INSERT_USAGE, rows)
            c.execute("COMMIT")

        await self._run(insert)

    @staticmethod
    def _where(tenant_id: str | None, since: float | None, until: float | None) -> tuple[str, list]:
        clauses, args = [], []
        if tenant_id is not None:
            clauses.append("tenant_id=?")
            args.append(tenant_id)
        if since is not None:
            clauses.append("ts>=?")
            args.append(since)
        if until is not None:
            clauses.append("ts<?")
            args.append(until)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), args

    async def usage_totals(self, *, tenant_id=None, since=None, until=None) -> list[UsageTotal]:
        where, args = self._where(tenant_id, since, until)
        sql = (
            "SELECT date(ts, 'unixepoch') AS day, tenant_id, model, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens)"
            f" FROM usage{where} GROUP BY day, tenant_id, model ORDER BY day, tenant_id, model"
        )
        rows = await self._run(lambda c: c.execute(sql, args).fetchall())
        return [UsageTotal(*r) for r in rows]

    async def usage_records(self, *, tenant_id=None, since=None, until=None, limit=None) -> list[UsageRecord]:
        where, args = self._where(tenant_id, since, until)
        sql = f"SELECT {','.join(_USAGE_COLS)} FROM usage{where} ORDER BY ts"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        rows = await self._run(lambda c: c.execute(sql, args).fetchall())
        return [UsageRecord(**dict(zip(_USAGE_COLS, r, strict=True)) | {"stream": bool(r[13])}) for r in rows]

    async def close(self) -> None:
        with self._lock:
            self._writer.close()
        self._reader.close()
        self._epoch.close()
