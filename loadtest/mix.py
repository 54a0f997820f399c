"""Drawing one request from the traffic mix: which tenant, which prompt, how long an answer, streamed or not."""

from __future__ import annotations

import random
from dataclasses import dataclass

from loadtest.config import MixSpec
from loadtest.prompts import system_prompt, user_prompt


@dataclass(frozen=True, slots=True)
class RequestSpec:
    tenant: str
    messages: list[dict]
    max_tokens: int
    stream: bool
    system_prompt: int | None  # index of the shared system prompt, if any


class TrafficMix:
    """Draws requests; system prompts are built once and shared by every tenant (prefix-cache friendly)."""

    def __init__(self, mix: MixSpec, tenants: list[tuple[str, float]], rng: random.Random | None = None) -> None:
        """``tenants``: (name, weight) pairs; a tenant's share of the arrivals is its weight's share."""
        self.mix = mix
        self.rng = rng or random.Random(mix.seed)
        self.tenants = [name for name, _ in tenants]
        self.weights = [weight for _, weight in tenants]
        srng = random.Random(0 if mix.seed is None else mix.seed)
        self.system_prompts = [system_prompt(i, mix.system_prompt_tokens.sample(srng)) for i in range(mix.system_prompts)]

    def draw(self) -> RequestSpec:
        rng, mix = self.rng, self.mix
        tenant = rng.choices(self.tenants, weights=self.weights)[0]
        messages: list[dict] = []
        sp: int | None = None
        if self.system_prompts and rng.random() < mix.system_prompt_share:
            sp = rng.randrange(len(self.system_prompts))
            messages.append({"role": "system", "content": self.system_prompts[sp]})
        messages.append({"role": "user", "content": user_prompt(mix.prompt_tokens.sample(rng), rng)})
        return RequestSpec(
            tenant=tenant, messages=messages, max_tokens=max(1, mix.output_tokens.sample(rng)),
            stream=rng.random() < mix.stream_share, system_prompt=sp,
        )
