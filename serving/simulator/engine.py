"""Continuous batching as vLLM's V1 scheduler does it, with time left to the caller.

The engine is a pure state machine: ``schedule(now)`` picks the next iteration's batch and says how long
it takes (from the profile's timing model); ``complete(step, now)`` applies it — prompt tokens become
computed, sequences that reached the end of their known tokens sample one more, finished ones free
their blocks. A driver advances time between the two calls: the HTTP server sleeps (real time, scaled),
tests and fits jump a virtual clock (``virtual.py``). Nothing here knows about HTTP or asyncio.

Scheduling follows vLLM V1 (``vllm/v1/core/sched/scheduler.py``):

* A token budget of ``max_num_batched_tokens`` per step. Running sequences go first, in admission
  order: a decoding sequence takes one token, a sequence still in prefill takes as much of its prompt
  as the budget allows (chunked prefill).
* When a running sequence needs a new KV block and none is free, the most recently admitted running
  sequence is preempted (its blocks are freed, it returns to the head of the waiting queue and will
  recompute its prompt and output so far — hitting the prefix cache where its blocks survived).
* Then waiting sequences are admitted first-come-first-served while the budget, ``max_num_seqs`` and
  the KV cache allow; a sequence that does not fit stops admission (no skipping ahead). Nothing is
  admitted in a step that preempted.
* On admission the prompt's full blocks are looked up in the prefix cache; the hit length is capped so
  that at least one token is computed (the last token's logits are needed to sample).
* A sequence samples a token at the end of each step in which its computed tokens reach its known
  tokens: its last prefill chunk produces the first output token, each decode step one more.

Time is in seconds of simulated time, whatever the driver maps it to.
"""

from __future__ import annotations

import bisect
import enum
import math
import random
from collections import deque
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass, field
from typing import Any

from .kv_cache import ROOT_HASH, BlockPool, chain_hashes
from .profiles import Profile
from .tokenizer import IM_END, OUTPUT_VOCABULARY, OutputVocabulary, token_id

EOS_ID = token_id(IM_END)

#: Buckets of the latency histograms, vLLM's own (``vllm:time_to_first_token_seconds`` and
#: ``vllm:e2e_request_latency_seconds``).
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
    80.0, 160.0, 640.0, 2560.0,
)
E2E_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0,
    960.0, 1920.0, 7680.0,
)


