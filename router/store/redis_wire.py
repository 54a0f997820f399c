"""The request path's Redis client: one connection, every concurrent command pipelined on it.

redis-py's asyncio client costs 65-80 µs of CPU per command here (measured with 8 callers: connection
pool checkout and release, asyncio streams, retry and event machinery around every call), more than
the rest of a proxied request. The few commands a request sends — the auth epoch ``GET`` and the
limiter's two scripts — go through this instead: RESP written with ``hiredis.pack_command`` and read
with ``hiredis.Reader`` on a plain asyncio protocol, replies matched to callers in order, commands from
one loop iteration written together. 12 µs per command under the same load. Everything else (admin,
ledger, pub/sub, key lookups) keeps using redis-py.

Failures look like redis-py's to the callers' breaker: a lost connection fails every command waiting on
it with ``ConnectionError``; a command unanswered within ``socket_timeout_s`` fails with ``TimeoutError``
and drops the connection (later replies could no longer be matched); the next command reconnects. One
timer per connection watches the oldest unanswered command (replies come in order, so it is the first
one due) instead of a timer per command, which cost ~3 µs each, three times a request.
An error reply raises ``redis.exceptions.ResponseError``.
"""

from __future__ import annotations

import asyncio
import collections
import math
import ssl

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

def is_noscript(exc: BaseException) -> bool:
    """Is ``exc`` Redis saying it does not know a script's SHA (restarted, or its scripts flushed)?"""
    return isinstance(exc, ResponseError) and str(exc).startswith("NOSCRIPT")


_Waiter = tuple[asyncio.Future, float]  # the reply's future, and by when it must come (loop time; inf: no limit)


class _Wire(asyncio.Protocol):
    """One connection: writes commands, hands each reply to the oldest waiter."""

    def __init__(self, on_lost, loop: asyncio.AbstractEventLoop, timeout_s: float | None) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        self.waiters: collections.deque[_Waiter] = collections.deque()
        self._loop = loop
        self._timeout_s = timeout_s or None
        self._watchdog: asyncio.TimerHandle | None = None  # armed for the first waiter that is due
        self.out: list[bytes] = []  # commands of this loop iteration, written together by flush()
        self._flush_soon = False  # flush() is scheduled for this loop iteration
        self._flush_later: asyncio.TimerHandle | None = None  # ... or, for commands that may wait, later
        self._on_lost = on_lost

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport

    def expect(self, fut: asyncio.Future, *, limited: bool = True) -> None:
        """``fut`` takes the next reply not yet claimed; unanswered after the timeout (where ``limited``),
        the connection is dropped and every waiter fails."""
        if not (limited and self._timeout_s):
            self.waiters.append((fut, math.inf))
            return
        due = self._loop.time() + self._timeout_s
        self.waiters.append((fut, due))
        if self._watchdog is None:
            self._watchdog = self._loop.call_at(due, self._watch)

    def _watch(self) -> None:
        self._watchdog = None
        for _fut, due in self.waiters:  # deadlines grow with the queue: the first finite one is the next due
            if due == math.inf:
                continue
            if due <= self._loop.time():
                self.fail(TimeoutError(f"Redis did not answer within {self._timeout_s}s"))
                if self.transport is not None:
                    self.transport.abort()
            else:
                self._watchdog = self._loop.call_at(due, self._watch)
            return

    def send(self, command: bytes, loop: asyncio.AbstractEventLoop, *, within_s: float = 0.0) -> None:
        """Queue ``command``: it leaves with this loop iteration's others, or, given ``within_s``, with the
        next command that cannot wait, and at the latest ``within_s`` from now."""
        self.out.append(command)
        if self._flush_soon:
            return
        if not within_s:
            self._flush_soon = True
            loop.call_soon(self.flush)
        elif self._flush_later is None:
            self._flush_later = loop.call_later(within_s, self.flush)

    def flush(self) -> None:
        self._flush_soon = False
        if self._flush_later is not None:
            self._flush_later.cancel()
            self._flush_later = None
        out, self.out = self.out, []
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self.fail(ConnectionError(f"Redis protocol error: {exc}"))
                assert self.transport is not None
                self.transport.abort()
                return
            if reply is False:
                return
            if not self.waiters:
                continue
            fut, _due = self.waiters.popleft()  # the watchdog finds the next one due when it fires
            if not fut.done():
                if isinstance(reply, hiredis.ReplyError):
                    fut.set_exception(ResponseError(str(reply)))
                else:
                    fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(ConnectionError(f"Redis connection lost: {exc!r}" if exc else "Redis closed the connection"))
        self._on_lost(self)

    def fail(self, exc: Exception) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        while self.waiters:
            fut, _due = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(exc)


