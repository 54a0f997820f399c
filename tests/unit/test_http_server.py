"""The gateway's HTTP protocol (uvicorn's, with a response head joined to its first body bytes): the
joining itself, and a real uvicorn serving with it, spoken to over raw sockets so that nothing the
protocol must send at once (a stream's first chunk, a HEAD answer, ``100 Continue``) can wait.
"""

from __future__ import annotations

import socket
import threading

import pytest

from router.http_server import HeadJoiningTransport
from tests.servers import ThreadedServer


class Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def test_the_head_leaves_with_the_first_body_write_and_the_rest_passes_straight():
    real = Recorder()
    t = HeadJoiningTransport(real)  # type: ignore[arg-type]
    t.write(b"HEAD")
    assert real.writes == []
    t.write(b"body1")
    t.write(b"body2")
    assert real.writes == [b"HEADbody1", b"body2"]
    assert t.get_extra_info("peername") == "info:peername" and not t.is_closing()


def test_closing_sends_a_held_head_first():
    real = Recorder()
    t = HeadJoiningTransport(real)  # type: ignore[arg-type]
    t.write(b"HEAD")
    t.close()
    assert real.writes == [b"HEAD"] and real.closed


STREAM_GO = threading.Event()


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        import asyncio

        await asyncio.to_thread(STREAM_GO.wait, 10)  # only once the client has the first chunk
        await send({"type": "http.response.body", "body": b"second"})
    elif path == "/headless":  # starts, then returns without a body
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
    else:
        answer = b"echo:" + body
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})


@pytest.fixture(scope="module")
def server():
    with ThreadedServer(app) as s:
        yield s


def _connect(server: ThreadedServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    return sock


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_keep_alive_answers_whole(server):
    with _connect(server) as sock:
        for i in range(3):
            body = b"hello %d" % i
            sock.sendall(b"POST /x HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            data = _read_until(sock, b"echo:" + body)
            assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"\r\n\r\necho:" + body)


def test_a_stream_s_head_and_first_chunk_leave_before_the_app_goes_on(server):
    STREAM_GO.clear()
    with _connect(server) as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nhost: t\r\n\r\n")
        data = _read_until(sock, b"first")  # the app waits for us: a held head or chunk would time out here
        assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"transfer-encoding: chunked" in data
        STREAM_GO.set()
        data += _read_until(sock, b"0\r\n\r\n")
        assert b"second" in data


def test_head_requests_are_answered(server):
    with _connect(server) as sock:
        sock.sendall(b"HEAD /x HTTP/1.1\r\nhost: t\r\n\r\n")
        data = _read_until(sock, b"\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 5" in data


def test_expect_100_continue_gets_its_interim_answer_first(server):
    with _connect(server) as sock:
        sock.sendall(b"POST /x HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: 3\r\n\r\n")
        assert _read_until(sock, b"\r\n\r\n").startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b"abc")
        assert _read_until(sock, b"echo:abc").endswith(b"echo:abc")


def test_an_app_that_ends_without_a_body_still_sends_its_head_and_closes(server):
    with _connect(server) as sock:
        sock.sendall(b"GET /headless HTTP/1.1\r\nhost: t\r\n\r\n")
        data = _read_until(sock, b"never")  # read to EOF
        assert data.startswith(b"HTTP/1.1 200 OK\r\n")
