"""A small HTTP/1.1 client for the gateway's connections to its engines.

Why not aiohttp's client, which the vLLM adapter used before: measured on this project's machine
(``benchmarks/overhead/upstream_client.py``), one request to a local engine and its small answer cost
139-168 µs of client CPU through aiohttp (request and response objects, header multidicts, its stream
reader, a timer context per request) and 20-40 µs through a protocol that hands the bytes to httptools'
parser, the one uvicorn uses on the server side. In a gateway that spends ~300 µs on a request that is
a third of its CPU. (httpx costs more than aiohttp: ``docs/performance.md``.)

An engine connection needs little, and this is all there is: keep-alive connections to one host, a
request written in one call, the answer read whole or piece by piece as it arrives (with back-pressure),
a connect timeout and a read timeout (the longest silence while an answer is awaited), and closing the
connection to abort a stream, which makes vLLM stop generating. No redirects, cookies, proxies,
compression or connection limits (admission bounds what is in flight).
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

import httptools

#: A stream's unread bytes above which the engine's socket stops being read (the client is slow).
PAUSE_ABOVE = 256 * 1024
#: How long an answer released to drain (``Response.release(drain=True)``) may take to end, so that its
#: connection can be kept. An SSE stream's last bytes (the chunked terminator after ``[DONE]``) usually
#: arrive a moment after the event the reader stops at: closing there would cost every stream a new
#: connection.
DRAIN_S = 1.0


class EngineHTTPError(Exception):
    """The exchange failed below HTTP: no connection, the connection broke, silence past the read
    timeout, or bytes that are not HTTP."""


class ConnectError(EngineHTTPError):
    """No connection could be made (refused, unreachable, or the connect timeout passed)."""


class ReadTimeout(EngineHTTPError):
    """The engine said nothing for longer than the read timeout while an answer was awaited."""


class Response:
    """An engine's answer, available once its status line and headers have arrived.

    Read the body whole with ``read()``, or iterate for its bytes as they arrive; then ``release()``
    (``read()`` does it), which keeps the connection for the next request if the answer was complete.
    ``close()`` drops the connection instead: the way to abort a stream.
    """

    __slots__ = ("status", "_conn", "_parts", "_buffered", "_done", "_error", "_waiter", "_whole", "_released",
                 "_draining")

    def __init__(self, conn: _Connection) -> None:
        self.status = 0
        self._conn = conn
        self._parts: list[bytes] = []
        self._buffered = 0
        self._done = False
        self._error: EngineHTTPError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._whole = False  # read() is collecting the whole body: never pause
        self._released = False
        self._draining: asyncio.TimerHandle | None = None  # released before its end: waiting for it

    async def read(self) -> bytes:
        """The whole body. The connection goes back to the pool (or, on any failure, is closed)."""
        self._whole = True
        self._conn.resume()
        try:
            while not self._done:
                if self._error is not None:
                    raise self._error
                await self._wait()
        except BaseException:
            self.close()
            raise
        parts = self._parts
        self._parts = []
        self.release()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def __aiter__(self) -> Response:
        return self

    async def __anext__(self) -> bytes:
        """What arrived since the last call, as one piece; waits when nothing has."""
        while True:
            if self._parts:
                parts = self._parts
                self._parts = []
                self._buffered = 0
                self._conn.resume()
                return parts[0] if len(parts) == 1 else b"".join(parts)
            if self._error is not None:
                raise self._error
            if self._done:
                raise StopAsyncIteration
            await self._wait()

    def release(self, *, drain: bool = False) -> None:
        """Done with the answer: its connection serves the next request if the answer was read to its
        end, and is closed if not (the engine sees the client leave). ``drain``: the reader knows only the
        answer's last bytes are left (an SSE stream after ``[DONE]``: the chunked terminator, which often
        comes in a later packet), so the connection is kept if they arrive within ``DRAIN_S``."""
        if self._released:
            return
        self._released = True
        conn = self._conn
        if self._done:
            conn.finished()
        elif drain and self._error is None and not conn.closed:
            self._parts = []
            conn.resume()
            self._draining = conn.loop.call_later(DRAIN_S, conn.close)
        else:
            conn.close()

    def close(self) -> None:
        """Drop the connection now, whatever is left unread; the engine sees the client leave. Once the
        answer was released, the connection is no longer this answer's: nothing is done."""
        if not self._released:
            self._released = True
            self._conn.close()

    def _drained(self) -> None:
        """The end of an answer released before it arrived: the connection can serve again."""
        assert self._draining is not None
        self._draining.cancel()
        self._draining = None
        self._conn.finished()

    # -- fed by the connection --

    async def _wait(self) -> None:
        self._waiter = waiter = self._conn.loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _feed(self, data: bytes) -> None:
        if self._draining is not None:
            return
        self._parts.append(data)
        self._buffered += len(data)
        if self._buffered > PAUSE_ABOVE and not self._whole:
            self._conn.pause()
        self._wake()

    def _fail(self, error: EngineHTTPError) -> None:
        if not self._done and self._error is None:
            self._error = error
            self._wake()


