"""The Virtual Token Counter's ordering, lifting and weights, on the pure data structure."""

from __future__ import annotations

from router.admission.vtc import VTCQueue


def serve_all(q: VTCQueue, cost: dict[str, float], weight: dict[str, float] | None = None) -> list[str]:
    order = []
    while (e := q.pop()) is not None:
        order.append(e.tenant)
        q.charge(e.tenant, cost[e.tenant] / (weight or {}).get(e.tenant, 1.0))
    return order


def test_lowest_counter_goes_next_and_each_tenant_stays_fifo():
    q = VTCQueue()
    for i in range(4):
        q.push(("a", i), "a")
    for i in range(2):
        q.push(("b", i), "b")
    order = []
    while (e := q.pop()) is not None:
        order.append(e.item)
        q.charge(e.tenant, 10)
    # Equal costs: the tenants alternate while both are backlogged, each in its own arrival order.
    assert order == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("a", 3)]


def test_cheaper_requests_get_served_more_often():
    q = VTCQueue()
    for _ in range(30):
        q.push(None, "big")
        q.push(None, "small")
    order = serve_all(q, {"big": 300, "small": 100})[:40]
    # While both are backlogged, service (not request count) is equalised: ~3 small per big.
    assert 2.5 <= order.count("small") / order.count("big") <= 3.5


def test_weights_give_proportional_service():
    q = VTCQueue()
    for _ in range(60):
        q.push(None, "gold")
        q.push(None, "free")
    order = serve_all(q, {"gold": 100, "free": 100}, {"gold": 2.0, "free": 1.0})[:60]
    assert order.count("gold") == 2 * order.count("free")


def test_a_returning_tenant_is_lifted_to_the_backlogged_minimum():
    q = VTCQueue()
    q.push(None, "b")  # b was served long ago, then idled
    q.charge("b", 5)
    q.pop()
    for _ in range(100):
        q.push(None, "a")
    for _ in range(50):  # a alone, backlogged, accumulates service
        q.pop()
        q.charge("a", 10)
    assert q.tenants["a"].counter == 505  # lifted to b's 5 on arrival, then 50 × 10
    q.push(None, "b")  # b returns: it may not bank the 500 units it idled through
    assert q.tenants["b"].counter == 505
    order = serve_all(q, {"a": 10, "b": 10})
    assert order[:3] in (["a", "b", "a"], ["b", "a", "a"])  # b waits at most one of a's turns


def test_arrival_to_an_empty_queue_is_lifted_to_the_last_served_counter():
    q = VTCQueue()
    q.serve_now("a")
    q.charge("a", 1000)
    q.serve_now("a")  # a is served at counter 1000 with nothing queued
    q.charge("a", 1000)
    t = q.serve_now("b")  # newcomer after an uncontended period: no credit for the past
    assert t.counter == 1000


def test_dropped_entries_leave_at_once_and_an_emptied_tenant_is_not_backlogged():
    q = VTCQueue()
    ea = q.push("a1", "a")
    q.push("b1", "b")
    q.charge("b", 50)
    assert q.drop(ea) and not q.drop(ea)
    assert len(q) == 1 and q.tenants["a"].live == 0
    assert q.pop().item == "b1" and q.pop() is None


def test_put_back_keeps_its_place():
    q = VTCQueue()
    q.push("a1", "a")
    q.push("a2", "a")
    e = q.pop()
    q.push_front(e)
    assert [q.pop().item, q.pop().item] == ["a1", "a2"]


def test_idle_tenants_behind_the_floor_are_forgotten():
    q = VTCQueue()
    q.push(None, "a")
    q.push(None, "b")
    q.charge("b", 100)
    q.pop()  # a (counter 0)
    q.forget_idle("a")  # idle, counter 0 <= floor 100: lifting would restore it
    assert "a" not in q.tenants
    q.push(None, "a")
    assert q.tenants["a"].counter == 100


def test_skipped_tenants_are_passed_over_and_keep_their_place():
    q = VTCQueue()
    for item, tenant in (("a1", "a"), ("b1", "b"), ("c1", "c")):
        q.push(item, tenant)
    q.charge("b", 10)
    q.charge("c", 20)
    assert q.pop(skip={"a", "b"}).item == "c1"
    assert q.pop(skip={"a", "b"}) is None  # only skipped tenants are left
    q.restore()
    assert [q.pop().item, q.pop().item] == ["a1", "b1"]  # the lowest counter first again
