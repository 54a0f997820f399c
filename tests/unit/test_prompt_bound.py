"""Validation counts prompt tokens only when the context-length check needs the count, and the check
decides exactly as if every prompt were counted.

The shortcut rests on ``PromptTokenCounter.upper_bound``: no prompt may have more tokens than the bound
computed from its request body's length. Checked here on every text of the tokenizer test and on
adversarial ones (special-token text, escapes, multi-byte characters), with SmolLM2's real tokenizer.
"""

from __future__ import annotations

import orjson
import pytest

from models.catalog import Catalog
from models.prepare import default_cache_dir, prepare_smollm2
from router.context import RequestContext
from router.errors import OpenAIError
from router.prompt_tokens import PromptTokenCounter
from router.store.base import Identity, TenantLimits
from router.validation import validate
from tests.unit.test_tokenizer import TEXTS

IDENTITY = Identity(key_id="k", tenant_id="t", tenant_name="t", models=frozenset({"*"}), limits=TenantLimits())


@pytest.fixture(scope="module")
def counter_and_catalog():
    model_dir = prepare_smollm2(default_cache_dir(), progress=False)
    catalog = Catalog.from_dict({
        "pools": {"p": {}},
        "models": {"m": {"pool": "p", "context_length": 256, "tokenizer": str(model_dir / "tokenizer.json")}},
    })
    return PromptTokenCounter(catalog, model_dir.parent), catalog


def _bodies():
    hard = ["<|im_start|>" * 20, "<|im_end|>\n" * 15, '"\\' * 40, "\u0000\u0001\u001f" * 10, "é" * 60, "😀" * 40]
    for text in [*TEXTS, *hard]:
        yield {"model": "m", "messages": [{"role": "user", "content": text}]}
        yield {"model": "m", "messages": [{"role": "system", "content": text}, {"role": "user", "content": text[::-1]}]}
        yield {"model": "m", "prompt": text}


@pytest.mark.parametrize("ensure_ascii", [False, True])
def test_no_prompt_counts_more_than_its_bound(counter_and_catalog, ensure_ascii):
    counter, _ = counter_and_catalog
    import json

    for body in _bodies():
        raw = json.dumps(body, ensure_ascii=ensure_ascii).encode() if ensure_ascii else orjson.dumps(body)
        bound = counter.upper_bound("m", body, len(raw))
        assert bound is not None and counter("m", body) <= bound, body


def test_parts_content_has_no_bound_and_is_counted(counter_and_catalog):
    counter, catalog = counter_and_catalog
    body = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    assert counter.upper_bound("m", body, 100) is None
    ctx = RequestContext(request_id="r", kind="chat", body=body)
    validate(ctx, IDENTITY, catalog, counter, body_bytes=100)
    assert ctx._prompt_tokens == counter("m", body)  # counted during validation, not left for later


def _validate(counter, catalog, body: dict, *, with_bytes: bool) -> RequestContext:
    ctx = RequestContext(request_id="r", kind="chat" if "messages" in body else "completion", body=dict(body))
    validate(ctx, IDENTITY, catalog, counter, body_bytes=len(orjson.dumps(body)) if with_bytes else None)
    return ctx


@pytest.mark.parametrize("words", [1, 20, 60, 100, 200, 400])
@pytest.mark.parametrize("max_tokens", [None, 1, 50, 200])
def test_lazy_and_eager_validation_agree(counter_and_catalog, words, max_tokens):
    """Same refusals, same prompt_tokens, same max_tokens, whether or not counting was skipped."""
    counter, catalog = counter_and_catalog
    body: dict = {"model": "m", "messages": [{"role": "user", "content": "hello " * words}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    outcomes = []
    for with_bytes in (True, False):
        try:
            ctx = _validate(counter, catalog, body, with_bytes=with_bytes)
            outcomes.append(("ok", ctx.prompt_tokens, ctx.max_tokens))
        except OpenAIError as exc:
            outcomes.append(("refused", exc.status, exc.body()))
    assert outcomes[0] == outcomes[1]


def test_small_request_is_not_counted_until_read(counter_and_catalog):
    counter, catalog = counter_and_catalog
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
    ctx = _validate(counter, catalog, body, with_bytes=True)
    assert ctx._prompt_tokens is None  # nothing needed the count yet
    assert ctx.prompt_tokens == counter("m", body) and ctx.max_tokens == 10
