"""Fair admission on endpoints that are only looked at: window, order, priorities, deadlines, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from router.admission.fair import FairAdmission
from router.capacity import Capacity
from router.errors import OpenAIError
from router.picking.least_outstanding import LeastOutstanding
from serving.backends.base import Usage
from tests.unit.sched_fixtures import ctx, make_pool, signals


def admission(window: int = 2, deadline_s: float = 5.0, **kw) -> FairAdmission:
    return FairAdmission(LeastOutstanding(), Capacity(window=window), deadline_s=deadline_s, **kw)


async def settle() -> None:
    """Let woken waiters run (a release hands the slot over synchronously; the task resumes next turn)."""
    for _ in range(3):
        await asyncio.sleep(0)


def finish(adm: FairAdmission, c, ep, out: int = 100) -> None:
    c.usage = Usage(prompt_tokens=c.prompt_tokens, completion_tokens=out)
    adm.release(c, ep)


async def test_requests_go_straight_through_while_there_is_room():
    adm, pool = admission(window=2), make_pool(2)
    eps = [await adm.admit(ctx(), pool) for _ in range(4)]
    assert sorted(ep.name for ep in eps) == ["e0", "e0", "e1", "e1"]
    assert adm.queued() == 0


async def test_the_window_holds_and_a_release_wakes_the_next_waiter_at_once():
    adm, pool = admission(window=2), make_pool(1)
    held = [(c, await adm.admit(c, pool)) for c in (ctx(), ctx())]
    waiting = asyncio.ensure_future(adm.admit(ctx(), pool))
    await settle()
    assert not waiting.done() and adm.queued() == 1 and pool.endpoints[0].inflight == 2
    finish(adm, *held[0])
    assert pool.endpoints[0].inflight == 2  # handed over inside release, before any await
    await settle()
    assert waiting.done() and waiting.result() is pool.endpoints[0]
    assert adm.queued() == 0


async def test_work_conserving_any_endpoint_with_room_takes_the_waiter():
    adm, pool = admission(window=1), make_pool(3)
    held = [(c, await adm.admit(c, pool)) for c in (ctx(), ctx(), ctx())]
    waiters = [asyncio.ensure_future(adm.admit(ctx(), pool)) for _ in range(2)]
    await settle()
    finish(adm, *held[2])
    await settle()
    assert waiters[0].done() and waiters[0].result() is held[2][1]
    assert not waiters[1].done()


async def test_a_flooding_tenant_does_not_starve_another():
    adm, pool = admission(window=1), make_pool(1)
    ep = pool.endpoints[0]
    current = ctx("a")
    await adm.admit(current, pool)
    queued = {}
    for _ in range(20):
        c = ctx("a")
        queued[c] = asyncio.ensure_future(adm.admit(c, pool))
    await settle()
    b = ctx("b")
    queued[b] = asyncio.ensure_future(adm.admit(b, pool))
    await settle()
    served = []
    for _ in range(4):
        finish(adm, current, ep)
        await settle()
        current = next(c for c, f in queued.items() if f.done() and c not in served)
        served.append(current)
    # b arrived behind 20 of a's requests, but a had already been served: b goes next, then a's resume.
    tenants = [c.identity.tenant_id for c in served]
    assert tenants == ["b", "a", "a", "a"]


async def test_priority_classes_come_before_fairness():
    adm, pool = admission(window=1), make_pool(1)
    c0 = ctx("x")
    ep = await adm.admit(c0, pool)
    batch = asyncio.ensure_future(adm.admit(ctx("bulk", priority="batch"), pool))
    await settle()
    inter = asyncio.ensure_future(adm.admit(ctx("chat", priority="interactive"), pool))
    await settle()
    finish(adm, c0, ep)
    await settle()
    assert inter.done() and not batch.done()


async def test_past_its_deadline_a_waiter_gets_429_with_retry_after():
    adm, pool = admission(window=1, deadline_s=0.05), make_pool(1)
    await adm.admit(ctx(), pool)
    with pytest.raises(OpenAIError) as err:
        await asyncio.wait_for(adm.admit(ctx(), pool), 2.0)
    assert err.value.status == 429 and err.value.code == "queue_timeout"
    assert int(err.value.headers["retry-after"]) >= 1
    assert adm.queued() == 0


async def test_a_cancelled_waiter_leaves_the_queue_and_the_slot_goes_to_the_next():
    adm, pool = admission(window=1), make_pool(1)
    c0 = ctx()
    ep = await adm.admit(c0, pool)
    gone = asyncio.ensure_future(adm.admit(ctx("a"), pool))
    nxt = asyncio.ensure_future(adm.admit(ctx("a"), pool))
    await settle()
    gone.cancel()
    await settle()
    assert adm.queued() == 1
    finish(adm, c0, ep)
    await settle()
    assert nxt.done() and nxt.result() is ep and ep.inflight == 1


async def test_a_waiter_cancelled_the_instant_it_was_woken_gives_the_slot_back():
    adm, pool = admission(window=1), make_pool(1)
    c0 = ctx()
    ep = await adm.admit(c0, pool)
    woken = asyncio.ensure_future(adm.admit(ctx("a"), pool))
    other = asyncio.ensure_future(adm.admit(ctx("b"), pool))
    await settle()
    finish(adm, c0, ep)  # hands the slot to `woken`...
    woken.cancel()  # ...whose client leaves before it runs
    await settle()
    assert woken.cancelled()
    assert other.done() and other.result() is ep and ep.inflight == 1


async def test_counters_are_corrected_with_real_usage_on_release():
    adm, pool = admission(window=4, output_estimate=50), make_pool(1)
    c = ctx("a", prompt=100, max_tokens=1000)
    ep = await adm.admit(c, pool)
    assert adm.counters("p")["a"] == 100 + 2 * 50  # charged by estimate
    await adm.admit(ctx("b"), pool)  # keeps a's state from being forgotten
    finish(adm, c, ep, out=300)
    assert adm.counters("p")["a"] == 100 + 2 * 300  # corrected to what it really used


async def test_a_retry_is_not_placed_back_on_the_endpoint_it_failed_on():
    adm, pool = admission(window=1), make_pool(2)
    e0, e1 = pool.endpoints
    a, b = ctx(), ctx()
    placed = {await adm.admit(a, pool): a, await adm.admit(b, pool): b}
    c0, c1 = placed[e0], placed[e1]
    retry = asyncio.ensure_future(adm.admit(ctx("r"), pool, frozenset({e0})))
    plain = asyncio.ensure_future(adm.admit(ctx("s"), pool))
    await settle()
    finish(adm, c0, e0)
    await settle()
    assert plain.done() and plain.result() is e0 and not retry.done()
    finish(adm, c1, e1)
    await settle()
    assert retry.done() and retry.result() is e1


async def test_no_healthy_endpoint_fails_at_once():
    adm, pool = admission(), make_pool(1)
    pool.endpoints[0].healthy = False
    with pytest.raises(OpenAIError) as err:
        await adm.admit(ctx(), pool)
    assert err.value.status == 503


async def test_outside_load_and_kv_cache_gate_admission_and_a_scrape_reopens_it():
    adm, pool = admission(window=4), make_pool(1)
    ep = pool.endpoints[0]
    ep.signals = signals(running=3, waiting=1)  # another gateway fills the window
    waiting = asyncio.ensure_future(adm.admit(ctx(), pool))
    await settle()
    assert not waiting.done()
    ep.signals = signals(running=1)  # the next scrape sees room...
    pool._notify()  # ...and the pool tells its listeners
    await settle()
    assert waiting.done()
    c = ctx()
    ep.signals, ep.inflight_at_scrape = signals(running=1, kv=0.99), 1
    blocked = asyncio.ensure_future(adm.admit(c, pool))
    await settle()
    assert not blocked.done()  # KV cache above the threshold
    blocked.cancel()


async def test_prefill_pacing_holds_the_next_stream_until_the_first_token():
    adm = FairAdmission(LeastOutstanding(), Capacity(window=8), max_starting=1, deadline_s=2)
    pool = make_pool(1)
    first = ctx()
    first.stream = True
    ep = await adm.admit(first, pool)
    second = ctx()
    second.stream = True
    waiting = asyncio.ensure_future(adm.admit(second, pool))
    await settle()
    assert not waiting.done()  # the engine is still on the first prompt
    first.on_first_token()  # what the relay calls on the first chunk
    await settle()
    assert waiting.done() and waiting.result() is ep
    second.on_first_token()
    plain = ctx()  # not streamed: no first token to wait for, so it does not count as starting
    assert await adm.admit(plain, pool) is ep
    assert adm._starting[ep] == 0
    finish(adm, first, ep)
    finish(adm, second, ep)
    assert first.on_first_token is None


async def test_queue_depths_by_pool_and_priority_and_the_dequeue_stamp():
    adm, pool = admission(window=1), make_pool(1)
    c0 = ctx()
    ep = await adm.admit(c0, pool)
    assert c0.dequeued_at is not None
    waiters = [asyncio.ensure_future(adm.admit(ctx("b", priority=p), pool)) for p in ("batch", "batch", "interactive")]
    await settle()
    assert adm.queue_depths() == {("p", "interactive"): 1, ("p", "batch"): 2}
    finish(adm, c0, ep)
    await settle()
    assert adm.queue_depths() == {("p", "interactive"): 0, ("p", "batch"): 2}
    for w in waiters:
        w.cancel()
    await settle()


async def test_headroom_is_kept_for_a_tenant_below_its_share_and_released_when_it_leaves():
    adm, pool = admission(window=4, headroom=1), make_pool(1)
    ep = pool.endpoints[0]
    b1 = ctx("b")
    await adm.admit(b1, pool)
    a = [ctx("a"), ctx("a")]
    for c in a:
        assert await adm.admit(c, pool) is ep  # below its share (2 of 4): straight in
    a3 = asyncio.ensure_future(adm.admit(ctx("a"), pool))
    await settle()
    assert not a3.done() and ep.inflight == 3  # at its share: the last slot is b's headroom
    b2 = ctx("b")
    assert await asyncio.wait_for(adm.admit(b2, pool), 1.0) is ep  # b, below its share, starts at once
    finish(adm, b2, ep)
    await settle()
    assert not a3.done()  # b is still active (b1 in flight): the headroom stays
    finish(adm, b1, ep)
    await settle()
    assert a3.done() and a3.result() is ep  # nobody else is active: a may fill the window


async def test_headroom_never_keeps_an_idle_endpoint_from_a_waiter():
    adm, pool = admission(window=2, headroom=1), make_pool(2)
    e0 = await adm.admit(ctx("b"), pool)
    a1 = ctx("a")
    e1 = await adm.admit(a1, pool)
    assert e1 is not e0
    assert await adm.admit(ctx("a"), pool) is e0  # a holds nothing on e0: below its share there
    a3 = asyncio.ensure_future(adm.admit(ctx("a"), pool))
    await settle()
    assert not a3.done()  # e0 full, e1 holds a's share with only the headroom left
    finish(adm, a1, e1)  # e1 is idle now
    await settle()
    assert a3.done() and a3.result() is e1


async def test_with_pacing_a_tenant_at_its_share_waits_for_the_prompt_in_progress_but_not_another():
    adm = FairAdmission(LeastOutstanding(), Capacity(window=8), max_starting=1, headroom=1, deadline_s=2)
    pool = make_pool(1)
    ep = pool.endpoints[0]

    async def stream(tenant: str):
        c = ctx(tenant)
        c.stream = True
        return c, asyncio.ensure_future(adm.admit(c, pool))

    b1, fb1 = await stream("b")
    await settle()
    b1.on_first_token()
    for _ in range(3):  # a takes 3 of its 4 slots, one prompt at a time
        c, f = await stream("a")
        await settle()
        assert f.done()
        c.on_first_token()
    a4, fa4 = await stream("a")
    await settle()
    assert fa4.done() and adm._starting[ep] == 1  # a4's prompt is in progress; a now holds its share
    a5, fa5 = await stream("a")
    b2, fb2 = await stream("b")
    await settle()
    assert not fa5.done()  # at its share: paced behind a4's prompt
    assert fb2.done() and adm._starting[ep] == 2  # below its share: one prompt beyond the pacing limit
    a4.on_first_token()
    await settle()
    assert not fa5.done()  # b2's prompt is still in progress
    b2.on_first_token()
    await settle()
    assert fa5.done()
