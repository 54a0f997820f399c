"""Chained hashes of a prompt's fixed-size blocks: the key of prefix affinity.

Two requests that share their first k blocks share their first k hashes, and block i's hash names the
whole prefix up to it (``h_i = hash(h_{i-1}, block_i)``), so one dictionary lookup per block finds how
much of a prompt an endpoint has seen. The rendered text is hashed, not token ids: the gateway then
needs no tokenizer on the hot path, and equal text gives equal tokens for one model. Only full blocks
count (an engine caches only full blocks too), and only the first ``max_blocks``: affinity is decided
by the head of the prompt, and the cost per request stays bounded.

Python's ``str`` hash is salted per process, which is fine: the table lives in this process.
"""

from __future__ import annotations

from router.context import RequestContext

_ROOT = 0x5EED


def render_prompt(body: dict) -> str:
    """The prompt as one string: chat messages (role and text, in order) or a completion prompt."""
    messages = body.get("messages")
    if isinstance(messages, list):
        parts: list[str] = []
        for m in messages:
            if not isinstance(m, dict):
                continue
            content = m.get("content")
            if isinstance(content, list):  # content parts: keep the text ones
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            parts.append(f"<{m.get('role', '')}>{content if isinstance(content, str) else ''}")
        return "\x1e".join(parts)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        return "\x1e".join(p if isinstance(p, str) else repr(p) for p in prompt)
    return ""


def block_hashes(text: str, block_chars: int, max_blocks: int) -> list[int]:
    """Chained hashes of the full ``block_chars``-long blocks of ``text`` (at most ``max_blocks``)."""
    n = min(len(text) // block_chars, max_blocks)
    out = [0] * n
    h = _ROOT
    for i in range(n):
        start = i * block_chars
        h = hash((h, text[start : start + block_chars]))
        out[i] = h
    return out


def prompt_hashes(ctx: RequestContext, block_chars: int, max_blocks: int) -> list[int]:
    """The request's block hashes, computed once and kept on the context (retries and re-picks reuse them)."""
    hashes = ctx.prompt_blocks
    if hashes is None:
        hashes = ctx.prompt_blocks = block_hashes(render_prompt(ctx.body), block_chars, max_blocks)
    return hashes
