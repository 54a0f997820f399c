"""The KV cache as vLLM's V1 block pool manages it: fixed-size blocks, reference counts, prefix cache.

Why model it this closely: admission (does a request fit?), ``vllm:kv_cache_usage_perc`` and prefix
hits are exactly what a router sees of an engine, so the simulator must reproduce how they move.

* The cache holds ``num_blocks`` blocks of ``block_size`` tokens. A running sequence holds enough blocks
  for the tokens it has computed or is computing in this step.
* A block that became *full* is registered under the chained hash of its tokens
  (``hash(parent_hash, block_token_ids)``), so one hash names the whole prefix up to that block.
* A freed block keeps its hash and goes to the tail of the free queue; it stays a prefix-cache hit
  until it is reused. Allocation takes blocks from the head (least recently freed first) and evicts
  their hashes: LRU eviction, as in vLLM. A sequence frees its blocks last-first, so its tail blocks are
  evicted before the shared head of its prompt.
* A hit on a free cached block takes it out of the free queue (a "touch"); a hit on a block in use
  just adds a reference: two running requests share their common prefix.
* Usage is ``1 - free / total``, where cached-but-free blocks count as free — vLLM's definition.

Python's ``hash`` of a tuple of ints is the same in every process (only ``str``/``bytes`` hashing is
salted), so block hashes are stable across runs and replicas.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

#: Parent hash of a sequence's first block.
ROOT_HASH = 0x5EED


def chain_hashes(token_ids: Sequence[int], block_size: int, *, parent: int = ROOT_HASH, start: int = 0) -> list[int]:
    """Chained hashes of the full blocks of ``token_ids`` from block index ``start`` on."""
    out: list[int] = []
    n_full = len(token_ids) // block_size
    for b in range(start, n_full):
        parent = hash((parent, tuple(token_ids[b * block_size : (b + 1) * block_size])))
        out.append(parent)
    return out


class BlockPool:
    """Blocks, their reference counts and hashes, the LRU free queue and the hash → block map."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._ref = [0] * num_blocks
        self._hash: list[int | None] = [None] * num_blocks
        # Free blocks in eviction order: the first key is evicted first.
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._cached: dict[int, int] = {}
        self.evictions = 0

    # --- views -------------------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def num_cached(self) -> int:
        """Blocks that carry a prefix-cache hash (in use or free)."""
        return len(self._cached)

    def usage(self) -> float:
        return 1.0 - len(self._free) / self.num_blocks

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # --- prefix cache --------------------------------------------------------------------------------
    def match(self, hashes: Sequence[int]) -> list[int]:
        """Blocks holding the longest cached run of ``hashes`` (read-only: nothing is touched)."""
        found: list[int] = []
        cached = self._cached
        for h in hashes:
            block = cached.get(h)
            if block is None:
                break
            found.append(block)
        return found

    def register(self, block: int, block_hash: int) -> None:
        """Record that ``block`` now holds the full block named ``block_hash``.

        When another block already holds the same content (two requests computed it at once), the
        first stays the cached one and this block stays anonymous, like vLLM's duplicate handling.
        """
        if self._hash[block] is not None or block_hash in self._cached:
            return
        self._hash[block] = block_hash
        self._cached[block_hash] = block

    # --- allocation ----------------------------------------------------------------------------------
    def can_allocate(self, num_new: int, hits: Sequence[int] = ()) -> bool:
        """Whether ``num_new`` fresh blocks fit after touching ``hits`` (free hits leave the free queue)."""
        ref = self._ref
        free_hits = sum(1 for b in hits if ref[b] == 0)
        return num_new <= len(self._free) - free_hits

    def touch(self, blocks: Sequence[int]) -> None:
        """Take a reference on cached blocks found by ``match``."""
        ref, free = self._ref, self._free
        for b in blocks:
            if ref[b] == 0:
                del free[b]
            ref[b] += 1

    def allocate(self, n: int) -> list[int]:
        """Take ``n`` blocks from the head of the free queue, evicting their cached hashes."""
        if n > len(self._free):
            raise RuntimeError(f"cannot allocate {n} blocks, {len(self._free)} free")
        out: list[int] = []
        free, ref, hashes, cached = self._free, self._ref, self._hash, self._cached
        for _ in range(n):
            b, _ = free.popitem(last=False)
            h = hashes[b]
            if h is not None:
                if cached.get(h) == b:
                    del cached[h]
                hashes[b] = None
                self.evictions += 1
            ref[b] = 1
            out.append(b)
        return out

    def free(self, blocks: Sequence[int]) -> None:
        """Drop one reference on each block, last block first; unreferenced blocks become evictable."""
        ref, free = self._ref, self._free
        for b in reversed(blocks):
            ref[b] -= 1
            if ref[b] == 0:
                free[b] = None
            elif ref[b] < 0:
                raise RuntimeError(f"block {b} freed twice")

    def reset_prefix_cache(self) -> None:
        """Forget every cached hash (vLLM's ``/reset_prefix_cache``)."""
        for h, b in self._cached.items():
            self._hash[b] = None
        self._cached.clear()
