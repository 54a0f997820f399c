"""What each engine adapter is built with, from the catalog and the engine settings.

vLLM speaks OpenAI and needs only timeouts. Triton speaks tensors: its adapter needs the endpoint's
gRPC and metrics addresses, the Triton models that must be ready for the endpoint to count as healthy
(the models of *this* pool, so one model's outage takes down only its own pool), and, per chat model,
the served model's chat template and tokenizer — so the prompt Triton's model sees is the one vLLM would
render, and usage can be counted where a model reports none.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from models.catalog import Catalog, EndpointSpec, PoolSpec
from models.tokenizer import count_text, load_encoding, render_chatml
from noor.settings import Settings
from router.prompt_tokens import find_tokenizer


def backend_options(catalog: Catalog, pool: PoolSpec, endpoint: EndpointSpec, settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``make_backend(pool.engine, endpoint.url, **options)``."""
    eng = settings.engine
    if pool.engine in ("vllm", "sim"):
        return {"connect_timeout_s": eng.connect_timeout_s, "read_timeout_s": eng.read_timeout_s,
                "health_timeout_s": eng.health_timeout_s}
    if pool.engine == "triton":
        return _triton_options(catalog, pool, endpoint, settings)
    return {}


def _triton_options(catalog: Catalog, pool: PoolSpec, endpoint: EndpointSpec, settings: Settings) -> dict[str, Any]:
    eng = settings.engine
    grpc_url, metrics_url = endpoint.triton_addresses()
    renderers, counters = {}, {}
    models = catalog.models_in_pool(pool.name)
    for spec in models:
        path = find_tokenizer(spec, settings.models_dir)
        if path is None or spec.kind != "chat":
            continue
        enc = load_encoding(path)
        renderers[spec.upstream_name] = partial(render_chatml, default_system_prompt=enc.default_system_prompt)
        counters[spec.upstream_name] = partial(count_text, enc)
    return {
        "grpc_url": grpc_url,
        "metrics_url": metrics_url,
        "protocol": pool.protocol or settings.triton.protocol,
        "models": sorted({m.upstream_name for m in models}),
        "prompt_renderers": renderers,
        "token_counters": counters,
        "default_max_tokens": pool.default_max_tokens,
        "timeout_s": eng.read_timeout_s,
        "connect_timeout_s": eng.connect_timeout_s,
        "health_timeout_s": eng.health_timeout_s,
    }
