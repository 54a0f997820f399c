"""The request path, top to bottom as a request travels it:

authenticate → validate → limit (reserve) → admit onto an endpoint → backend adapter → relay → settle
and meter.

Each stage lives in its own module; this one only sequences them, owns the retry loop (a request that
failed before any byte reached its client is retried on another endpoint) and guarantees the way back:
whatever happens, the reservation is settled, the endpoint released and one usage record written (none
for a request refused by its limits or key).

One overlap: the limits' round trip to Redis (which also confirms a cached key) may run while the engine
request opens, where the limiter expects it to pass (``Limiter.may_defer``); it is awaited before the
response's first byte, and a refusal then aborts the engine request. The store's round trip leaves the
request's latency, hidden behind the engine's own time to first byte.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import Counter

from models.catalog import Catalog
from router.admission import Admission
from router.auth import Authenticator, Confirm, StaleIdentity
from router.context import RequestContext
from router.errors import OpenAIError, no_capacity
from router.limits import Limiter
from router.limits.reservation import limited
from router.metering import Meter
from router.relay import Send, relay_stream, send_once
from router.telemetry import Telemetry
from router.validation import PromptCounter, parse_json, validate
from serving.backends.base import UpstreamError, UpstreamRequest, UpstreamResponse, UpstreamStream
from serving.endpoint import Endpoint
from serving.pool import Pool

log = logging.getLogger("noor.pipeline")

REFUSED_AFTER_OPEN = Counter(
    "noor_refused_after_open",
    "Requests refused by their overlapped limits or key checks after the engine request was opened (then aborted)",
)


@dataclass
class Pipeline:
    catalog: Catalog
    pools: dict[str, Pool]
    auth: Authenticator
    limiter: Limiter
    admission: Admission
    meter: Meter
    count_prompt: PromptCounter
    max_retries: int = 2
    request_id_header: bytes = b"x-request-id"
    telemetry: Telemetry = Telemetry.disabled()
    #: Overlap the limits/key round trip with the engine request's opening where the limiter allows it.
    overlap_checks: bool = True

    async def handle(
        self, ctx: RequestContext, raw_body: bytes, authorization: str | None, send: Send,
        disconnected: Callable[[], Awaitable[None]],
    ) -> None:
        """Serve one OpenAI request. Raises ``OpenAIError`` only before anything was sent."""
        self.telemetry.begin(ctx)
        try:
            await self._serve(ctx, raw_body, authorization, send, disconnected)
        except OpenAIError as exc:
            ctx.status, ctx.error = exc.status, exc
            if ctx.outcome == "ok":
                ctx.outcome = "rejected"
            raise
        except Exception as exc:
            ctx.error = exc
            if ctx.outcome == "ok":
                ctx.status, ctx.outcome = 500, "error"
            raise
        finally:
            self.telemetry.finish(ctx)

    async def _serve(
        self, ctx: RequestContext, raw_body: bytes, authorization: str | None, send: Send,
        disconnected: Callable[[], Awaitable[None]],
    ) -> None:
        try:
            pool, checks = await self._admit(ctx, raw_body, authorization, early=True)
        except StaleIdentity:  # tenants or keys changed while it went ahead on a cached identity
            ctx.headers.clear()
            pool, checks = await self._admit(ctx, raw_body, authorization, early=False)
        endpoint: Endpoint | None = None
        stream: UpstreamStream | None = None
        watch = _ClientWatch(disconnected)
        settling: list[Awaitable[None]] = []

        def settle_now() -> Awaitable[None] | None:
            # Before the last bytes: a client that sends its next request on receiving them must find
            # its concurrency slot already given back (so that settle is waited for). Other settles are
            # only queued by begin_settle (the same connection carries this process's next reserve
            # after them); where it returns something to await, that is awaited after the last bytes,
            # in _finish, which every way out of the request runs (the Redis limiter returns nothing:
            # it handles their replies itself).
            if ctx.reservation is None:
                return None  # nothing reserved (no limits): nothing to give back
            wait = self.limiter.holds_slot(ctx)
            pending = self.limiter.begin_settle(ctx, ctx.usage)
            if pending is None:
                return None  # settled already
            if not wait:
                settling.append(pending)  # no task (~10 µs): nothing waits for it before _finish
                return None
            # Awaited twice (before the last bytes, then in _finish), and must finish even if the request
            # is cancelled in between: a task.
            settling.append(task := asyncio.ensure_future(pending))
            return task

        try:
            try:
                endpoint, result = await self._open(ctx, pool, checks)
            except (OpenAIError, UpstreamError):
                if checks is not None:  # a refusal of the overlapped checks outranks the engine's failure
                    await asyncio.wait((checks,))
                    await _passed(ctx, checks)
                raise
            if not isinstance(result, UpstreamResponse):
                stream = result
            if checks is not None:  # nothing reaches the client before its limits and key have passed
                await _passed(ctx, checks)
            if stream is None:
                assert isinstance(result, UpstreamResponse)
                await send_once(ctx, result, send, self.request_id_header, settle_now)
            else:
                await relay_stream(ctx, stream, send, self.request_id_header, settle_now)
            watch.stop()
        except asyncio.CancelledError:
            if not watch.client_left:
                raise  # shutdown, not the client
            ctx.outcome, ctx.status = "cancelled", 499
            log.info("client left request %s; engine request aborted", ctx.request_id)
        except OpenAIError as exc:
            ctx.status = exc.status
            if ctx.outcome == "ok":  # (a refusal of the overlapped checks is marked "rejected" already)
                ctx.outcome = "error"
            raise
        except UpstreamError as exc:
            ctx.outcome, ctx.status = "error", exc.status
            raise
        finally:
            watch.stop()
            try:
                if stream is not None:
                    await stream.aclose()
            finally:  # an adapter failing to close must not skip the way back
                # ctx.endpoint, not the local: a cancellation while the engine request was being opened
                # leaves _open holding an admitted endpoint, whose slot must still be given back.
                if ctx.endpoint is not None:
                    self.admission.release(ctx, ctx.endpoint)
                refused = False
                if checks is not None:
                    if not checks.done():  # (the open failed first) a reservation it makes must be settled
                        await asyncio.wait((checks,))  # not cancelled with this task
                    refused = checks.cancelled() or checks.exception() is not None
                    if refused and ctx.opened_at is not None:
                        REFUSED_AFTER_OPEN.inc()
                        log.info("request %s of tenant %s refused after its engine request opened (%s); aborted",
                                 ctx.request_id, ctx.identity.tenant_id if ctx.identity else "-", ctx.status)
                await self._finish(ctx, settling[0] if settling else None, meter=not refused)

    async def _admit(
        self, ctx: RequestContext, raw_body: bytes, authorization: str | None, *, early: bool, overlap: bool = True,
    ) -> tuple[Pool, asyncio.Task[None] | None]:
        """Authenticate, validate and reserve limits; the pool to serve from, and the checks still running.

        ``early``: a cached key goes ahead while its auth epoch is read, so that read shares the
        limiter's round trip; it is checked before any byte is sent, and before any refusal (an auth
        failure outranks every other error, as when authentication runs first).

        That round trip (the limiter's reserve and the key's confirmation) is either awaited here or,
        where the limiter expects it to pass (``_may_overlap``), left running as a task while the engine
        request opens: the pipeline awaits it before the response's first byte.
        """
        if early:
            identity, confirm = await self.auth.authenticate_early(authorization)
        else:
            identity, confirm = await self.auth.authenticate(authorization), None
        ctx.identity = identity
        ctx.authed_at = time.perf_counter()
        try:
            ctx.body = parse_json(raw_body)
            validate(ctx, identity, self.catalog, self.count_prompt, body_bytes=len(raw_body))
            assert ctx.model is not None
            ctx.validated_at = time.perf_counter()
            pool = self.pools.get(ctx.model.pool)
            if pool is None:
                raise no_capacity(f"The pool serving `{ctx.model.name}` is not configured.")
        except BaseException:
            if confirm is not None:
                await confirm()
            raise
        if overlap and self._may_overlap(ctx, confirm):
            # The reserve's script is queued now, beside the epoch GET: one write, one reply.
            reserving = self.limiter.begin_reserve(ctx)
            return pool, asyncio.ensure_future(self._checks(ctx, raw_body, authorization, reserving, confirm))
        await self._reserve(ctx, self.limiter.reserve(ctx), confirm)
        return pool, None

    def _may_overlap(self, ctx: RequestContext, confirm: Confirm | None) -> bool:
        """Is there a round trip to overlap (a key to confirm, a remote reserve), and may it be?"""
        if not self.overlap_checks or not self.limiter.may_defer(ctx):
            return False
        if confirm is not None:
            return True
        return self.limiter.remote and ctx.identity is not None and limited(ctx.identity.limits)

    async def _reserve(self, ctx: RequestContext, reserving: Awaitable[None], confirm: Confirm | None) -> None:
        """Await the limiter's reserve, then the key's confirmation; a stale key gives the reservation back.
        An auth failure outranks a refusal: the confirmation is awaited before the refusal is raised."""
        try:
            await reserving
        except BaseException:
            if confirm is not None:
                await confirm()
            raise
        if confirm is not None:
            try:
                await confirm()
            except BaseException:
                await self.limiter.settle(ctx, None)  # give the reservation back
                raise
        ctx.reserved_at = time.perf_counter()

    async def _checks(self, ctx: RequestContext, raw_body: bytes, authorization: str | None,
                      reserving: Awaitable[None], confirm: Confirm | None) -> None:
        """The overlapped checks: the reserve and the key's confirmation. A key whose tenants or keys
        changed meanwhile is authenticated afresh and the request validated and reserved again, as
        ``_serve`` does when that is found before the engine is called."""
        try:
            await self._reserve(ctx, reserving, confirm)
        except StaleIdentity:
            ctx.headers.clear()
            await self._admit(ctx, raw_body, authorization, early=False, overlap=False)

    async def _open(
        self, ctx: RequestContext, pool: Pool, checks: asyncio.Task[None] | None = None,
    ) -> tuple[Endpoint, UpstreamResponse | UpstreamStream]:
        """Admit onto an endpoint and open the engine request, retrying elsewhere on retryable failures.

        ``checks`` (overlapped limits and key checks) that have already failed by the time an engine is
        to be called (after a queue wait, say) stop the request there: the engine never sees it."""
        assert ctx.model is not None
        request = UpstreamRequest(kind=ctx.kind, body=ctx.body, stream=ctx.stream, request_id=ctx.request_id,
                                  public_model=ctx.model.name)
        tried: set[Endpoint] = set()
        last: UpstreamError | None = None
        for _attempt in range(self.max_retries + 1):
            ctx.queued_at = time.perf_counter()
            try:
                endpoint = await self.admission.admit(ctx, pool, frozenset(tried))
            except OpenAIError:
                if last is None:
                    raise
                break
            ctx.endpoint = endpoint
            ctx.admitted_at = ctx.upstream_at = time.perf_counter()
            if checks is not None and checks.done():
                await _passed(ctx, checks)
            self.telemetry.upstream(ctx, request)
            try:
                backend = endpoint.backend
                result = await (backend.stream(request) if ctx.stream else backend.complete(request))
                ctx.opened_at = time.perf_counter()
                return endpoint, result
            except UpstreamError as exc:
                self.telemetry.upstream_failed(ctx, exc)
                self.admission.release(ctx, endpoint)
                ctx.endpoint = None
                if not exc.retryable:
                    raise
                log.warning("endpoint %s failed request %s (%s); trying another", endpoint.name, ctx.request_id, exc)
                if exc.status in (502, 503, 504):
                    pool.report_failure(endpoint)
                tried.add(endpoint)
                last = exc
        raise no_capacity(f"No engine in pool '{pool.name}' could serve this request ({last}).", status=502)

    async def _finish(self, ctx: RequestContext, settling: Awaitable[None] | None = None, *, meter: bool = True) -> None:
        try:
            await (settling if settling is not None else self.limiter.settle(ctx, ctx.usage))
        except Exception:
            log.exception("settling limits failed for %s", ctx.request_id)
        if meter and ctx.identity is not None and ctx.model is not None:
            self.meter.record(ctx)


async def _passed(ctx: RequestContext, checks: asyncio.Task[None]) -> None:
    """Await the overlapped checks; a refusal is the request's outcome, as if it came before the engine."""
    try:
        await checks
    except OpenAIError:
        ctx.outcome = "rejected"
        raise