class PipelinedRedis:
    def __init__(
        self, *, host: str = "127.0.0.1", port: int = 6379, path: str | None = None, db: int = 0,
        username: str | None = None, password: str | None = None, tls: ssl.SSLContext | None = None,
        connect_timeout_s: float | None = 0.5, socket_timeout_s: float | None = 1.0,
    ) -> None:
        self._where = (host, port, path, tls)
        self._hello: list[tuple] = []
        if password:
            self._hello.append(("AUTH", username, password) if username else ("AUTH", password))
        if db:
            self._hello.append(("SELECT", db))
        self._connect_timeout_s = connect_timeout_s
        self._socket_timeout_s = socket_timeout_s
        self._wire: _Wire | None = None
        self._connecting: asyncio.Future | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def preload(self, *scripts: bytes | str) -> None:
        """Load these Lua scripts on every (re)connection, before any other command: an ``EVALSHA`` that
        nobody awaits (a settle) cannot recover from ``NOSCRIPT`` in order, and none meets it after a
        Redis restart. Already connected: they leave with the next write."""
        for script in scripts:
            command = ("SCRIPT", "LOAD", script)
            if command in self._hello:
                continue
            self._hello.append(command)
            loaded = self.queue(*command)
            if loaded is not None:  # a failure is met again as NOSCRIPT, where that is handled
                loaded.add_done_callback(lambda fut: fut.cancelled() or fut.exception())

    @classmethod
    def like(cls, client: aioredis.Redis) -> PipelinedRedis:
        """A pipelined client to the same Redis, with the same credentials and timeouts, as ``client``."""
        kw = client.connection_pool.connection_kwargs
        tls = None
        if issubclass(client.connection_pool.connection_class, aioredis.SSLConnection):
            tls = ssl.create_default_context()
        return cls(
            host=kw.get("host", "127.0.0.1"), port=kw.get("port", 6379), path=kw.get("path"), db=kw.get("db", 0) or 0,
            username=kw.get("username"), password=kw.get("password"), tls=tls,
            connect_timeout_s=kw.get("socket_connect_timeout"), socket_timeout_s=kw.get("socket_timeout"),
        )

    async def execute(self, *args: object) -> object:
        """Send one command (pipelined with any others in flight) and return its reply."""
        wire = self._live() or await self._connect()
        loop = self._loop
        assert loop is not None
        fut = loop.create_future()
        wire.expect(fut)
        wire.send(hiredis.pack_command(args), loop)
        return await fut

    def queue(self, *args: object, within_s: float = 0.0) -> asyncio.Future | None:
        """Queue one command without waiting: it leaves with this loop iteration's others, before any
        callback scheduled after this call runs — or, given ``within_s``, it may wait that long for
        another command to share its write (and Redis's reply with it). Its reply's future; None when
        not connected (the caller then uses ``execute``)."""
        wire, loop = self._wire, self._loop
        if wire is None or loop is None or wire.transport is None or wire.transport.is_closing():
            return None
        fut = loop.create_future()
        wire.expect(fut)
        wire.send(hiredis.pack_command(args), loop, within_s=within_s)
        return fut

    def flush(self) -> None:
        """Write what is queued now, not at the end of this loop pass."""
        if self._wire is not None:
            self._wire.flush()

    async def execute_many(self, commands: list[tuple]) -> list[object]:
        """Send several commands in one write and return their replies (an error reply raises)."""
        if not commands:
            return []
        wire = self._live() or await self._connect()
        loop = self._loop
        assert loop is not None
        futures = [loop.create_future() for _ in commands]
        last = futures[-1]
        for fut in futures:
            wire.expect(fut)
        for command in commands:
            wire.send(hiredis.pack_command(command), loop)
        try:
            await last  # replies come in order: the last one answered means all were
        finally:
            errors = [f.exception() for f in futures if f.done() and not f.cancelled()]  # all retrieved
        for exc in errors:
            if exc is not None:
                raise exc
        return [fut.result() for fut in futures]

    async def evalsha(self, sha: str, script: bytes | str, keys: list, args: list) -> object:
        """Run a Lua script by its SHA, loading it first if this Redis has not seen it (NOSCRIPT)."""
        try:
            return await self.execute("EVALSHA", sha, len(keys), *keys, *args)
        except ResponseError as exc:
            if not is_noscript(exc):
                raise
            await self.execute("SCRIPT", "LOAD", script)
            return await self.execute("EVALSHA", sha, len(keys), *keys, *args)

    async def close(self) -> None:
        if self._wire is not None and self._wire.transport is not None:
            self._wire.flush()  # what is queued still leaves
            self._wire.transport.close()
        self._wire = None

    # ---- internals
    def _live(self) -> _Wire | None:
        """The connection, unless there is none or it is closing (dropped after a timeout, say, before its
        ``connection_lost`` ran): then the caller connects afresh."""
        wire = self._wire
        if wire is None or wire.transport is None or wire.transport.is_closing():
            return None
        return wire

    def _lost(self, wire: _Wire) -> None:
        if self._wire is wire:
            self._wire = None

    async def _connect(self) -> _Wire:
        if self._connecting is not None:
            return await asyncio.shield(self._connecting)
        self._loop = asyncio.get_running_loop()
        self._connecting = self._loop.create_future()
        try:
            wire = await asyncio.wait_for(self._open(), self._connect_timeout_s)
        except BaseException as exc:
            if not isinstance(exc, OSError | TimeoutError | ResponseError):
                exc = ConnectionError(f"Redis connect failed: {exc!r}")
            self._connecting.set_exception(exc)
            self._connecting.exception()  # retrieved: waiters, if any, get it through shield
            self._connecting = None
            raise exc from None
        self._wire = wire
        self._connecting.set_result(wire)
        self._connecting = None
        return wire

    async def _open(self) -> _Wire:
        host, port, path, tls = self._where
        assert self._loop is not None
        loop, timeout_s = self._loop, self._socket_timeout_s

        def make() -> _Wire:
            return _Wire(self._lost, loop, timeout_s)

        if path:
            _, wire = await self._loop.create_unix_connection(make, path)
        else:
            _, wire = await self._loop.create_connection(make, host, port, ssl=tls)
        for command in self._hello:
            fut = self._loop.create_future()
            wire.expect(fut, limited=False)  # the connect timeout covers these
            assert wire.transport is not None
            wire.transport.write(hiredis.pack_command(tuple(a for a in command if a is not None)))
            await fut
        return wire
