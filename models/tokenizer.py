"""Exact, offline token counts for the models we serve, with tiktoken.

Why: the gateway must count prompt tokens before a request reaches an engine (to reserve a tenant's
token budget, to pick an endpoint, to bill when an engine reports no usage). ``tiktoken`` is fast
(≈8× HF ``tokenizers`` here) but only ships OpenAI's encodings, which it downloads. Byte-level BPE
tokenizers (GPT-2 style: SmolLM2, Llama 3, Qwen 2) carry everything tiktoken needs in their own
``tokenizer.json``: invert GPT-2's bytes→unicode map to get each token's bytes, use the vocabulary ids
as merge ranks, use the same pre-tokenizer regex, and register the added tokens as special tokens. The
ids then equal HF ``tokenizers``' ids (checked in ``tests/unit/test_tokenizer.py``).

Text that spells a special token (``<|im_end|>``) is counted as that special token, because that is
what the engine's HF tokenizer does with it; tiktoken is told to allow it rather than raise.

Known differences from HF, all on text nobody sends in practice: a byte the vocabulary lacks (for
SmolLM2: the control characters U+0004, U+0006, U+0013, U+0014, U+0016, U+001D and characters whose
UTF-8 starts with 0xF1/0xF2) is dropped by HF (no ``unk``); here it still separates its neighbours, so
``"!\\x04!"`` counts 2 where HF says 1. Added tokens with ``lstrip``/``rstrip`` flags are matched
literally (SmolLM2 has none).
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import tiktoken

#: GPT-2's pre-tokenizer regex (HF ``ByteLevel(use_regex=True)``).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

#: ``Sequence[Digits(individual_digits=True), ByteLevel(use_regex=True)]`` (SmolLM, StarCoder) as ONE
#: regex: every digit stands alone, and a digit ends the piece before it, so whitespace in front of a
#: digit is matched like whitespace at the end of the text (``(?![^\s\p{N}])`` instead of ``(?!\S)``).
DIGITS_GPT2_PATTERN = r"""\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"


class ModelEncoding(tiktoken.Encoding):
    """A tiktoken ``Encoding`` built from a model's ``tokenizer.json``, plus what counting needs.

    ``hf_vocab_size``: ids at or above it stand for bytes the model's vocabulary lacks (HF drops them).
    ``default_system_prompt``: what the model's chat template inserts when a chat has no system message.
    ``normalization``: a Unicode normal form the tokenizer applies before splitting (Qwen 2: NFC).
    """

    def __init__(
        self,
        name: str,
        *,
        pat_str: str,
        mergeable_ranks: dict[bytes, int],
        special_tokens: dict[str, int],
        hf_vocab_size: int,
        default_system_prompt: str | None = None,
        normalization: str | None = None,
    ) -> None:
        super().__init__(name, pat_str=pat_str, mergeable_ranks=mergeable_ranks, special_tokens=special_tokens)
        self.hf_vocab_size = hf_vocab_size
        self.has_byte_gaps = max(mergeable_ranks.values()) >= hf_vocab_size
        self.default_system_prompt = default_system_prompt
        self.normalization = normalization
        # Text with no special-token text in it (nearly all of it) is encoded without tiktoken's
        # special-token handling, which rebuilds and hands over the set of specials on every call
        # (10.0 → 6.4 µs for a one-line message here).
        specials = sorted(special_tokens, key=len, reverse=True)
        self.find_special = re.compile("|".join(map(re.escape, specials))).search if specials else None
        # count_chat counts ChatML piece by piece (text between special tokens is encoded independently),
        # which needs <|im_start|> and <|im_end|> to be special tokens here.
        self.piece_counts: dict[str, int] | None = (
            {} if IM_START in special_tokens and IM_END in special_tokens else None
        )
        self.newline_tokens = count_text(self, "\n") if self.piece_counts is not None else 0
        self.assistant_tokens = count_text(self, "assistant\n") if self.piece_counts is not None else 0


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode characters (as in HF and openai/gpt-2)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def load_encoding(tokenizer_json: Path) -> ModelEncoding:
    """Build (once per path) a tiktoken encoding equal to the HF tokenizer in ``tokenizer_json``.

    Raises ``ValueError`` for tokenizers this translation does not cover (not byte-level BPE, or a
    pre-tokenizer/normaliser other than the GPT-2, digits+GPT-2 or single-regex-split families).
    """
    return _load_encoding(Path(tokenizer_json).expanduser().resolve())


