"""The catalog's endpoint forms, the local-Triton plan of `noor up`, and what Triton adapters are built with."""

from __future__ import annotations


from models.catalog import BUNDLED_CATALOG, Catalog, EndpointSpec
from noor.settings import Settings
from router.backend_options import backend_options
from serving.backends import make_backend
from serving.launcher.local_triton import plan_local_triton



def test_triton_endpoint_addresses_follow_tritons_port_layout():
    assert EndpointSpec(url="http://10.0.0.6:8000").triton_addresses() == ("10.0.0.6:8001", "http://10.0.0.6:8002/metrics")
    explicit = EndpointSpec(url="http://h:9000", grpc_url="g:7", metrics_url="http://m:8/metrics")
    assert explicit.triton_addresses() == ("g:7", "http://m:8/metrics")


def test_endpoints_may_be_urls_or_tables():
    catalog = Catalog.from_dict({
        "pools": {"t": {"engine": "triton", "endpoints": ["http://a:8000", {"url": "http://b:8000", "grpc_url": "b:1"}]}},
        "models": {"m": {"pool": "t"}},
    })
    specs = catalog.pools["t"].endpoint_specs()
    assert [s.url for s in specs] == ["http://a:8000", "http://b:8000"] and specs[1].grpc_url == "b:1"


def test_local_triton_plan_serves_enabled_pools_and_drops_the_rest():
    bundled = Catalog.load(BUNDLED_CATALOG)
    catalog, pools, models = plan_local_triton(bundled, enabled_pools=["local-triton-embed"])
    assert pools == ["local-triton-embed"] and models == ["minilm"]
    assert "local-triton-llm" not in catalog.pools and "smollm2-135m-instruct-triton" not in catalog.models
    assert "all-minilm-l6-v2" in catalog.models and "smollm2-135m-instruct" in catalog.models

    catalog, pools, models = plan_local_triton(bundled, enabled_pools=["local-triton-embed", "local-triton-llm"])
    assert models == ["minilm", "smollm2"] and len(catalog.models) == len(bundled.models)

    catalog, pools, models = plan_local_triton(bundled, enabled_pools=[])
    assert pools == [] and models == [] and all(p.engine != "triton" for p in catalog.pools.values())


def test_a_deployments_triton_pool_is_not_local():
    catalog = Catalog.from_dict({
        "pools": {"remote": {"engine": "triton", "endpoints": ["http://gpu:8000"]}},
        "models": {"e": {"pool": "remote", "kind": "embedding"}},
    })
    kept, pools, models = plan_local_triton(catalog, enabled_pools=[])
    assert pools == [] and "remote" in kept.pools and "e" in kept.models


def test_triton_backends_know_their_pools_models_and_chat_templates(tmp_path):
    from models.prepare import default_cache_dir

    prepared = sorted(default_cache_dir().glob("smollm2*/tokenizer.json"))
    tok = str(prepared[-1]) if prepared else None
    catalog = Catalog.from_dict({
        "pools": {"chat": {"engine": "triton", "protocol": "http", "endpoints": ["http://t:8000"]},
                  "emb": {"engine": "triton", "endpoints": ["http://t:8000"]}},
        "models": {"c": {"pool": "chat", "engine_model": "smollm2", "tokenizer": tok},
                   "e": {"pool": "emb", "kind": "embedding", "engine_model": "minilm"}},
    })
    settings = Settings(data_dir=tmp_path, _env_file=None)
    chat_pool = catalog.pools["chat"]
    options = backend_options(catalog, chat_pool, chat_pool.endpoint_specs()[0], settings)
    backend = make_backend("triton", "http://t:8000", **options)
    assert backend.protocol == "http" and backend.models == ("smollm2",)  # health = this pool's models only
    assert backend.grpc_url == "t:8001" and backend.metrics_url == "http://t:8002/metrics"
    emb = make_backend("triton", "http://t:8000", **backend_options(catalog, catalog.pools["emb"],
                                                                      catalog.pools["emb"].endpoint_specs()[0], settings))
    assert emb.protocol == settings.triton.protocol and emb.models == ("minilm",)
    if tok:  # with SmolLM2's tokenizer: its template's default system prompt, as vLLM renders it
        prompt = backend.prompt_renderers["smollm2"]([{"role": "user", "content": "Hi"}])
        assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
        assert "<|im_start|>user\nHi<|im_end|>\n" in prompt
        assert backend.token_counters["smollm2"]("Hello world") == 2
