"""The OpenAI-compatible API, as a thin raw-ASGI app in front of everything else.

The hot endpoints (``/v1/*``) skip the web framework: measured here, each framework layer costs
hundreds of requests per second on one core, and these endpoints need no routing table, dependency
injection or per-request model validation — only the body bytes, two headers and the path. Every other
path (admin API, health, metrics, OpenAPI docs) falls through to the FastAPI app.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Awaitable, Callable

import orjson

from models.catalog import Catalog
from router.context import RequestContext
from router.errors import OpenAIError, error_body
from router.pipeline import Pipeline
from serving.backends.base import RequestKind, UpstreamError

ASGIApp = Callable[[dict, Callable, Callable], Awaitable[None]]

_POST_ROUTES: dict[str, RequestKind] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completion",
    "/v1/embeddings": "embedding",
}


class OpenAIApp:
    def __init__(self, pipeline: Pipeline, catalog: Catalog, fallback: ASGIApp, *, max_body_bytes: int) -> None:
        self.pipeline = pipeline
        self.catalog = catalog
        self.fallback = fallback
        self.max_body_bytes = max_body_bytes
        self._rid_header = pipeline.request_id_header
        # Request ids: 80 random bits per process, then a counter (48 bits), 32 hex digits in all as
        # uuid4().hex has: unique across replicas and restarts (usage records are keyed by them) without
        # a getrandom() call per request.
        self._id_prefix = os.urandom(10).hex()
        self._id_counter = itertools.count()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/v1/"):
            await self.fallback(scope, receive, send)
            return
        request_id = f"req_{self._id_prefix}{next(self._id_counter):012x}"
        method = scope["method"]
        try:
            kind = _POST_ROUTES.get(path)
            if kind is not None:
                if method != "POST":
                    raise OpenAIError(405, f"Method {method} is not allowed on {path}; use POST.")
                await self._serve(scope, receive, send, kind, request_id)
            elif path == "/v1/models" or path.startswith("/v1/models/"):
                if method != "GET":
                    raise OpenAIError(405, f"Method {method} is not allowed on {path}; use GET.")
                await self._models(scope, send, path, request_id)
            else:
                raise OpenAIError(404, f"Invalid URL ({method} {path})", code="unknown_url")
        except OpenAIError as exc:
            await self._send(send, exc.status, exc.body(), request_id, exc.headers)
        except UpstreamError as exc:
            # The engine refused the request itself (4xx): its body is already OpenAI-shaped.
            body = exc.body if exc.body.startswith(b"{") else error_body(str(exc), type="invalid_request_error")
            await self._send(send, exc.status, body, request_id)

    async def _serve(self, scope: dict, receive: Callable, send: Callable, kind: RequestKind, rid: str) -> None:
        authorization = _header(scope, b"authorization")
        raw = await self._read_body(scope, receive)

        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        ctx = RequestContext(request_id=rid, kind=kind, body={}, traceparent=_header(scope, b"traceparent"))
        await self.pipeline.handle(ctx, raw, authorization, send, disconnected)

    async def _read_body(self, scope: dict, receive: Callable) -> bytes:
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise _too_large(self.max_body_bytes)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise OpenAIError(499, "Client closed the request.")
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_body_bytes:
                raise _too_large(self.max_body_bytes)
            chunks.append(body)
            if not message.get("more_body"):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _models(self, scope: dict, send: Callable, path: str, rid: str) -> None:
        identity = await self.pipeline.auth.authenticate(_header(scope, b"authorization"))
        visible = [m for m in self.catalog.models.values() if identity.allows(m.name) and m.pool in self.pipeline.pools]
        cards = {m.name: {"id": m.name, "object": "model", "created": 0, "owned_by": m.owned_by} for m in visible}
        if path == "/v1/models":
            body = orjson.dumps({"object": "list", "data": list(cards.values())})
        else:
            name = path.removeprefix("/v1/models/")
            if name not in cards:
                if name in self.catalog.models and not identity.allows(name):
                    raise OpenAIError(403, f"This API key is not allowed to use the model `{name}`.", code="model_not_allowed")
                raise OpenAIError(404, f"The model `{name}` does not exist.", code="model_not_found")
            body = orjson.dumps(cards[name])
        await self._send(send, 200, body, rid)

    async def _send(self, send: Callable, status: int, body: bytes, rid: str, extra: dict[str, str] | None = None) -> None:
        headers = [(b"content-type", b"application/json"), (self._rid_header, rid.encode())]
        if extra:
            headers.extend((k.encode(), v.encode()) for k, v in extra.items())
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _too_large(limit: int) -> OpenAIError:
    return OpenAIError(413, f"Request body too large: the limit is {limit} bytes.", code="request_too_large")

