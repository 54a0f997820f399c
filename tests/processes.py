"""Real server processes for tests: gateway replicas and the stub upstream, each in its own process group.

A gateway replica is ``uvicorn --factory router.app:create_app`` with its settings in ``NOOR_*``
environment variables, exactly as a deployment runs it; each replica gets its own data directory (its
usage spool) and shares only what the settings point it at (Redis, the upstream).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.servers import free_port

REPO = Path(__file__).resolve().parents[1]


class ServerProcess:
    def __init__(self, args: list[str], *, port: int, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.port = port
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> ServerProcess:
        self.spawn()
        return self.wait_ready(timeout)

    def spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            self.args, cwd=REPO, env=self.env, stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60.0) -> ServerProcess:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.args[:4]} exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.args[:4]} did not become healthy:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def stub_upstream(log_dir: Path, **options: float) -> ServerProcess:
    port = free_port()
    args = [sys.executable, "-m", "tests.stub_upstream", "--port", str(port)]
    for name, value in options.items():
        args += ["--" + name.replace("_", "-"), str(value)]
    return ServerProcess(args, port=port, log_path=log_dir / f"stub-{port}.log")


def write_catalog(path: Path, upstream_url: str, *, model: str, tokenizer: Path | None, engine_model: str | None = None) -> Path:
    lines = [
        "[pools.upstream]", 'engine = "vllm"', f'endpoints = ["{upstream_url}"]', "",
        f'[models."{model}"]', 'pool = "upstream"', "context_length = 2048",
    ]
    if tokenizer is not None:
        lines.append(f'tokenizer = "{tokenizer}"')
    if engine_model:
        lines.append(f'engine_model = "{engine_model}"')
    path.write_text("\n".join(lines) + "\n")
    return path


def gateway_replica(data_dir: Path, *, redis_url: str, catalog: Path, admin_token: str, **settings: str) -> ServerProcess:
    """One gateway process on ``redis_url``. ``settings``: extra NOOR_* variables (``LIMITS__WINDOW_S="5"``)."""
    port = free_port()
    env = {
        "NOOR_DATA_DIR": str(data_dir), "NOOR_CACHE_DIR": str(data_dir / "cache"), "NOOR_CATALOG_PATH": str(catalog),
        "NOOR_STORE__URL": redis_url, "NOOR_SERVER__ADMIN_TOKEN": admin_token,
        "NOOR_STORE__USAGE_FLUSH_INTERVAL_S": "0.1", "NOOR_STORE__REDIS_RETRY_AFTER_S": "0.3",
        "NOOR_ENGINE__HEALTH_INTERVAL_S": "0.5",
        # A killed Redis refuses connections at once; generous timeouts keep a CPU-starved test machine
        # from passing for an outage.
        "NOOR_STORE__REDIS_SOCKET_TIMEOUT_S": "5", "NOOR_STORE__REDIS_CONNECT_TIMEOUT_S": "2",
    }
    env.update({"NOOR_" + k: v for k, v in settings.items()})
    args = [sys.executable, "-m", "uvicorn", "--factory", "router.app:create_app", "--host", "127.0.0.1",
            "--port", str(port), "--loop", "asyncio", "--http", "router.http_server:GatewayHTTPProtocol", "--log-level", "warning",
            "--no-access-log"]
    return ServerProcess(args, port=port, log_path=data_dir / f"gateway-{port}.log", env=env)
