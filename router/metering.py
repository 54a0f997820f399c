"""Last stage: one usage record per request, written to the store in batches, off the request path.

``record`` only appends to a list; a background task flushes batches. If the store refuses a batch, the
batch goes to an append-only spool file (JSON lines) and is replayed once the store answers again —
records are keyed by request id and inserted idempotently, so a replay never counts one twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import orjson

from router.context import RequestContext
from router.store.base import Store, UsageRecord

log = logging.getLogger("noor.metering")

Observer = Callable[[UsageRecord], None]


def usage_record(ctx: RequestContext) -> UsageRecord:
    identity, usage, endpoint = ctx.identity, ctx.usage, ctx.endpoint
    assert identity is not None and ctx.model is not None
    return UsageRecord(
        request_id=ctx.request_id,
        tenant_id=identity.tenant_id,
        key_id=identity.key_id,
        model=ctx.model.name,
        pool=ctx.model.pool,
        endpoint=endpoint.name if endpoint else "",
        engine=endpoint.engine if endpoint else "",
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else 0,
        usage_source=usage.source if usage else "engine",
        status=ctx.status,
        outcome=ctx.outcome,
        stream=ctx.stream,
        latency_ms=round(ctx.elapsed_ms(), 3),
        ttft_ms=None if (t := ctx.ttft_ms()) is None else round(t, 3),
    )


class Meter:
    def __init__(
        self,
        store: Store,
        *,
        spool_path: Path,
        flush_interval_s: float = 0.5,
        max_batch: int = 500,
        write_slice: int = 50,
        observers: list[Observer] | None = None,
    ) -> None:
        self._store = store
        self._spool_path = spool_path
        self._flush_interval_s = flush_interval_s
        self._max_batch = max_batch
        # Records per store write: a write (packing on Redis, a GIL-holding insert on SQLite) holds the
        # event loop for a few µs per record, so a batch leaves in slices with requests served between
        # them. Measured on Redis at 2,000 req/s, two alternating pairs: p99 added 7.5-22.7 ms writing 500
        # at once, 3.6-8.3 ms by 50.
        self._write_slice = max(1, min(write_slice, max_batch))
        self._pending: list[UsageRecord] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.observers: list[Observer] = list(observers or [])

    def record(self, ctx: RequestContext) -> UsageRecord:
        rec = usage_record(ctx)
        self._pending.append(rec)
        if len(self._pending) >= self._max_batch:
            self._wake.set()
        for observe in self.observers:
            try:
                observe(rec)
            except Exception:
                log.exception("usage observer failed")
        return rec

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="meter")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._flush_interval_s)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Write what is pending (and any spooled backlog); never raises, never drops a record."""
        batch, self._pending = self._pending, []
        try:
            await self._replay_spool()
        except Exception:
            log.warning("usage store unavailable; spooling %d records", len(batch), exc_info=True)
            self._spool(batch)
            return
        for i in range(0, len(batch), self._write_slice):
            try:
                await self._store.add_usage(batch[i : i + self._write_slice])
            except Exception:
                log.warning("usage store unavailable; spooling %d records", len(batch) - i, exc_info=True)
                self._spool(batch[i:])
                return

    def _spool(self, records: list[UsageRecord]) -> None:
        if not records:
            return
        self._spool_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._spool_path, "ab") as f:
            f.write(b"".join(orjson.dumps(r) + b"\n" for r in records))
            f.flush()
            os.fsync(f.fileno())

    async def _replay_spool(self) -> None:
        replay = self._spool_path.with_suffix(".replaying")
        if not replay.exists():
            if not self._spool_path.exists():
                return
            os.replace(self._spool_path, replay)
        records = [UsageRecord(**orjson.loads(line)) for line in replay.read_bytes().splitlines() if line.strip()]
        for i in range(0, len(records), self._write_slice):
            await self._store.add_usage(records[i : i + self._write_slice])
        replay.unlink()
        log.info("replayed %d spooled usage records", len(records))