@functools.lru_cache(maxsize=32)
def _load_encoding(path: Path) -> ModelEncoding:
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or model.get("continuing_subword_prefix") or model.get(
        "end_of_word_suffix"
    ):
        raise ValueError(f"{path}: not a byte-level BPE tokenizer tiktoken can reproduce")
    pattern = _pattern(data.get("pre_tokenizer"), path)
    normalization = _normalization(data.get("normalizer"), path)

    added = {tok["content"]: int(tok["id"]) for tok in data.get("added_tokens", [])}
    added_ids = set(added.values())
    decoder = {ch: b for b, ch in bytes_to_unicode().items()}
    ranks: dict[bytes, int] = {}
    for token, token_id in model["vocab"].items():
        if token_id in added_ids:
            continue
        try:
            ranks[bytes(decoder[ch] for ch in token)] = int(token_id)
        except KeyError:
            raise ValueError(f"{path}: vocabulary entry {token!r} is not byte-level encoded") from None
    hf_vocab_size = max([*ranks.values(), *added_ids]) + 1
    # tiktoken needs every single byte to have a rank; give the ones the vocabulary lacks ids past its end.
    next_id = hf_vocab_size
    for byte in range(256):
        if bytes([byte]) not in ranks:
            ranks[bytes([byte])] = next_id
            next_id += 1

    return ModelEncoding(
        f"hf:{path.parent.name}",
        pat_str=pattern,
        mergeable_ranks=ranks,
        special_tokens=added,
        hf_vocab_size=hf_vocab_size,
        default_system_prompt=_default_system_prompt(_chat_template(path.parent)),
        normalization=normalization,
    )


def _pattern(pre: Mapping[str, Any] | None, path: Path) -> str:
    parts = list(pre.get("pretokenizers", [])) if pre and pre.get("type") == "Sequence" else [pre] if pre else []
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True) and not parts[0].get("add_prefix_space"):
        return GPT2_PATTERN
    if (
        kinds == ["Digits", "ByteLevel"]
        and parts[0].get("individual_digits")
        and parts[1].get("use_regex", True)
        and not parts[1].get("add_prefix_space")
    ):
        return DIGITS_GPT2_PATTERN
    if (
        kinds == ["Split", "ByteLevel"]
        and "Regex" in (parts[0].get("pattern") or {})
        and parts[0].get("behavior") == "Isolated"
        and not parts[0].get("invert")
        and not parts[1].get("use_regex", True)
        and not parts[1].get("add_prefix_space")
    ):
        return parts[0]["pattern"]["Regex"]
    raise ValueError(f"{path}: unsupported pre-tokenizer {kinds}")


def _normalization(normalizer: Mapping[str, Any] | None, path: Path) -> str | None:
    if normalizer is None:
        return None
    if normalizer.get("type") in {"NFC", "NFD", "NFKC", "NFKD"}:
        return normalizer["type"]
    raise ValueError(f"{path}: unsupported normalizer {normalizer.get('type')}")


def _chat_template(folder: Path) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text(encoding="utf-8")
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) else None


def _default_system_prompt(template: str | None) -> str | None:
    """The system message a ChatML template adds when the chat has none (SmolLM2, Qwen 2 do).

    Found by rendering the template once for a chat with a single user message and reading what
    comes before it, rather than by parsing the template's source.
    """
    if not template:
        return None
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        probe = "\x00noor-probe\x00"
        rendered = env.from_string(template).render(
            messages=[{"role": "user", "content": probe}], add_generation_prompt=False, bos_token="", eos_token=""
        )
    except Exception:  # noqa: BLE001 - a template we cannot render just has no default we know of
        return None
    before, found, _ = rendered.partition(f"{IM_START}user\n{probe}")
    if not found:
        return None
    match = re.fullmatch(re.escape(IM_START) + r"system\n(.*)" + re.escape(IM_END) + r"\n", before, re.S)
    return match.group(1) if match else None


