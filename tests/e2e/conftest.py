"""Real servers for end-to-end tests, started once per test session and always stopped.

One vLLM (CPU build) serves the bundled SmolLM2 under two names, so scope tests have a model A and a
model B; the gateway runs in a background thread on a free port, with its store in a temp folder.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from models.catalog import Catalog
from models.prepare import default_cache_dir, prepare_smollm2
from noor.settings import Settings
from router.app import Gateway
from router.keys import create_key
from tests.servers import ThreadedServer, free_port

MODEL_A = "smollm2-135m-instruct"
MODEL_B = "smollm2-alt"
ADMIN_TOKEN = "test-admin-token"


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    return prepare_smollm2(default_cache_dir(), progress=False)


@pytest.fixture(scope="session")
def vllm_url(smollm2_dir: Path, tmp_path_factory) -> str:
    """A real vLLM serving SmolLM2 as MODEL_A and MODEL_B.

    For development, NOOR_TEST_VLLM_URL reuses one already running (started with both names); CI
    always starts its own.
    """
    if os.environ.get("NOOR_TEST_VLLM_URL"):
        yield os.environ["NOOR_TEST_VLLM_URL"]
        return
    from serving.launcher.vllm import VLLMServer

    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    # nobind: vLLM's CPU build pins its worker to core 0 by default, which on a 2-core machine shared with
    # other engines starves it; eager mode skips minutes of compilation the tests don't need.
    server = VLLMServer(
        smollm2_dir, [MODEL_A, MODEL_B], port=free_port(), max_num_seqs=32, log_path=log,
        cpu_threads_bind="nobind", extra_args=["--enforce-eager"],
    )
    server.start()
    try:
        server.wait_healthy(float(os.environ.get("NOOR_TEST_VLLM_TIMEOUT", "900")))
        yield server.url
    finally:
        pgid = server.process.pgid
        server.stop()
    # The launcher's contract, checked on the real engine: stopping leaves no process of its group behind.
    from serving.launcher.process import group_members

    assert pgid is None or group_members(pgid) == []


def make_catalog(vllm_url: str, tokenizer: Path, *, dead_url: str) -> Catalog:
    return Catalog.from_dict({
        "pools": {
            "local-vllm": {"engine": "vllm", "endpoints": [vllm_url]},
            # A pool whose first endpoint is dead: requests must fail over to the live one.
            "flaky": {"engine": "vllm", "endpoints": [dead_url, vllm_url]},
            "dead": {"engine": "vllm", "endpoints": [dead_url]},
        },
        "models": {
            MODEL_A: {"pool": "local-vllm", "context_length": 2048, "tokenizer": str(tokenizer)},
            MODEL_B: {"pool": "local-vllm", "context_length": 2048, "tokenizer": str(tokenizer)},
            "smollm2-failover": {"pool": "flaky", "engine_model": MODEL_A, "tokenizer": str(tokenizer)},
            "smollm2-dead": {"pool": "dead", "engine_model": MODEL_A, "tokenizer": str(tokenizer)},
        },
    })


@pytest.fixture(scope="session")
def gateway(vllm_url: str, smollm2_dir: Path, tmp_path_factory):
    data = tmp_path_factory.mktemp("gateway")
    settings = Settings(data_dir=data, cache_dir=data / "cache", _env_file=None)
    settings.server.admin_token = ADMIN_TOKEN
    settings.store.usage_flush_interval_s = 0.05
    catalog = make_catalog(vllm_url, smollm2_dir / "tokenizer.json", dead_url=f"http://127.0.0.1:{free_port()}")
    gw = Gateway(settings, catalog)
    with ThreadedServer(gw.asgi()) as server:
        server.gateway = gw
        yield server


class Tenants:
    """Make tenants and keys on the gateway's own store (on its loop)."""

    def __init__(self, server: ThreadedServer) -> None:
        self.server = server
        self.store = server.gateway.store

    def create(self, name: str, models: list[str] | None = None, key_models: list[str] | None = None) -> tuple[str, str]:
        async def go():
            tenant = await self.store.create_tenant(name, allowed_models=models or ["*"])
            key, secret = await create_key(self.store, tenant.id, models=key_models)
            return tenant.id, secret

        return self.server.call(go())

    def usage(self, request_id: str, timeout: float = 10.0):
        """The usage record of one request, once the meter has flushed it."""

        async def go():
            for _ in range(int(timeout / 0.05)):
                await self.server.gateway.meter.flush()
                for r in await self.store.usage_records():
                    if r.request_id == request_id:
                        return r
                await asyncio.sleep(0.05)
            return None

        return self.server.call(go(), timeout=timeout + 5)


@pytest.fixture(scope="session")
def tenants(gateway) -> Tenants:
    return Tenants(gateway)


# --- Triton ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def triton(smollm2_dir: Path, tmp_path_factory):
    """A real Triton serving models/triton/ (SmolLM2 on vLLM with fault injection on, and MiniLM)."""
    from serving.launcher.process import group_members
    from tests.triton_servers import RunningTriton, full_triton

    if os.environ.get("NOOR_TEST_TRITON"):
        yield RunningTriton(os.environ["NOOR_TEST_TRITON"])
        return
    server = full_triton(smollm2_dir, tmp_path_factory.mktemp("triton") / "tritonserver.log")
    server.start()
    try:
        server.wait_ready(timeout_s=float(os.environ.get("NOOR_TEST_TRITON_TIMEOUT", "1200")))
        yield server
    finally:
        pgid = server.pid
        server.stop()
    assert pgid is None or group_members(pgid) == [], "Triton left processes behind"


@pytest.fixture(scope="session")
def embed_triton(tmp_path_factory):
    """An embeddings-only Triton (explicit model control) whose models a test may unload."""
    from tests.triton_servers import embeddings_triton

    server = embeddings_triton(tmp_path_factory.mktemp("embed-triton"))
    server.start()
    try:
        server.wait_ready(timeout_s=600)
        yield server
    finally:
        server.stop()
