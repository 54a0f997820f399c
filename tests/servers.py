"""Helpers for tests that run real servers: free ports and a gateway served from a background thread."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import uvicorn

from router.http_server import UVICORN_HTTP


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadedServer:
    """Serve an ASGI app with uvicorn (and the gateway's HTTP protocol) on 127.0.0.1 in a daemon thread (its own
    event loop)."""

    def __init__(self, app, port: int | None = None) -> None:
        self.port = port or free_port()
        self.config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                     loop="asyncio", http=UVICORN_HTTP, lifespan="on")
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self.server.serve())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("gateway did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def call(self, coro, timeout: float = 30):
        """Run a coroutine on the server's loop (e.g. to read its state) and wait for the result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)
