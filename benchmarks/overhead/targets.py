"""The two gateways under test, set up against the same stub: Noor and LiteLLM's proxy.

Noor runs with everything a production request meets: a tenant with limits set and an API key in the
store (SQLite, or Redis when ``store_url`` says so — then the Redis limiter enforces the limits with its
round trip), metering on, prompt tokens counted with SmolLM2's tokenizer when its prepared folder is
on this machine. LiteLLM is installed into its own venv (never into Noor's) and given the stub as an
OpenAI-compatible deployment, with a master key as its authentication.
"""

from __future__ import annotations

import asyncio
import os
import time
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MODEL = "bench-model"
ADMIN_TOKEN = "bench-admin-token"
LITELLM_KEY = "sk-litellm-bench-master-key"
DEFAULT_LITELLM_VENV = Path.home() / ".cache" / "noor" / "bench" / "litellm-venv"

#: High enough never to refuse a benchmark request, but set, so the limiter does its real work (the reserve
#: script over both windows, the settle giving unused tokens back, the prompt counted for TPM). A
#: concurrency cap (``--concurrency-cap``) adds one Redis round trip at the end of each response: the
#: slot must be free before the client sees the end.
BENCH_LIMITS = {"requests_per_minute": 10**9, "tokens_per_minute": 10**12}


@dataclass
class Target:
    name: str
    cmd: list[str]
    env: dict[str, str]
    url: str
    key: str
    ready_path: str
    ready_headers: dict[str, str]


def find_tokenizer() -> Path | None:
    """The prepared SmolLM2 folder's tokenizer.json, if this machine has one (no download)."""
    root = Path.home() / ".cache" / "noor" / "models"
    found = sorted(root.glob("smollm2-135m-instruct*/tokenizer.json"))
    return found[-1] if found else None


async def _make_tenant(store_url: str, limits: dict) -> str:
    from router.keys import create_key
    from router.store import open_store
    from router.store.base import TenantLimits

    store = open_store(store_url)
    try:
        tenant = await store.create_tenant(f"bench-{os.getpid()}-{time.monotonic_ns()}", allowed_models=["*"],
                                           limits=TenantLimits(**limits))
        _, secret = await create_key(store, tenant.id, name="bench")
        return secret
    finally:
        await store.close()


def noor(stub_urls: dict[str, str], data_dir: Path, port: int, *, store_url: str | None = None, workers: int = 1,
         server: str = "uvicorn", tokenizer: Path | None = None, extra_env: dict[str, str] | None = None,
         limits: dict | None = None) -> Target:
    """Noor serving ``stub_urls`` (model name → stub URL, one pool each) on ``port``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (model, url) in enumerate(stub_urls.items()):
        lines += [f"[pools.stub{i}]", 'engine = "vllm"', f'endpoints = ["{url}"]', "",
                  f'[models."{model}"]', f'pool = "stub{i}"', "context_length = 2048"]
        if tokenizer is not None:
            lines.append(f'tokenizer = "{tokenizer}"')
        lines.append("")
    catalog = data_dir / "catalog.toml"
    catalog.write_text("\n".join(lines))
    store_url = store_url or f"sqlite:///{data_dir / 'noor.db'}"
    key = asyncio.run(_make_tenant(store_url, BENCH_LIMITS if limits is None else limits))
    env = {
        "NOOR_CATALOG_PATH": str(catalog), "NOOR_DATA_DIR": str(data_dir), "NOOR_STORE__URL": store_url,
        "NOOR_SERVER__ADMIN_TOKEN": ADMIN_TOKEN, "NOOR_SERVER__HOST": "127.0.0.1", "NOOR_SERVER__PORT": str(port),
        "NOOR_TELEMETRY__ACCESS_LOG": "false", **(extra_env or {}),
    }
    if server == "uvicorn":  # what production runs
        cmd = [sys.executable, "-m", "noor", "serve", "--workers", str(workers)]
    elif server == "granian":  # the alternative measured against it (granian from PyPI)
        cmd = [sys.executable, "-m", "granian", "--interface", "asgi", "--factory", "--loop", "uvloop", "--http", "1",
               "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers), "--backpressure", "100000",
               "--log-level", "warning", "router.app:create_app"]
    else:
        raise ValueError(f"unknown server {server!r}")
    return Target("noor", cmd, env, f"http://127.0.0.1:{port}", key, "/ready", {})


def mini(stub_url: str, port: int) -> Target:
    """The minimal raw-ASGI + aiohttp proxy (mini_proxy.py): the floor for any Python gateway."""
    here = Path(__file__).resolve().parent
    cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(here), "mini_proxy:app", "--host", "127.0.0.1",
           "--port", str(port), "--loop", "uvloop", "--http", "httptools", "--log-level", "warning", "--no-access-log"]
    return Target("mini", cmd, {"UPSTREAM": stub_url}, f"http://127.0.0.1:{port}", "", "/health", {})


def ensure_litellm(venv: Path = DEFAULT_LITELLM_VENV, spec: str = "litellm[proxy]") -> Path:
    """LiteLLM's proxy in its own venv (created and installed from PyPI on first use)."""
    exe = venv / "bin" / "litellm"
    if not exe.exists():
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", spec], check=True)
    return exe


def litellm_version(venv: Path = DEFAULT_LITELLM_VENV) -> str:
    out = subprocess.run([str(venv / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                         capture_output=True, text=True)
    return out.stdout.strip() or "?"


def litellm(stub_url: str, data_dir: Path, port: int, *, venv: Path = DEFAULT_LITELLM_VENV, workers: int = 1) -> Target:
    """LiteLLM's proxy with the stub as its one deployment and a master key."""
    exe = ensure_litellm(venv)
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {stub_url}/v1\n"
        "      api_key: sk-stub\n"
        "general_settings:\n"
        f"  master_key: {LITELLM_KEY}\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "  set_verbose: false\n"
    )
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False"}
    cmd = [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", str(workers)]
    return Target("litellm", cmd, env, f"http://127.0.0.1:{port}", LITELLM_KEY, "/health/liveliness", {})
