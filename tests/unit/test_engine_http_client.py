"""The engine HTTP client against real servers on free ports (``asyncio.start_server``, so each test
controls the bytes and the connection): keep-alive reuse, content-length and chunked answers read whole
and streamed, the idle-close race retried once, timeouts, aborting a stream, back-pressure, bad HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from serving.backends.http_client import ConnectError, EngineHTTPClient, EngineHTTPError, ReadTimeout
from tests.servers import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class Server:
    """A raw HTTP/1.1 server: ``handler(reader, writer, connection_number)`` per connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.closed_by_client = asyncio.Event()
        self.requests: list[bytes] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self.url = ""

    async def __aenter__(self) -> Server:
        port = free_port()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.handler(reader, writer, self.connections)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """One request (head and body by content-length), or None once the client closed."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            self.closed_by_client.set()
            return None
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        request = head + (await reader.readexactly(length) if length else b"")
        self.requests.append(request)
        return request


@contextlib.asynccontextmanager
async def connected(handler: Handler | Server, **options: float) -> AsyncIterator[tuple[Server, EngineHTTPClient]]:
    """A server running ``handler`` and a client of it, both closed at the end."""
    async with (handler if isinstance(handler, Server) else Server(handler)) as server:
        client = EngineHTTPClient(server.url, **options)
        try:
            yield server, client
        finally:
            await client.close()


def answer(body: bytes, status: bytes = b"200 OK", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 " + status + b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body


def chunked(*pieces: bytes) -> list[bytes]:
    head = [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: text/event-stream\r\n\r\n"]
    return head + [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces] + [b"0\r\n\r\n"]


def echo_server() -> Server:
    async def handler(reader, writer, n):
        while (request := await server.read_request(reader)) is not None:
            writer.write(answer(b"conn %d: " % n + request.split(b"\r\n", 1)[0]))
            await writer.drain()

    server = Server(handler)
    return server


async def test_keep_alive_reuses_one_connection_and_sends_the_request_as_given():
    async with connected(echo_server()) as (server, client):
        for i in range(3):
            r = await client.request("POST", f"/v1/x{i}", b'{"a":1}', {"content-type": "application/json", "x-request-id": "r1"})
            assert r.status == 200
            assert await r.read() == b"conn 1: POST /v1/x%d HTTP/1.1" % i
        assert server.connections == 1
        head = server.requests[0]
        assert b"\r\ncontent-length: 7\r\n" in head and b"\r\nx-request-id: r1\r\n" in head
        assert head.endswith(b'\r\n\r\n{"a":1}') and b"\r\nhost: 127.0.0.1:" in head


async def test_concurrent_requests_each_get_their_own_answer():
    async with connected(echo_server()) as (server, client):
        async def one(i: int) -> bytes:
            r = await client.request("GET", f"/p{i}")
            return await r.read()

        bodies = await asyncio.gather(*(one(i) for i in range(20)))
        assert [b.split(b": ")[1] for b in bodies] == [b"GET /p%d HTTP/1.1" % i for i in range(20)]
        assert 1 < server.connections <= 20


async def test_chunked_answer_read_whole_and_streamed_piece_by_piece():
    pieces = [b"data: one\n\n", b"data: two\n\n", b"data: three\n\n"]

    async def handler(reader, writer, n):
        while await server.read_request(reader) is not None:
            for part in chunked(*pieces):
                writer.write(part)
                await writer.drain()
                await asyncio.sleep(0.02)

    async with connected(handler) as (server, client):
        r = await client.request("POST", "/s", b"{}")
        assert await r.read() == b"".join(pieces)
        r = await client.request("POST", "/s", b"{}")
        got = [piece async for piece in r]
        r.release()
        assert got == pieces  # one piece per write, as it arrived
        assert server.connections == 1  # both read to their end: the connection was kept


async def test_a_request_that_meets_a_closing_idle_connection_is_sent_again_on_a_new_one():
    # Each connection answers one request, then closes on reading the next without answering: what a
    # server closing an idle keep-alive connection looks like to a request written at that moment.
    async def handler(reader, writer, n):
        await server.read_request(reader)
        writer.write(answer(b"from %d" % n))
        await writer.drain()
        await server.read_request(reader)

    async with connected(handler) as (server, client):
        assert await (await client.request("GET", "/")).read() == b"from 1"
        assert await (await client.request("GET", "/")).read() == b"from 2"
        assert server.connections == 2


async def test_a_new_connection_closed_without_an_answer_is_an_error_not_a_retry():
    async def handler(reader, writer, n):
        await server.read_request(reader)

    async with connected(handler) as (server, client):
        with pytest.raises(EngineHTTPError, match="lost"):
            await client.request("POST", "/", b"{}")
        assert server.connections == 1


async def test_connection_closed_mid_answer_fails_the_read():
    async def handler(reader, writer, n):
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")
        await writer.drain()

    async with connected(handler) as (server, client):
        r = await client.request("GET", "/")
        with pytest.raises(EngineHTTPError, match="lost"):
            await r.read()


async def test_refused_connection_is_a_connect_error():
    client = EngineHTTPClient(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ConnectError):
        await client.request("GET", "/health")
    await client.close()


async def test_silence_past_the_read_timeout_fails_before_and_during_the_answer():
    async def handler(reader, writer, n):
        await server.read_request(reader)
        if n == 2:  # the head, then silence
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
            await writer.drain()
        await asyncio.sleep(5)

    async with connected(handler, read_timeout_s=0.3) as (server, client):
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(ReadTimeout):
            await client.request("GET", "/")
        assert 0.25 < loop.time() - start < 2.0
        r = await client.request("GET", "/")
        assert await r.__anext__() == b"hello"
        with pytest.raises(ReadTimeout):
            await r.__anext__()


async def test_closing_a_stream_drops_the_connection_so_the_server_sees_the_client_leave():
    async def handler(reader, writer, n):
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for i in range(200):
            writer.write(b"6\r\nchunk%d\r\n" % (i % 10))
            await writer.drain()
            await asyncio.sleep(0.01)
            if reader.at_eof():
                server.closed_by_client.set()
                return

    async with connected(handler) as (server, client):
        r = await client.request("POST", "/stream", b"{}")
        assert (await r.__anext__()).startswith(b"chunk")
        r.close()
        await asyncio.wait_for(server.closed_by_client.wait(), 2)
        # The next request opens a new connection and is answered as usual.
        r = await client.request("POST", "/stream", b"{}")
        assert (await r.__anext__()).startswith(b"chunk")
        r.close()
        assert server.connections == 2


def in_two_packets(first: bytes, rest: bytes) -> Server:
    """A server answering every request with a chunked body whose ``rest`` comes 50 ms after ``first``."""

    async def handler(reader, writer, n):
        while await server.read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + first)
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(rest)
            await writer.drain()

    server = Server(handler)
    return server


async def test_an_answer_released_unread_closes_its_connection_and_the_next_is_not_confused():
    async with connected(in_two_packets(b"5\r\nfirst\r\n", b"4\r\nrest\r\n0\r\n\r\n")) as (server, client):
        r = await client.request("GET", "/")
        assert await r.__anext__() == b"first"
        r.release()  # the rest unread
        assert await (await client.request("GET", "/")).read() == b"firstrest"
        assert server.connections == 2


async def test_a_slow_reader_pauses_the_socket_and_still_gets_every_byte():
    piece = bytes(range(256)) * 256  # 64 KiB

    async def handler(reader, writer, n):
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(64):  # 4 MiB, far past the pause threshold
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with connected(handler) as (server, client):
        r = await client.request("GET", "/big")
        await asyncio.sleep(0.3)  # let it pile up: reading must have paused
        assert r._conn._paused
        total = bytearray()
        async for data in r:
            total += data
        assert bytes(total) == piece * 64


async def test_bad_http_is_an_error():
    async def handler(reader, writer, n):
        await server.read_request(reader)
        writer.write(b"SPDY/9 what\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async with connected(handler) as (server, client):
        with pytest.raises(EngineHTTPError, match="bad HTTP"):
            await client.request("GET", "/")


async def test_idle_connections_past_the_idle_timeout_are_not_reused_and_connection_close_is_honoured():
    async def handler(reader, writer, n):
        while (request := await server.read_request(reader)) is not None:
            close = b"/bye" in request
            writer.write(answer(b"%d" % n, extra=b"connection: close\r\n" if close else b""))
            await writer.drain()
            if close:
                return

    async with connected(handler, idle_timeout_s=0.1) as (server, client):
        assert await (await client.request("GET", "/")).read() == b"1"
        assert await (await client.request("GET", "/")).read() == b"1"
        await asyncio.sleep(0.2)
        assert await (await client.request("GET", "/bye")).read() == b"2"
        assert await (await client.request("GET", "/")).read() == b"3"


async def test_header_values_with_line_breaks_are_refused():
    client = EngineHTTPClient("http://127.0.0.1:9")
    with pytest.raises(ValueError):
        await client.request("POST", "/", b"{}", {"traceparent": "x\r\nx-evil: 1"})
    with pytest.raises(ValueError):
        EngineHTTPClient("ftp://example.com")


async def test_an_answer_released_just_before_its_end_keeps_its_connection():
    # An SSE stream's reader stops at [DONE]; the chunked terminator comes in a later packet.
    async with connected(in_two_packets(b"e\r\ndata: [DONE]\n\n\r\n", b"0\r\n\r\n")) as (server, client):
        for _ in range(3):
            r = await client.request("POST", "/stream", b"{}")
            assert await r.__anext__() == b"data: [DONE]\n\n"
            r.release(drain=True)  # before the terminator arrived
            r.close()  # what the adapter's aclose() then does: the connection is no longer this answer's
            await asyncio.sleep(0.1)
        assert server.connections == 1


async def test_closing_an_answer_already_released_leaves_the_next_request_on_its_connection_alone():
    async with connected(echo_server()) as (server, client):
        first = await client.request("GET", "/1")
        assert await first.read() == b"conn 1: GET /1 HTTP/1.1"  # read() released it
        second = await client.request("GET", "/2")  # the same connection
        first.close()
        assert await second.read() == b"conn 1: GET /2 HTTP/1.1"
        assert await (await client.request("GET", "/3")).read() == b"conn 1: GET /3 HTTP/1.1"
        assert server.connections == 1
