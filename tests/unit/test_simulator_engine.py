"""The simulator's batching model, in virtual time: no servers, no sleeping, deterministic."""

from __future__ import annotations

import pytest

from serving.simulator.engine import Engine, RequestTooLong, SeqState
from serving.simulator.kv_cache import BlockPool, chain_hashes
from serving.simulator.profiles import Profile, Timing, available_profiles, load_profile
from serving.simulator.tokenizer import OUTPUT_VOCABULARY, encode, encode_chat, pieces
from serving.simulator.virtual import closed_loop, run_until_idle

TIMING = Timing(overhead_ms=2.0, floor_ms=10.0, prefill_token_ms=0.1, decode_seq_ms=1.0)


def small_profile(**changes) -> Profile:
    base = Profile(
        name="test",
        served_model_name="test-model",
        max_model_len=512,
        max_num_seqs=8,
        max_num_batched_tokens=256,
        block_size=16,
        num_blocks=400,
        timing=TIMING,
    )
    return base.replace(**changes) if changes else base


def ids(n: int, salt: int = 0) -> list[int]:
    return [salt * 100_000 + i for i in range(n)]


def step_once(engine: Engine, now: float) -> float:
    step = engine.schedule(now)
    assert step is not None
    now += step.duration
    engine.complete(step, now)
    return now


# --- throughput and max_num_seqs -------------------------------------------------------------------


def test_throughput_rises_with_concurrency_and_saturates_at_max_num_seqs():
    profile = small_profile(max_num_seqs=8)
    rates = {}
    for c in (1, 2, 4, 8, 16, 32):
        r = closed_loop(profile, concurrency=c, num_requests=4 * c, prompt=lambda i: ids(20, i), max_tokens=32)
        assert r.max_running <= 8
        rates[c] = r.output_tokens_per_s
    assert rates[1] < rates[2] < rates[4] < rates[8]
    assert rates[8] > 3 * rates[1]  # batching pays: the floor is shared
    # Past max_num_seqs, more concurrency only queues: no more throughput.
    assert rates[16] == pytest.approx(rates[8], rel=0.05)
    assert rates[32] == pytest.approx(rates[8], rel=0.05)


def test_waiting_queue_holds_what_max_num_seqs_does_not_admit():
    engine = Engine(small_profile(max_num_seqs=4))
    for i in range(10):
        engine.add_request(ids(10, i), max_tokens=5, now=0.0)
    step_once(engine, 0.0)
    assert engine.num_running == 4
    assert engine.num_waiting == 6
    run_until_idle(engine)
    assert engine.stats.finished["length"] == 10


def test_step_time_follows_the_profile_floor_then_linear():
    t = TIMING
    assert t.step_seconds(0, 1, 1, 0) == pytest.approx(0.012)  # memory floor
    assert t.step_seconds(0, 5, 5, 0) == pytest.approx(0.012)  # still under the floor
    assert t.step_seconds(0, 50, 50, 0) == pytest.approx(0.052)  # compute-bound: linear in decode seqs
    assert t.step_seconds(200, 0, 1, 0) == pytest.approx(0.022)  # prefill tokens


def test_chunked_prefill_splits_a_long_prompt_and_keeps_decodes_going():
    engine = Engine(small_profile(max_num_batched_tokens=64))
    short = engine.add_request(ids(8, 1), max_tokens=50, now=0.0)
    now = step_once(engine, 0.0)  # short's prefill
    assert short.num_output_tokens == 1
    long = engine.add_request(ids(200, 2), max_tokens=5, now=now)
    steps = 0
    while long.num_output_tokens == 0:
        step = engine.schedule(now)
        assert step.batched_tokens <= 64
        now += step.duration
        engine.complete(step, now)
        steps += 1
    assert steps == 4  # 63 + 63 + 63 + 11 prompt tokens, one decode token of `short` per step
    assert short.num_output_tokens == 1 + steps


# --- KV capacity -----------------------------------------------------------------------------------


def test_kv_capacity_limits_admission():
    # 20 blocks of 16 tokens; each request needs 4 blocks for its 60-token prompt.
    engine = Engine(small_profile(max_num_seqs=64, max_num_batched_tokens=1024))
    engine.pool = BlockPool(20, 16)
    seqs = [engine.add_request(ids(60, i), max_tokens=2, now=0.0) for i in range(10)]
    step_once(engine, 0.0)
    assert engine.num_running == 5  # 5 x 4 blocks = all 20
    assert engine.num_waiting == 5
    assert engine.kv_cache_usage() == pytest.approx(1.0)
    run_until_idle(engine)
    assert all(s.state is SeqState.FINISHED for s in seqs)
    assert engine.pool.num_free == 20


