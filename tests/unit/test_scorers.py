"""Each scorer alone, the capacity model, and the weighted picker's load gate."""

from __future__ import annotations

from router.capacity import Capacity
from router.picking import make_policy
from router.picking.prompt_blocks import block_hashes, render_prompt
from router.picking.scorers import VETO, KVCacheScorer, LoadScorer, PrefixAffinityScorer
from router.picking.weighted import WeightedPicker
from tests.unit.sched_fixtures import ctx, make_pool, signals

SYSTEM = "You are a helpful assistant for the ACME corporation. " * 20  # ~1 KB shared head


def chat(system: str, user: str) -> dict:
    return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}


def test_capacity_counts_our_inflight_plus_outside_load_from_fresh_signals():
    cap = Capacity(window=8, stale_after_s=3.0)
    ep = make_pool(1).endpoints[0]
    ep.inflight = 3
    assert cap.load(ep) == 3  # no signals: our own count
    ep.signals, ep.inflight_at_scrape = signals(running=4, waiting=2), 3  # 3 more from elsewhere
    assert cap.load(ep) == 6
    ep.inflight = 1  # two of ours finished since the scrape: room is back at once
    assert cap.load(ep) == 4
    ep.signals = signals(running=9, waiting=9, age=10)  # stale: not trusted for admission
    assert cap.load(ep) == 1 and cap.stale(ep, ep.signals.scraped_at + 10)


def test_capacity_kv_threshold_never_idles_an_endpoint():
    cap = Capacity(window=8, kv_threshold=0.9)
    ep = make_pool(1).endpoints[0]
    ep.signals = signals(kv=0.95)
    now = ep.signals.scraped_at
    assert cap.has_room(ep, now)  # nothing of ours on it: a stale-high KV reading must not idle it
    ep.inflight = 1
    assert not cap.has_room(ep, now)
    ep.signals = signals(running=1, kv=0.5)
    assert cap.has_room(ep, now)


def test_load_scorer_prefers_room_and_vetoes_full_and_stale_endpoints():
    cap = Capacity(window=4)
    eps = make_pool(4).endpoints
    eps[0].inflight, eps[1].inflight, eps[2].inflight = 0, 3, 4
    eps[3].signals = signals(age=60)
    s = LoadScorer(cap).score(ctx(), eps)
    assert s[0] == 1.0 and s[1] == 0.25 and s[2] == VETO and s[3] == VETO


def test_kv_scorer_prefers_the_emptiest_cache():
    cap = Capacity()
    eps = make_pool(4).endpoints
    eps[0].signals, eps[1].signals, eps[2].signals = signals(kv=0.2), signals(kv=0.9), signals(kv=0.1, age=60)
    s = KVCacheScorer(cap).score(ctx(), eps)
    assert s[0] > s[1] and s[2] == 0.0 and s[3] == 1.0


def test_prompt_block_hashes_are_chained():
    a = block_hashes(SYSTEM + "question one", 64, 100)
    b = block_hashes(SYSTEM + "another question", 64, 100)
    shared = len(SYSTEM) // 64
    assert a[:shared] == b[:shared] and a[shared:] != b[shared:]
    assert block_hashes("x" * 63, 64, 100) == []  # only full blocks
    assert len(block_hashes("x" * 6400, 64, 10)) == 10  # bounded
    assert render_prompt({"prompt": "hi"}) == "hi"
    assert "helpful" in render_prompt(chat(SYSTEM, "q"))


def test_prefix_scorer_remembers_where_a_prefix_went():
    scorer = PrefixAffinityScorer(block_chars=64, lru_blocks=1000)
    eps = make_pool(3).endpoints
    first = ctx(body=chat(SYSTEM, "first question"))
    assert scorer.score(first, eps) == [0.0, 0.0, 0.0]
    scorer.routed(first, eps[1])
    follow = ctx(body=chat(SYSTEM, "a different question entirely, long enough to fill blocks " * 3))
    s = scorer.score(follow, eps)
    assert s[0] == s[2] == 0.0 and 0.5 < s[1] < 1.0  # the system prompt's blocks, not the question's
    assert scorer.score(ctx(body=chat("Another system prompt. " * 40, "q")), eps) == [0.0, 0.0, 0.0]


def test_prefix_lru_evicts_tails_first_and_keeps_the_shared_head():
    scorer = PrefixAffinityScorer(block_chars=64, lru_blocks=20)
    ep = make_pool(1).endpoints
    head = len(SYSTEM) // 64  # 16 blocks of system prompt
    scorer.routed(ctx(body=chat(SYSTEM, "tail " * 200)), ep[0])
    assert len(scorer._lru[ep[0]]) == 20
    again = ctx(body=chat(SYSTEM, "something else " * 30))
    matched = scorer.matched_blocks(again)[ep[0]]
    assert matched >= head  # the head survived eviction of the long tail


def test_weighted_picker_never_follows_affinity_past_the_window():
    cap = Capacity(window=2)
    prefix = PrefixAffinityScorer(block_chars=64)
    picker = WeightedPicker([(prefix, 10.0), (LoadScorer(cap), 1.0)])
    eps = make_pool(3).endpoints
    warm = ctx(body=chat(SYSTEM, "q"))
    prefix.routed(warm, eps[0])
    assert picker.pick(ctx(body=chat(SYSTEM, "q2")), eps) is eps[0]  # affinity wins while there is room
    eps[0].inflight = 2  # at its window
    assert picker.pick(ctx(body=chat(SYSTEM, "q3")), eps) is not eps[0]
    for ep in eps:
        ep.inflight = 2  # everyone full: direct admission still gets an answer
    assert picker.pick(ctx(body=chat(SYSTEM, "q4")), eps) is eps[0]


def test_weighted_picker_spreads_ties():
    picker = WeightedPicker([(LoadScorer(Capacity(window=8)), 1.0)])
    eps = make_pool(4).endpoints
    picked = {picker.pick(ctx(), eps).name for _ in range(4)}
    assert len(picked) == 4


def test_policies_are_registered_by_name():
    for name in ("round_robin", "least_outstanding", "least_loaded", "prefix_load"):
        assert make_policy(name).pick(ctx(), make_pool(2).endpoints) is not None
