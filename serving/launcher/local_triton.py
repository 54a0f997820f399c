"""The local Triton of the embedded default: ``models/triton/`` served for the catalog's Triton pools.

``noor up`` starts one ``tritonserver`` (explicit model control: only the models the local pools name)
beside the vLLM pool and fills those pools with its addresses. Triton pools that list their own
endpoints (a deployment's engines) are left alone.
"""

from __future__ import annotations

from pathlib import Path

from models.catalog import Catalog, EndpointSpec
from serving.launcher.process import next_free_port
from serving.launcher.triton import TritonServer

MODEL_REPOSITORY = Path(__file__).resolve().parents[2] / "models" / "triton"


def plan_local_triton(catalog: Catalog, *, enabled_pools: list[str]) -> tuple[Catalog, list[str], list[str]]:
    """Which local Triton pools to serve: ``(catalog without the others, pools, Triton model names)``.

    A Triton pool with no endpoints is local; it is served when named in ``enabled_pools``, otherwise it
    is dropped with its models (a model the gateway lists must be one it can serve).
    """
    local = [n for n, p in catalog.pools.items() if p.engine == "triton" and not p.endpoints]
    serve = [n for n in local if n in enabled_pools and catalog.models_in_pool(n)]
    catalog = catalog.without_pools(n for n in local if n not in serve)
    models = sorted({m.upstream_name for n in serve for m in catalog.models_in_pool(n)})
    return catalog, serve, models


def start_local_triton(
    catalog: Catalog, pools: list[str], models: list[str], *, smollm2_dir: Path, base_port: int, log_dir: Path,
    runtime_dir: Path | None = None, enforce_eager: bool = False, host: str = "127.0.0.1",
) -> TritonServer:
    """Spawn Triton for ``models`` and point ``pools`` at it (returns at once; then ``wait_ready``)."""
    ports: list[int] = []
    for _ in range(3):  # HTTP, gRPC, metrics: each after the previous, so all three differ
        ports.append(next_free_port(host, ports[-1] + 1 if ports else base_port))
    env = {"NOOR_SMOLLM2_DIR": str(smollm2_dir)}
    if enforce_eager:
        env["NOOR_VLLM_ENFORCE_EAGER"] = "1"
    server = TritonServer(
        MODEL_REPOSITORY, http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2], host=host,
        log_path=log_dir / "tritonserver.log", runtime_dir=runtime_dir, env=env,
        model_control_mode="explicit", load_models=models,
    )
    server.start()
    endpoint = EndpointSpec(url=server.http_url, grpc_url=server.grpc_url, metrics_url=server.metrics_url)
    for name in pools:
        catalog.pools[name].endpoints = [endpoint]
    return server