class _Connection(asyncio.Protocol):
    """One keep-alive connection, carrying one exchange at a time; httptools parses what comes back."""

    def __init__(self, client: EngineHTTPClient) -> None:
        self.client = client
        self.loop = client.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.keep_alive = True
        self.closed = False
        self.received = False  # any byte of the current answer yet
        self.idle_since = 0.0
        self.last_heard = 0.0
        self._paused = False
        self._timer: asyncio.TimerHandle | None = None

    # -- used by the client and the response --

    def send(self, data: bytes) -> Response:
        assert self.transport is not None
        self.response = response = Response(self)
        self.received = False
        self.last_heard = self.loop.time()
        self.transport.write(data)
        if self._timer is None and self.client.read_timeout_s is not None:
            self._timer = self.loop.call_at(self.last_heard + self.client.read_timeout_s, self._check_silence)
        return response

    def finished(self) -> None:
        """The answer was read to its end: the connection waits for the next request, unless the server
        said it closes it."""
        self.response = None
        if not self.keep_alive:
            self.close()
        elif not self.closed:
            self.idle_since = self.loop.time()
            self.client._idle[self] = None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.client._idle.pop(self, None)
            if self.transport is not None:
                self.transport.close()

    def pause(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            self.last_heard = self.loop.time()  # the silence while paused was ours, not the engine's
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def _check_silence(self) -> None:
        """The read timeout: one timer per connection, re-armed from the last time it heard anything,
        rather than a timer set and cancelled for every read."""
        self._timer = None
        response, timeout = self.response, self.client.read_timeout_s
        if response is None or response._done or self.closed or timeout is None:
            return
        now = self.loop.time()
        if self._paused or now - self.last_heard < timeout:  # paused: the silence is ours, not the engine's
            self._timer = self.loop.call_at((now if self._paused else self.last_heard) + timeout, self._check_silence)
            return
        response._fail(ReadTimeout(f"engine at {self.client.url} said nothing for {timeout:g} s"))
        self.close()

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.response is None:  # nothing was asked: not an answer to anything
            self.close()
            return
        self.received = True
        self.last_heard = self.loop.time()
        response = self.response
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            response._fail(EngineHTTPError(f"engine at {self.client.url} sent bad HTTP: {exc}"))
            self.close()
            return
        if response._draining is not None and response._done:
            response._drained()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.client._forget(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        response = self.response
        if response is not None:
            if response._draining is not None:
                response._draining.cancel()
            reason = f": {exc!r}" if exc is not None else ""
            response._fail(EngineHTTPError(f"connection to {self.client.url} lost{reason}"))

    # -- httptools callbacks --

    def on_headers_complete(self) -> None:
        assert self.response is not None
        self.response.status = self.parser.get_status_code()
        self.response._wake()

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        self.response._feed(body)

    def on_message_complete(self) -> None:
        assert self.response is not None
        self.keep_alive = self.parser.should_keep_alive()
        self.response._done = True
        self.response._wake()


class EngineHTTPClient:
    """Keep-alive connections to one engine (``http://host:port`` or ``https://…``).

    A connection idle for ``idle_timeout_s`` is not reused: servers close idle ones (uvicorn, which
    vLLM runs on, after 5 s), and a request written just as the server closes would be lost. A request
    sent on a reused connection that closes before any byte of an answer is sent once more on a new one.
    """

    def __init__(
        self, url: str, *, connect_timeout_s: float | None = 5.0, read_timeout_s: float | None = 600.0,
        idle_timeout_s: float = 4.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = url.rstrip("/")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if parts.scheme == "https" else None
        self._host_header = parts.netloc
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: dict[_Connection, None] = {}  # insertion-ordered: popitem() takes the freshest
        self._open: set[_Connection] = set()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Response:
        """Send one request; returns once the answer's head has arrived. Raises ``EngineHTTPError``."""
        lines = [f"{method} {path} HTTP/1.1\r\nhost: {self._host_header}\r\n"]
        if body or method not in ("GET", "HEAD"):
            lines.append(f"content-length: {len(body)}\r\n")
        if headers:
            for name, value in headers.items():
                if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                    raise ValueError(f"header {name!r} holds a line break")
                lines.append(f"{name}: {value}\r\n")
        lines.append("\r\n")
        data = "".join(lines).encode("latin-1") + body
        conn, reused = self._take_idle(), True
        if conn is None:
            conn, reused = await self._connect(), False
        try:
            return await self._exchange(conn, data)
        except EngineHTTPError:
            if not reused or conn.received:
                raise
        # The server closed the idle connection as the request went out: nothing was answered.
        return await self._exchange(await self._connect(), data)

    async def close(self) -> None:
        for conn in list(self._open):
            conn.close()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports finish closing

    async def _exchange(self, conn: _Connection, data: bytes) -> Response:
        response = conn.send(data)
        try:
            while response.status == 0:
                if response._error is not None:
                    raise response._error
                await response._wait()
        except BaseException:
            response.close()
            raise
        return response

    def _take_idle(self) -> _Connection | None:
        idle = self._idle
        while idle:
            conn, _ = idle.popitem()
            if not conn.closed and self.loop.time() - conn.idle_since < self.idle_timeout_s:
                return conn
            conn.close()
        return None

    async def _connect(self) -> _Connection:
        loop = self.loop
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(lambda: _Connection(self), self.host, self.port, ssl=self._ssl)
        except (OSError, TimeoutError) as exc:
            raise ConnectError(f"cannot connect to {self.url}: {exc!r}") from exc
        self._open.add(conn)
        return conn

    def _forget(self, conn: _Connection) -> None:
        self._open.discard(conn)
        self._idle.pop(conn, None)
