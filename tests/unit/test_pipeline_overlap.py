"""The pipeline's side of the overlapped limits checks, one function at a time with stand-ins.

End to end (real gateways, Redis, upstream) the overlap is proven in ``tests/e2e/test_redis_overlap.py``;
what that cannot reach deterministically is a refusal that lands while the request waits for an endpoint:
it must stop the request before its engine is called.
"""

from __future__ import annotations

import asyncio

import pytest

from models.catalog import ModelSpec
from router.context import RequestContext
from router.errors import OpenAIError
from router.pipeline import Pipeline
from serving.endpoint import Endpoint


class _Backend:
    url, engine = "http://engine", "vllm"

    def __init__(self) -> None:
        self.called = 0

    async def complete(self, request):
        self.called += 1
        raise AssertionError("the engine must not be called for a refused request")

    stream = complete


class _SlowAdmission:
    """Places every request on one endpoint after a wait (a queue), counting what it releases."""

    def __init__(self, endpoint: Endpoint, wait_s: float) -> None:
        self.endpoint, self.wait_s, self.released = endpoint, wait_s, 0

    async def admit(self, ctx, pool, exclude=frozenset()):
        await asyncio.sleep(self.wait_s)
        self.endpoint.inflight += 1
        return self.endpoint

    def release(self, ctx, endpoint):
        endpoint.inflight -= 1
        self.released += 1


def _pipeline(admission) -> Pipeline:
    return Pipeline(catalog=None, pools={}, auth=None, limiter=None, admission=admission,  # type: ignore[arg-type]
                    meter=None, count_prompt=None)  # type: ignore[arg-type]


def _ctx() -> RequestContext:
    ctx = RequestContext(request_id="r1", kind="chat", body={"model": "m"})
    ctx.model = ModelSpec(name="m", pool="p")
    return ctx


async def test_a_refusal_that_lands_while_queued_stops_the_request_before_its_engine():
    backend = _Backend()
    endpoint = Endpoint("e", "p", backend)  # type: ignore[arg-type]
    admission = _SlowAdmission(endpoint, wait_s=0.05)

    async def refuse() -> None:
        raise OpenAIError(429, "Rate limit reached", type="requests", code="rate_limit_exceeded")

    checks = asyncio.ensure_future(refuse())
    ctx = _ctx()
    with pytest.raises(OpenAIError) as info:
        await _pipeline(admission)._open(ctx, None, checks)  # type: ignore[arg-type]
    assert info.value.status == 429 and ctx.outcome == "rejected"
    assert backend.called == 0
    assert ctx.endpoint is endpoint  # admitted: the caller's way back releases it


async def test_checks_still_running_when_the_engine_is_called_do_not_hold_it_back():
    class _Answering(_Backend):
        async def complete(self, request):
            self.called += 1
            return "answer"

    backend = _Answering()
    endpoint = Endpoint("e", "p", backend)  # type: ignore[arg-type]
    gate = asyncio.Event()

    async def slow_pass() -> None:
        await gate.wait()

    checks = asyncio.ensure_future(slow_pass())
    ep, result = await _pipeline(_SlowAdmission(endpoint, wait_s=0))._open(_ctx(), None, checks)  # type: ignore[arg-type]
    assert (ep, result, backend.called) == (endpoint, "answer", 1) and not checks.done()
    gate.set()
    await checks
