"""Prompt text of a wanted length, without a tokenizer on the client side.

A load generator should not need the served model's tokenizer: it is a client. Common short English
words are one token each in the BPE vocabularies of today's chat models (GPT-2 style, Llama, SmolLM),
so ``n`` such words are close to ``n`` tokens. The report always uses the engine's own counts (the
stream's usage), so this only has to be roughly right.

User prompts start with a random number so that two requests never share a prefix by accident: prefix
caching should help exactly where the profile says prompts are shared (the system prompts).
"""

from __future__ import annotations

import random

WORDS = tuple(dict.fromkeys((
    "the of and to in is was for on that with as it by at from his an were are which this be or had not "
    "one but all new more first two can after who they has her been also its time there into only most "
    "other some over many such when then these years than may him would used made about three city "
    "each world where any under like well both what way four long back work year much same day part "
    "school state during small great high own life end still water good people while since must place "
    "house name music early power area might best line war last land light set help"
).split()))


def words(n: int, rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def user_prompt(n_tokens: int, rng: random.Random) -> str:
    """About ``n_tokens`` tokens, unique from the first token on."""
    head = f"{rng.randrange(10**6)}: please continue this text."
    return head + " " + words(max(0, n_tokens - 8), rng)


def system_prompt(index: int, n_tokens: int) -> str:
    """The ``index``-th shared system prompt: the same text for every request that uses it."""
    rng = random.Random(f"system-{index}")
    return f"You are assistant number {index}. Follow these notes: " + words(max(0, n_tokens - 12), rng)