def count_text(enc: tiktoken.Encoding, text: str) -> int:
    """Tokens in ``text`` as the model's tokenizer counts them (special-token text counts as special)."""
    normalization = getattr(enc, "normalization", None)
    if normalization:
        text = unicodedata.normalize(normalization, text)
    find_special = getattr(enc, "find_special", False)
    if find_special is None or (find_special and find_special(text) is None):
        ids = enc.encode_ordinary(text)
    else:
        ids = enc.encode(text, allowed_special="all")
    if getattr(enc, "has_byte_gaps", False):
        limit = enc.hf_vocab_size  # type: ignore[attr-defined]
        return sum(1 for i in ids if i < limit)
    return len(ids)


def message_text(content: Any) -> str:
    """A message's content as the text a string-only chat template sees.

    OpenAI allows ``content`` to be a list of parts; vLLM joins the text parts with newlines for
    templates that expect a string, and we do the same. Non-text parts (images, audio) add nothing here.
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Iterable):
        texts = [
            str(part.get("text", ""))
            for part in content
            if isinstance(part, Mapping) and part.get("type", "text") == "text"
        ]
        return "\n".join(texts)
    return str(content)


def render_chatml(messages: list[dict], *, default_system_prompt: str | None = None, add_generation_prompt: bool = True) -> str:
    """The ChatML prompt text for ``messages``: ``<|im_start|>role\\ncontent<|im_end|>\\n`` each."""
    parts: list[str] = []
    if default_system_prompt is not None and (not messages or messages[0].get("role") != "system"):
        parts.append(f"{IM_START}system\n{default_system_prompt}{IM_END}\n")
    for message in messages:
        parts.append(f"{IM_START}{message.get('role', 'user')}\n{message_text(message.get('content'))}{IM_END}\n")
    if add_generation_prompt:
        parts.append(f"{IM_START}assistant\n")
    return "".join(parts)


def count_chat(enc: tiktoken.Encoding, messages: list[dict]) -> int:
    """Prompt tokens of a chat as the engine will template it (ChatML, with the generation prompt).

    Exact for ChatML models such as SmolLM2 when messages carry plain roles and text; an estimate for
    tool calls, names and non-ChatML templates. Adds the template's default system prompt when the
    chat has no system message and the encoding knows one (``load_encoding`` reads it from the model's
    chat template).

    Counted piece by piece: ``<|im_start|>`` and ``<|im_end|>`` are special tokens, and tiktoken encodes
    the text between special tokens independently, so the prompt's count is the sum of its pieces'
    (``role\ncontent`` per message, ``\n`` between messages) plus the special tokens. The pieces that
    repeat from request to request — the system prompt and the conversation so far, which every turn
    sends again — are remembered; only the newest message is tokenized afresh.
    """
    system = getattr(enc, "default_system_prompt", None)
    cache: dict[str, int] | None = getattr(enc, "piece_counts", None)
    if cache is None or getattr(enc, "normalization", None):
        return count_text(enc, render_chatml(messages, default_system_prompt=system))
    pieces: list[str] = []
    if system is not None and (not messages or messages[0].get("role") != "system"):
        pieces.append(f"system\n{system}")
    pieces.extend(f"{m.get('role', 'user')}\n{message_text(m.get('content'))}" for m in messages)
    last = len(pieces) - 1 if messages else len(pieces)  # the newest message: not worth remembering
    total = len(pieces) * (2 + enc.newline_tokens) + 1 + enc.assistant_tokens  # specials, "\n"s, generation prompt
    for i, piece in enumerate(pieces):
        n = cache.get(piece)
        if n is None:
            n = count_text(enc, piece)
            if i != last and len(piece) <= _PIECE_CACHE_MAX_CHARS:
                if len(cache) >= _PIECE_CACHE_ENTRIES:
                    del cache[next(iter(cache))]  # the oldest
                cache[piece] = n
        total += n
    return total


#: Bounds of each encoding's memory of counted chat pieces (system prompts, earlier turns).
_PIECE_CACHE_ENTRIES = 4096
_PIECE_CACHE_MAX_CHARS = 64 * 1024
