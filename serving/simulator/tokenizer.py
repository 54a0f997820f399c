"""A cheap, deterministic tokenizer for the simulator — stable token ids, not a real vocabulary.

The simulator needs token *ids* for two things: counting (usage, KV blocks, batched tokens) and prefix
caching (chained hashes of 16-token blocks must match whenever two prompts share a prefix). It does not
need a model's vocabulary, and loading one would tie the simulator to model files. So:

* Text is split like GPT-2's pre-tokenizer (a word with its leading space, runs of digits, runs of
  punctuation, whitespace), and any piece longer than ``MAX_PIECE`` characters (not counting its
  leading space) is cut into ``MAX_PIECE``-character chunks so that junk strings do not count as one
  token. On English prose this
  gives roughly 1.1–1.3 tokens per word, the same order as a BPE vocabulary; exact counts differ from
  any real model's tokenizer (the simulator's usage is self-consistent, not SmolLM2's or Llama's).
* Special tokens written as ``<|name|>`` are single tokens.
* A piece's id is the CRC-32 of its UTF-8 bytes (31 bits): the same text gives the same ids in every
  process, on every run — Python's ``hash`` of a string would not.

Chat messages are rendered with ChatML (``<|im_start|>role\\ncontent<|im_end|>\\n``, the template of
SmolLM2 and many others). Each message is encoded on its own and cached, which equals encoding the
whole rendered text because specials always cut the text. Generated text is made of words from a small
fixed list (``OUTPUT_WORDS``), the first without a leading space and the rest with one, so that a client
that sends the assistant's answer back in the next turn (multi-turn chat) produces exactly the token ids
the engine generated: the next turn's prompt then hits the prefix cache on the previous turn's output
blocks, as it does on a real engine.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

MAX_PIECE = 8

_SPECIAL = re.compile(r"(<\|[A-Za-z0-9_.\-]{1,40}\|>)")
_PIECE = re.compile(r"'(?:s|t|re|ve|m|ll|d)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+")

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

#: Words the simulated model "generates": short, lowercase, one token each.
OUTPUT_WORDS: tuple[str, ...] = (
    "the", "model", "serves", "tokens", "in", "a", "batch", "of", "many", "requests", "and", "each",
    "step", "adds", "one", "more", "to", "every", "running", "sequence", "while", "cache", "keeps",
    "blocks", "for", "shared", "prefixes", "so", "that", "later", "prompts", "skip", "work", "which",
    "makes", "time", "first", "token", "short", "when", "router", "picks", "replica", "with", "warm",
    "prefix", "but", "load", "matters", "too", "because", "queue", "grows", "if", "all", "traffic",
    "lands", "on", "node", "fair", "share", "per", "tenant", "stays",
)


def token_id(piece: str) -> int:
    """The id of one token piece: CRC-32 of its UTF-8 bytes, 31 bits."""
    return zlib.crc32(piece.encode("utf-8")) & 0x7FFFFFFF


def _split(piece: str) -> Iterable[str]:
    # A leading space rides along with the first chunk, as in " international" → " internat", "ional".
    lead = 1 if piece[0] == " " else 0
    if len(piece) <= MAX_PIECE + lead:
        yield piece
        return
    yield piece[: MAX_PIECE + lead]
    for i in range(MAX_PIECE + lead, len(piece), MAX_PIECE):
        yield piece[i : i + MAX_PIECE]


def pieces(text: str) -> list[str]:
    """The token pieces of ``text`` (specials kept whole)."""
    out: list[str] = []
    for part in _SPECIAL.split(text):
        if not part:
            continue
        if _SPECIAL.fullmatch(part):
            out.append(part)
            continue
        for piece in _PIECE.findall(part):
            out.extend(_split(piece))
    return out


@lru_cache(maxsize=8192)
def _encode_cached(text: str) -> tuple[int, ...]:
    return tuple(token_id(p) for p in pieces(text))


def _encode(text: str) -> tuple[int, ...]:
    if len(text) > 65536:  # do not pin huge one-off documents in the cache
        return tuple(token_id(p) for p in pieces(text))
    return _encode_cached(text)


def encode(text: str) -> list[int]:
    """Token ids of ``text``. Repeated texts (system prompts, shared documents) are cached."""
    return list(_encode(text))


def count(text: str) -> int:
    return len(encode(text))


def _content_text(content: object) -> str:
    """OpenAI message content: a string, None, or a list of parts of which text parts count."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            elif isinstance(part, str):
                texts.append(part)
        return "\n".join(texts)
    return str(content)


_START_ID = token_id(IM_START)
_END_ID = token_id(IM_END)
_NEWLINE_IDS = tuple(encode("\n"))


def encode_chat(messages: Sequence[Mapping[str, object]], *, add_generation_prompt: bool = True) -> list[int]:
    """Token ids of a chat rendered with ChatML, as a chat template would render it."""
    ids: list[int] = []
    for message in messages:
        role = str(message.get("role", "user"))
        ids.append(_START_ID)
        ids.extend(_encode(role + "\n" + _content_text(message.get("content"))))
        ids.append(_END_ID)
        ids.extend(_NEWLINE_IDS)
    if add_generation_prompt:
        ids.append(_START_ID)
        ids.extend(_encode("assistant\n"))
    return ids


class OutputVocabulary:
    """Ids and texts of generated tokens: word ``k`` of a sequence is ``OUTPUT_WORDS[(offset + k) % n]``.

    The first generated word has no leading space (so a client that strips the answer still sends back
    the same token), every later one has one.
    """

    def __init__(self, words: Sequence[str] = OUTPUT_WORDS) -> None:
        self.words = tuple(words)
        self.first_ids = tuple(token_id(w) for w in self.words)
        self.first_texts = self.words
        self.next_texts = tuple(" " + w for w in self.words)
        self.next_ids = tuple(token_id(t) for t in self.next_texts)
        for w in self.words:  # each word must be exactly one piece, with and without the space
            assert pieces(w) == [w] and pieces(" " + w) == [" " + w], w

    def __len__(self) -> int:
        return len(self.words)

    def token(self, offset: int, k: int) -> tuple[int, str]:
        """The id and text of the ``k``-th generated token of a sequence whose word offset is ``offset``."""
        i = (offset + k) % len(self.words)
        if k == 0:
            return self.first_ids[i], self.first_texts[i]
        return self.next_ids[i], self.next_texts[i]


OUTPUT_VOCABULARY = OutputVocabulary()