def test_decode_growth_preempts_the_latest_admitted_and_it_still_finishes():
    engine = Engine(small_profile())
    engine.pool = BlockPool(12, 16)  # 192 tokens of KV
    a = engine.add_request(ids(40, 1), max_tokens=60, now=0.0)
    b = engine.add_request(ids(40, 2), max_tokens=60, now=0.0)
    run_until_idle(engine)
    assert engine.stats.preemptions >= 1
    assert b.num_preemptions >= 1 and a.num_preemptions == 0
    assert a.num_output_tokens == 60 and b.num_output_tokens == 60
    assert engine.pool.num_free == 12


def test_profile_refuses_a_cache_smaller_than_one_sequence():
    with pytest.raises(ValueError):
        small_profile(num_blocks=4, max_model_len=512)


# --- prefix cache ----------------------------------------------------------------------------------


def test_prefix_cache_hits_on_a_repeated_prefix():
    engine = Engine(small_profile())
    shared = ids(100, 7)  # 6 full blocks of 16
    first = engine.add_request(shared + ids(10, 1), max_tokens=3, now=0.0)
    now = run_until_idle(engine)
    assert first.cached_tokens == 0
    second = engine.add_request(shared + ids(10, 2), max_tokens=3, now=now)
    end = run_until_idle(engine, now)
    assert second.cached_tokens == 96
    assert engine.stats.prefix_cache_hits == 96
    assert engine.stats.prefix_cache_queries == 220
    # Fewer tokens to compute means an earlier first token.
    assert (second.first_token_at - now) < (first.first_token_at - 0.0)
    assert end > now


def test_prefix_is_shared_by_running_requests():
    engine = Engine(small_profile())
    shared = ids(64, 3)
    a = engine.add_request(shared + ids(5, 1), max_tokens=20, now=0.0)
    now = step_once(engine, 0.0)
    b = engine.add_request(shared + ids(5, 2), max_tokens=20, now=now)
    step_once(engine, now)
    assert b.cached_tokens == 64
    assert b.blocks[:4] == a.blocks[:4]  # the same physical blocks, referenced twice
    used_with_sharing = engine.pool.num_used
    assert used_with_sharing == 5 + 1  # a: 5 blocks, b: 4 shared + 1 of its own


def test_full_prompt_hit_still_computes_the_last_token():
    engine = Engine(small_profile())
    prompt = ids(64, 4)  # exactly 4 blocks
    engine.add_request(prompt, max_tokens=2, now=0.0)
    now = run_until_idle(engine)
    again = engine.add_request(list(prompt), max_tokens=2, now=now)
    run_until_idle(engine, now)
    assert again.cached_tokens == 48  # the last block is recomputed so that there is a token to sample


def test_lru_eviction_drops_the_least_recently_used_prefix():
    engine = Engine(small_profile())
    engine.pool = BlockPool(40, 16)
    now = 0.0
    prompts = [ids(80, 100 + i) for i in range(12)]  # 5 full blocks each (+1 for output)
    for p in prompts:
        engine.add_request(p, max_tokens=1, now=now)
        now = run_until_idle(engine, now)
    assert engine.pool.evictions > 0
    oldest = engine.add_request(prompts[0] + [1], max_tokens=1, now=now)
    now = run_until_idle(engine, now)
    newest = engine.add_request(prompts[-1] + [1], max_tokens=1, now=now)
    run_until_idle(engine, now)
    assert oldest.cached_tokens == 0
    assert newest.cached_tokens == 80


def test_block_hashes_chain_the_whole_prefix():
    a = chain_hashes(ids(48, 1), 16)
    b = chain_hashes(ids(16, 9) + ids(48, 1)[16:], 16)
    assert len(a) == 3
    assert a[1] != b[1] and a[2] != b[2]  # same block content, different prefix: different hash
    assert chain_hashes(ids(48, 1), 16) == a  # stable


# --- abort -----------------------------------------------------------------------------------------


def test_abort_frees_the_slot_and_the_blocks():
    engine = Engine(small_profile())
    total = engine.pool.num_blocks
    running = engine.add_request(ids(100, 1), max_tokens=100, now=0.0)
    now = step_once(engine, 0.0)
    now = step_once(engine, now)
    assert running.state is SeqState.RUNNING and engine.pool.num_free < total
    waiting = engine.add_request(ids(10, 2), max_tokens=5, now=now)
    engine.abort(waiting, now)
    engine.abort(running, now)
    assert engine.num_running == 0 and engine.num_waiting == 0
    assert engine.pool.num_free == total
    assert engine.kv_cache_usage() == 0.0
    assert engine.stats.finished["abort"] == 2
    assert not engine.has_work()


