"""Engine profiles: the capacity and the iteration-time model of one simulated engine replica.

A profile is a TOML file (``serving/simulator/profiles/<name>.toml``, or any path) or a dict with three
sections — ``[engine]`` (vLLM's scheduler and cache knobs), ``[timing]`` (the iteration-time model) and
``[output]`` (when generation stops on its own). ``docs/simulator.md`` says where each bundled profile's
numbers come from.

The iteration-time model
------------------------
One engine step runs one forward pass over a batch that mixes prefill chunks and decode tokens (vLLM
V1's chunked prefill). With ``S`` scheduled sequences, ``P`` batched prefill tokens, ``D`` decoding
sequences (one token each) and ``C`` context tokens (computed + new, summed over the scheduled
sequences), its duration is modelled as::

    step_ms = overhead_ms + per_seq_ms * S
            + max(floor_ms, prefill_token_ms * P + decode_seq_ms * D)
            + context_token_ms * C

* ``overhead_ms`` — fixed per step: scheduling, input preparation, sampling launch, output processing.
* ``floor_ms`` — a forward pass cannot be faster than streaming the weights once: small batches are
  memory-bound and cost the same whatever their size (the flat start of every throughput curve).
* ``prefill_token_ms`` / ``decode_seq_ms`` — once compute-bound, each batched token costs its FLOPs. A
  decode token usually costs more than a prefill token (matrix-vector work, per-sequence sampling),
  hence two numbers.
* ``per_seq_ms`` — per scheduled sequence, outside the max (CPU-side bookkeeping).
* ``context_token_ms`` — attention reads the KV cache of every scheduled sequence; each context token
  costs this much (bandwidth: KV bytes per token / memory bandwidth).

This roofline-shaped form (memory floor, then linear in batched work, plus attention in the context)
is the one serving simulators such as Vidur and DistServe use; it reproduces measured curves that are
flat at small batch sizes and then linear, with a handful of numbers.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

PROFILE_DIR = "profiles"


@dataclass(frozen=True, slots=True)
class Timing:
    """Iteration time as a function of the batch (see the module docstring)."""

    overhead_ms: float = 1.0
    floor_ms: float = 5.0
    prefill_token_ms: float = 0.03
    decode_seq_ms: float = 0.03
    per_seq_ms: float = 0.0
    context_token_ms: float = 0.0

    def step_seconds(self, prefill_tokens: int, decode_seqs: int, num_seqs: int, context_tokens: int) -> float:
        ms = (
            self.overhead_ms
            + self.per_seq_ms * num_seqs
            + max(self.floor_ms, self.prefill_token_ms * prefill_tokens + self.decode_seq_ms * decode_seqs)
            + self.context_token_ms * context_tokens
        )
        return ms / 1000.0


@dataclass(frozen=True, slots=True)
class Profile:
    """Everything that makes one simulated engine behave like a given model on given hardware."""

    name: str
    served_model_name: str
    description: str = ""
    # [engine] — vLLM's knobs of the same names.
    max_model_len: int = 2048
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    block_size: int = 16
    num_blocks: int = 4096
    enable_prefix_caching: bool = True
    # [timing]
    timing: Timing = field(default_factory=Timing)
    # [output] — when ``ignore_eos`` is false, generation stops at an EOS drawn from a geometric
    # distribution with this mean (tokens); 0 means "never": output length is ``max_tokens``.
    eos_mean_tokens: float = 0.0

    def __post_init__(self) -> None:
        if self.num_blocks * self.block_size < self.max_model_len:
            raise ValueError(
                f"profile {self.name}: KV cache ({self.num_blocks} x {self.block_size} tokens) "
                f"cannot hold one sequence of max_model_len={self.max_model_len}"
            )
        if self.max_num_batched_tokens < 1 or self.max_num_seqs < 1:
            raise ValueError(f"profile {self.name}: max_num_batched_tokens and max_num_seqs must be >= 1")

    @property
    def kv_capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    def replace(self, **changes: Any) -> Profile:
        """A copy with some fields changed; timing fields may be given by name too."""
        timing_fields = {f.name for f in dataclasses.fields(Timing)}
        timing_changes = {k: changes.pop(k) for k in list(changes) if k in timing_fields}
        if timing_changes:
            changes["timing"] = dataclasses.replace(self.timing, **timing_changes)
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, name: str | None = None) -> Profile:
        engine = dict(data.get("engine", {}))
        timing = Timing(**data.get("timing", {}))
        output = data.get("output", {})
        return cls(
            name=name or data.get("name", "custom"),
            served_model_name=data.get("served_model_name", data.get("name", "custom")),
            description=data.get("description", ""),
            timing=timing,
            eos_mean_tokens=float(output.get("eos_mean_tokens", 0.0)),
            **engine,
        )


def available_profiles() -> list[str]:
    """Names of the bundled profiles."""
    folder = resources.files(__package__).joinpath(PROFILE_DIR)
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def load_profile(name_or_path: str | Path, **overrides: Any) -> Profile:
    """A bundled profile by name (``cpu-smollm2``, ``h100-llama3-8b``) or a TOML file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.exists():
        data = tomllib.loads(path.read_text())
        profile = Profile.from_dict(data, name=data.get("name", path.stem))
    else:
        resource = resources.files(__package__).joinpath(f"{PROFILE_DIR}/{name_or_path}.toml")
        if not resource.is_file():
            raise ValueError(f"unknown simulator profile {name_or_path!r}; bundled: {', '.join(available_profiles())}")
        data = tomllib.loads(resource.read_text())
        profile = Profile.from_dict(data, name=str(name_or_path))
    return profile.replace(**overrides) if overrides else profile
