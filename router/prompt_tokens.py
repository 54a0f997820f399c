"""Counting a request's prompt tokens with the served model's own tokenizer, offline.

The count guards the context length before the engine is called and sizes limit reservations; billing
never uses it (the engine's usage does). Models without a known tokenizer are not counted (0), and the
engine remains the judge of their context length.
"""

from __future__ import annotations

import logging
from pathlib import Path

from models.catalog import Catalog, ModelSpec
from models.tokenizer import count_chat, count_text, load_encoding

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
        self._encodings = {}
        for spec in catalog.models.values():
            path = find_tokenizer(spec, models_dir)
            if path is None:
                if spec.tokenizer:
                    log.warning("no tokenizer.json found for model %s (%s); prompts go uncounted", spec.name, spec.tokenizer)
                continue
            self._encodings[spec.name] = load_encoding(path)

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