def test_abort_between_schedule_and_complete_is_safe():
    engine = Engine(small_profile())
    seq = engine.add_request(ids(30, 1), max_tokens=10, now=0.0)
    step = engine.schedule(0.0)
    engine.abort(seq, 0.001)
    assert engine.complete(step, step.duration) == []
    assert engine.pool.num_free == engine.pool.num_blocks


# --- output length ---------------------------------------------------------------------------------


def test_ignore_eos_gives_exactly_max_tokens_and_eos_ends_earlier_otherwise():
    engine = Engine(small_profile(eos_mean_tokens=10.0), seed=1)
    forced = [engine.add_request(ids(10, i), max_tokens=100, ignore_eos=True, now=0.0) for i in range(20)]
    free = [engine.add_request(ids(10, i), max_tokens=100, now=0.0) for i in range(200)]
    run_until_idle(engine)
    assert all(s.num_output_tokens == 100 and s.finish_reason == "length" for s in forced)
    lengths = [s.num_output_tokens for s in free]
    assert 6 < sum(lengths) / len(lengths) < 15
    assert {s.finish_reason for s in free} <= {"stop", "length"}
    assert sum(s.finish_reason == "stop" for s in free) > 190


def test_context_length_caps_max_tokens_and_refuses_prompts_that_fill_it():
    engine = Engine(small_profile(max_model_len=128))
    seq = engine.add_request(ids(100, 1), max_tokens=1000, now=0.0)
    assert seq.target_output == 28
    unbounded = engine.add_request(ids(100, 2), max_tokens=None, now=0.0)
    assert unbounded.target_output == 28
    with pytest.raises(RequestTooLong):
        engine.add_request(ids(128, 3), max_tokens=1, now=0.0)


# --- tokenizer and multi-turn ------------------------------------------------------------------------


def test_tokenizer_is_deterministic_and_counts_like_a_bpe():
    text = "The quick brown fox jumps over the lazy dog, twice: 12345 times!"
    assert encode(text) == encode(text)
    assert 13 <= len(encode(text)) <= 20
    assert pieces("<|im_start|>user\nhi<|im_end|>") == ["<|im_start|>", "user", "\n", "hi", "<|im_end|>"]


def test_multi_turn_hits_the_prefix_cache_on_the_previous_answer():
    engine = Engine(small_profile(block_size=16))
    turn1 = [{"role": "system", "content": "You are terse. " * 20}, {"role": "user", "content": "Tell me more."}]
    s1 = engine.add_request(encode_chat(turn1), max_tokens=40, now=0.0)
    now = run_until_idle(engine)
    answer = "".join(s1.output_texts)
    turn2 = turn1 + [{"role": "assistant", "content": answer}, {"role": "user", "content": "And then?"}]
    ids2 = encode_chat(turn2)
    assert ids2[: s1.num_tokens] == s1.prompt_ids + s1.output_ids  # the answer re-encodes to the same ids
    s2 = engine.add_request(ids2, max_tokens=4, now=now)
    run_until_idle(engine, now)
    # Every full block of turn 1's prompt *and* its computed output is a hit.
    assert s2.cached_tokens == ((s1.num_tokens - 1) // 16) * 16
    assert s2.cached_tokens > len(s1.prompt_ids)


def test_output_words_are_single_tokens():
    for k in range(3):
        _, text = OUTPUT_VOCABULARY.token(5, k)
        assert len(pieces(text)) == 1


# --- bundled profiles --------------------------------------------------------------------------------


def test_bundled_profiles_load():
    assert {"cpu-smollm2", "h100-llama3-8b"} <= set(available_profiles())
    cpu = load_profile("cpu-smollm2")
    assert cpu.block_size == 128 and cpu.max_model_len == 2048
    h100 = load_profile("h100-llama3-8b", max_num_seqs=256)
    assert h100.max_num_seqs == 256 and h100.block_size == 16
    assert load_profile("cpu-smollm2", floor_ms=1.0).timing.floor_ms == 1.0
    with pytest.raises(ValueError):
        load_profile("no-such-profile")


def test_cpu_profile_reproduces_the_measured_cpu_throughput():
    """FACTS.md: 36 / 148 / 292 / 363 tok/s at concurrency 1 / 4 / 16 / 64, 64 output tokens."""
    profile = load_profile("cpu-smollm2")
    prompt = encode_chat([{"role": "user", "content": "Write a short story about a robot who learns to paint."}])
    for c, real in ((1, 36), (4, 148), (16, 292), (64, 363)):
        r = closed_loop(profile, concurrency=c, num_requests=3 * c, prompt=lambda i: list(prompt), max_tokens=64)
        assert r.output_tokens_per_s == pytest.approx(real, rel=0.15), c
