"""Counting a request's prompt tokens with the served model's own tokenizer, offline.

The count guards the context length before the engine is called and sizes limit reservations; billing
never uses it (the engine's usage does). Models without a known tokenizer are not counted (0), and the
engine remains the judge of their context length.
"""

from __future__ import annotations

import logging
from pathlib import Path

from models.catalog import Catalog, ModelSpec
from models.tokenizer import ModelEncoding, count_chat, count_text, load_encoding

log = logging.getLogger("noor.tokens")


def find_tokenizer(spec: ModelSpec, models_dir: Path) -> Path | None:
    """``spec.tokenizer`` as a path (folder or tokenizer.json), else a prepared model folder by that name."""
    if not spec.tokenizer:
        return None
    direct = Path(spec.tokenizer).expanduser()
    for candidate in (direct, direct / "tokenizer.json"):
        if candidate.is_file():
            return candidate
    prepared = sorted(models_dir.glob(f"{spec.tokenizer}*/tokenizer.json"), key=lambda p: p.stat().st_mtime)
    return prepared[-1] if prepared else None


class PromptTokenCounter:
    def __init__(self, catalog: Catalog, models_dir: Path) -> None:
        self._encodings: dict[str, ModelEncoding] = {}
        self._chat_overhead: dict[str, int] = {}
        for spec in catalog.models.values():
            path = find_tokenizer(spec, models_dir)
            if path is None:
                if spec.tokenizer:
                    log.warning("no tokenizer.json found for model %s (%s); prompts go uncounted", spec.name, spec.tokenizer)
                continue
            enc = self._encodings[spec.name] = load_encoding(path)
            # The generation prompt's tokens and the default system message's (an empty chat renders both).
            self._chat_overhead[spec.name] = count_chat(enc, [])

    def upper_bound(self, model: str, body: dict, body_bytes: int) -> int | None:
        """More tokens than the prompt can have, from the raw body's length alone (no tokenizing).

        Byte-level BPE never makes more tokens than the text has UTF-8 bytes, and a JSON string is never
        shorter than the UTF-8 text it encodes, so the body's byte length bounds every message's tokens;
        the chat template adds per message at most 4 tokens the body does not spell (``<|im_start|>``,
        ``\n``, ``<|im_end|>``, ``\n``), plus the generation prompt and the template's default system
        message. Unicode normalisation can lengthen text, and content given as parts is rendered with
        separators, so those get no bound (they are counted).
        """
        enc = self._encodings.get(model)
        if enc is None:
            return 0  # uncounted model: the engine judges the context length
        if enc.normalization:
            return None
        messages = body.get("messages")
        if not isinstance(messages, list):
            return body_bytes
        if not all(isinstance(m.get("content"), str | None) for m in messages):
            return None
        return body_bytes + 4 * len(messages) + self._chat_overhead[model]

    def __call__(self, model: str, body: dict) -> int | None:
        enc = self._encodings.get(model)
        if enc is None:
            return None
        if "messages" in body:
            return count_chat(enc, body["messages"])
        value = body.get("prompt", body.get("input"))
        if isinstance(value, str):
            return count_text(enc, value)
        if isinstance(value, list):
            if value and all(isinstance(v, int) for v in value):
                return len(value)
            return sum(count_text(enc, v) if isinstance(v, str) else len(v) if isinstance(v, list) else 0 for v in value)
        return None
