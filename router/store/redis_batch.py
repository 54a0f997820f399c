"""Auto-pipelining: commands issued by concurrent requests share one round trip to Redis.

Each request still makes its own calls (one reserve, one settle, one epoch read), but calls made while a
round trip is already in flight wait for it to return and then go out together, as one pipeline: one
write and one read for the batch instead of one pair per call. At low load a batch is one call and costs
one event-loop tick; under load, syscalls and context switches (what a busy machine charges most for)
grow with the number of batches, not of requests.

Scripts are sent by SHA; a script Redis does not know (it restarted) is loaded and the call retried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

Queue = Callable[[Any], Any]  # queues one command on a pipeline


class AutoPipeline:
    def __init__(self, client: aioredis.Redis, *, enabled: bool = True, max_batch: int = 512) -> None:
        self._client = client
        self.enabled = enabled
        self._max_batch = max_batch
        self._pending: list[tuple[asyncio.Future, Queue, AsyncScript | None]] = []
        self._flushing = False
        self.batches = 0  # round trips made (for benchmarks)
        self.calls = 0

    async def execute(self, *args: Any) -> Any:
        """One plain command, e.g. ``execute("GET", key)``."""
        if not self.enabled:
            return await self._client.execute_command(*args)
        return await self._submit(lambda pipe: pipe.execute_command(*args), None)

    async def script(self, script: AsyncScript, keys: list, args: list) -> Any:
        """Run a registered script by SHA."""
        if not self.enabled:
            return await script(keys=keys, args=args)
        return await self._submit(lambda pipe: pipe.evalsha(script.sha, len(keys), *keys, *args), script)

    async def _submit(self, queue: Queue, script: AsyncScript | None) -> Any:
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((fut, queue, script))
        if not self._flushing:
            self._flushing = True
            asyncio.ensure_future(self._flush())
        return await fut

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
                await self._run(batch)
        finally:
            self._flushing = False

    async def _run(self, batch: list[tuple[asyncio.Future, Queue, AsyncScript | None]]) -> None:
        self.batches += 1
        self.calls += len(batch)
        pipe = self._client.pipeline(transaction=False)
        for _, queue, _ in batch:
            queue(pipe)
        try:
            results = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # the connection failed: every call in the batch failed with it
            for fut, _, _ in batch:
                if not fut.done():
                    fut.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        retry = []
        for item, result in zip(batch, results, strict=True):
            fut, _, script = item
            if fut.done():
                continue
            if isinstance(result, NoScriptError) and script is not None:
                retry.append(item)
            elif isinstance(result, Exception):
                fut.set_exception(result)
            else:
                fut.set_result(result)
        if retry:
            try:
                for script in {s for _, _, s in retry if s is not None}:
                    script.sha = await self._client.script_load(script.script)
            except BaseException as exc:
                for fut, _, _ in retry:
                    if not fut.done():
                        fut.set_exception(exc)
                return
            await self._run(retry)