class SeqState(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    ABORTED = "aborted"


@dataclass(eq=False, slots=True)
class Sequence:
    """One request inside the engine."""

    request_id: str
    prompt_ids: list[int]
    #: output tokens this sequence will produce before it stops, and why it stops then.
    target_output: int
    stop_reason_at_target: str
    arrival: float
    word_offset: int = 0
    output_ids: list[int] = field(default_factory=list)
    output_texts: list[str] = field(default_factory=list)
    num_computed: int = 0
    blocks: list[int] = field(default_factory=list)
    #: chained hashes of the full blocks of prompt + output known so far.
    block_hashes: list[int] = field(default_factory=list)
    #: how many of this sequence's blocks are registered in the prefix cache.
    num_registered: int = 0
    #: prompt tokens served from the prefix cache on the last admission.
    cached_tokens: int = 0
    state: SeqState = SeqState.WAITING
    admitted_at: float | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    finish_reason: str | None = None
    num_preemptions: int = 0
    #: free slot for the driver (the HTTP server keeps its wake-up event here).
    listener: Any = None

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def finished(self) -> bool:
        return self.state in (SeqState.FINISHED, SeqState.ABORTED)

    def token_at(self, i: int) -> int:
        n = len(self.prompt_ids)
        return self.prompt_ids[i] if i < n else self.output_ids[i - n]


@dataclass(slots=True)
class Step:
    """One engine iteration: which sequences compute how many tokens, and how long it takes."""

    items: list[tuple[Sequence, int]]
    duration: float
    batched_tokens: int
    prefill_tokens: int
    decode_seqs: int
    context_tokens: int
    preempted: int = 0


class Histogram:
    """Cumulative-bucket histogram in Prometheus' shape (counts per upper bound, sum, count)."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: SequenceABC[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


@dataclass(slots=True)
class EngineStats:
    """Counters an engine exports (the ``vllm:*`` metrics), all monotonic."""

    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    preemptions: int = 0
    steps: int = 0
    busy_seconds: float = 0.0
    finished: dict[str, int] = field(default_factory=lambda: {"stop": 0, "length": 0, "abort": 0})
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    e2e: Histogram = field(default_factory=lambda: Histogram(E2E_BUCKETS))


class RequestTooLong(ValueError):
    """The prompt plus the requested output does not fit in ``max_model_len`` (HTTP 400)."""


class Engine:
    """One simulated vLLM engine: a waiting queue, a running batch, a KV block pool."""

    def __init__(self, profile: Profile, *, seed: int = 0, vocabulary: OutputVocabulary = OUTPUT_VOCABULARY) -> None:
        self.profile = profile
        self.pool = BlockPool(profile.num_blocks, profile.block_size)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.stats = EngineStats()
        self.vocabulary = vocabulary
        self._rng = random.Random(seed)
        self._next_id = 0

    # --- requests ------------------------------------------------------------------------------------
    def add_request(
        self,
        prompt_ids: list[int],
        *,
        max_tokens: int | None,
        now: float,
        ignore_eos: bool = False,
        min_tokens: int = 0,
        request_id: str | None = None,
    ) -> Sequence:
        """Queue a request.

        As vLLM 0.32 does, a prompt that leaves no room for output is refused (``RequestTooLong``), and
        ``max_tokens`` is capped at what fits in ``max_model_len`` (``None`` means "all that fits").
        """
        p = self.profile
        n_prompt = len(prompt_ids)
        if n_prompt == 0:
            raise ValueError("the prompt is empty")
        room = p.max_model_len - n_prompt
        if room < 1:
            raise RequestTooLong(
                f"This model's maximum context length is {p.max_model_len} tokens. However, your prompt "
                f"contains {n_prompt} input tokens, which exceeds this limit even without any output tokens. "
                "Please reduce the length of the input prompt."
            )
        max_tokens = room if max_tokens is None else min(max_tokens, room)
        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        target, reason = max_tokens, "length"
        if not ignore_eos and p.eos_mean_tokens > 0:
            # Geometric number of tokens up to and including EOS, mean eos_mean_tokens.
            q = 1.0 / max(p.eos_mean_tokens, 1.0)
            eos_at = 1
            if q < 1.0:
                eos_at = 1 + int(math.log(1.0 - self._rng.random()) / math.log(1.0 - q))
            eos_at = max(eos_at, min_tokens + 1)
            if eos_at < max_tokens:
                target, reason = eos_at, "stop"
        if request_id is None:
            request_id = f"sim-{self._next_id}"
            self._next_id += 1
        seq = Sequence(
            request_id=request_id,
            prompt_ids=prompt_ids,
            target_output=target,
            stop_reason_at_target=reason,
            arrival=now,
            word_offset=self._rng.randrange(len(self.vocabulary)),
        )
        if p.enable_prefix_caching:
            seq.block_hashes = chain_hashes(prompt_ids, p.block_size)
        self.waiting.append(seq)
        return seq

    def abort(self, seq: Sequence, now: float) -> None:
        """Stop a request (client went away): free its slot and its blocks at once."""
        if seq.finished:
            return
        if seq.state is SeqState.WAITING:
            try:
                self.waiting.remove(seq)
            except ValueError:
                pass
        elif seq.state is SeqState.RUNNING:
            self.running.remove(seq)
            self.pool.free(seq.blocks)
            seq.blocks = []
        seq.state = SeqState.ABORTED
        seq.finish_reason = "abort"
        seq.finished_at = now
        self.stats.finished["abort"] += 1

    # --- views ---------------------------------------------------------------------------------------
    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def kv_cache_usage(self) -> float:
        return self.pool.usage()

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    # --- one iteration -------------------------------------------------------------------------------
    def schedule(self, now: float) -> Step | None:
        """Choose the next batch and allocate its blocks. None when there is nothing to run."""
        p, pool = self.profile, self.pool
        bs = p.block_size
        budget = p.max_num_batched_tokens
        items: list[tuple[Sequence, int]] = []
        preempted = 0

        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_tokens - seq.num_computed, budget)
            need = pool.blocks_for(seq.num_computed + n) - len(seq.blocks)
            while need > pool.num_free:
                victim = self.running[-1]
                self._preempt(victim)
                preempted += 1
                if victim is seq:
                    break
            if seq.state is not SeqState.RUNNING:
                break
            if need > 0:
                seq.blocks.extend(pool.allocate(need))
            items.append((seq, n))
            budget -= n
            i += 1

        if not preempted:
            while self.waiting and budget > 0 and len(self.running) < p.max_num_seqs:
                seq = self.waiting[0]
                hits: list[int] = []
                if p.enable_prefix_caching:
                    max_hit_blocks = (seq.num_tokens - 1) // bs
                    hits = pool.match(seq.block_hashes[:max_hit_blocks])
                computed = len(hits) * bs
                n = min(seq.num_tokens - computed, budget)
                need = pool.blocks_for(computed + n) - len(hits)
                if not pool.can_allocate(need, hits):
                    break
                pool.touch(hits)
                seq.blocks = hits + pool.allocate(need)
                seq.num_computed = computed
                seq.num_registered = len(hits)
                seq.cached_tokens = computed
                self.stats.prefix_cache_queries += seq.num_tokens
                self.stats.prefix_cache_hits += computed
                self.waiting.popleft()
                seq.state = SeqState.RUNNING
                if seq.admitted_at is None:
                    seq.admitted_at = now
                self.running.append(seq)
                items.append((seq, n))
                budget -= n

        if not items:
            return None
        batched = prefill = decode = context = 0
        for seq, n in items:
            batched += n
            context += seq.num_computed + n
            if n == 1 and seq.output_ids and seq.num_computed == seq.num_tokens - 1:
                decode += 1
            else:
                prefill += n
        duration = p.timing.step_seconds(prefill, decode, len(items), context)
        return Step(items, duration, batched, prefill, decode, context, preempted)

    def complete(self, step: Step, now: float) -> list[Sequence]:
        """Apply a scheduled step at time ``now``; returns the sequences that produced a token."""
        p, pool, stats = self.profile, self.pool, self.stats
        bs = p.block_size
        caching = p.enable_prefix_caching
        produced: list[Sequence] = []
        stats.steps += 1
        stats.busy_seconds += step.duration
        for seq, n in step.items:
            if seq.state is not SeqState.RUNNING:  # aborted (or preempted) since it was scheduled
                continue
            seq.num_computed += n
            if caching:
                full = seq.num_computed // bs
                if full > seq.num_registered:
                    if full > len(seq.block_hashes):
                        parent = seq.block_hashes[-1] if seq.block_hashes else ROOT_HASH
                        start = len(seq.block_hashes)
                        tokens = [seq.token_at(t) for t in range(start * bs, full * bs)]
                        seq.block_hashes.extend(chain_hashes(tokens, bs, parent=parent))
                    for b in range(seq.num_registered, full):
                        pool.register(seq.blocks[b], seq.block_hashes[b])
                    seq.num_registered = full
            if seq.num_computed < seq.num_tokens:
                continue  # a prefill chunk that did not reach the end of the prompt
            k = len(seq.output_ids)
            if k + 1 == seq.target_output and seq.stop_reason_at_target == "stop":
                tok, text = EOS_ID, ""
            else:
                tok, text = self.vocabulary.token(seq.word_offset, k)
            seq.output_ids.append(tok)
            seq.output_texts.append(text)
            stats.generation_tokens += 1
            if k == 0 and seq.first_token_at is None:
                seq.first_token_at = now
                stats.prompt_tokens += seq.num_prompt_tokens
                stats.ttft.observe(max(0.0, now - seq.arrival))
            if len(seq.output_ids) >= seq.target_output:
                self._finish(seq, seq.stop_reason_at_target, now)
            produced.append(seq)
        return produced

    # --- internals -----------------------------------------------------------------------------------
    def _finish(self, seq: Sequence, reason: str, now: float) -> None:
        self.running.remove(seq)
        self.pool.free(seq.blocks)
        seq.blocks = []
        seq.state = SeqState.FINISHED
        seq.finish_reason = reason
        seq.finished_at = now
        self.stats.finished[reason] += 1
        self.stats.e2e.observe(max(0.0, now - seq.arrival))

    def _preempt(self, seq: Sequence) -> None:
        """Recompute-style preemption: drop the KV, requeue at the head of the waiting queue."""
        self.running.remove(seq)
        self.pool.free(seq.blocks)
        seq.blocks = []
        seq.num_computed = 0
        seq.num_registered = 0
        seq.state = SeqState.WAITING
        seq.num_preemptions += 1
        self.stats.preemptions += 1
        self.waiting.appendleft(seq)
