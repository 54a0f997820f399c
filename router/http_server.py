"""The gateway's HTTP/1.1 server protocol: uvicorn's httptools protocol, with each response's head
written together with its first body bytes.

uvicorn writes the status line and headers as soon as the app sends ``http.response.start``, then each
body message on its own; uvloop sends every write at once, so a small JSON answer costs two ``send()``
calls (and the client two wake-ups). On this project's machine a syscall on a loopback socket costs
tens of µs, and joining the two saved ~30 µs of the gateway's ~500 µs per request at 1,000 req/s
(three alternating pairs, ``docs/performance.md``). Latency is unchanged: the head is only ever held until the app's next
``send``, which for the gateway's answers follows at once.

Run with ``uvicorn --http router.http_server:GatewayHTTPProtocol`` (``noor serve`` does). The head is
not held where it must leave alone: an ``Expect: 100-continue`` request (uvicorn writes the interim
``100 Continue`` through the same transport), and ``HEAD`` requests (their body is never written).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeadJoiningTransport:
    """The transport one request/response cycle writes through: its first write (the response head)
    is held and sent with the second; everything else passes straight to the connection's transport."""

    __slots__ = ("_transport", "_head")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head: bytes | None = None  # None: nothing written yet; b"": the head has left

    def write(self, data: bytes) -> None:
        head = self._head
        if head is None:
            self._head = data
        elif head:
            self._head = b""
            self._transport.write(head + data)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        """Send a held head now (the app ends without a body, or the connection closes)."""
        if self._head:
            self._transport.write(self._head)
            self._head = b""

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> object:  # anything else the cycle may use: the real transport's
        return getattr(self._transport, name)


class GatewayHTTPProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` whose request/response cycles write through a ``HeadJoiningTransport``."""

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        # A new cycle for this request (an upgrade returns before making one), which may hold its head.
        if (cycle is not None and cycle.scope is self.scope and not cycle.waiting_for_100_continue
                and self.scope["method"] != "HEAD"):
            cycle.transport = HeadJoiningTransport(cycle.transport)  # type: ignore[assignment]


#: uvicorn's ``http`` setting (``--http``) that serves the gateway with this protocol.
UVICORN_HTTP = "router.http_server:GatewayHTTPProtocol"