class _ClientWatch:
    """Cancel the request's task when its client disconnects, so the engine request is aborted at once
    (even while waiting for the first token), not at the next chunk we fail to send.

    Watching costs a task per request (about 15 µs of CPU, measured), so it starts only once the request
    has run for ``WATCH_AFTER_S``: a request answered sooner never pays for it, and a client that
    leaves early is noticed at most that much later.
    """

    WATCH_AFTER_S = 0.01

    def __init__(self, disconnected: Callable[[], Awaitable[None]]) -> None:
        self.client_left = False
        self._active = True
        self._disconnected = disconnected
        loop = asyncio.get_running_loop()  # once: on Python 3.11 each lookup is a getpid() system call
        self._task = asyncio.current_task(loop)
        self._watcher: asyncio.Future | None = None
        self._timer: asyncio.TimerHandle | None = loop.call_later(self.WATCH_AFTER_S, self._start)

    def _start(self) -> None:
        self._timer = None
        if self._active:
            self._watcher = asyncio.ensure_future(self._disconnected())
            self._watcher.add_done_callback(self._on_disconnect)

    def _on_disconnect(self, fut: asyncio.Future) -> None:
        # The server also reports "disconnect" once the response is complete: only a disconnect while
        # we are still serving means the client left.
        if self._active and not fut.cancelled() and self._task is not None:
            self.client_left = True
            self._task.cancel()

    def stop(self) -> None:
        self._active = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._watcher is not None:
            self._watcher.cancel()
