"""Real Triton servers for end-to-end tests (started by fixtures in tests/e2e/conftest.py).

One serves the whole ``models/triton/`` repository (SmolLM2 on vLLM and MiniLM), with the smollm2
model's fault injection switched on so a test can make it fail mid-stream; vLLM's start dominates
(minutes on a small, busy CPU host), so it is started once per session and shared by the adapter's
and the gateway's tests. A second one is embeddings-only (seconds to start), with explicit model
control, so a test can unload a model under a pool.
"""

from __future__ import annotations

import shutil
import urllib.request
from pathlib import Path

from serving.launcher.triton import TritonServer
from tests.servers import free_port

REPO = Path(__file__).resolve().parents[1] / "models" / "triton"


class RunningTriton:
    """A Triton someone already started (NOOR_TEST_TRITON="http_port,grpc_port,metrics_port,log_path"),
    for iterating on the tests without waiting minutes for vLLM; it must run with the same env."""

    def __init__(self, spec: str) -> None:
        http, grpc, metrics, log = spec.split(",")
        self.http_url, self.grpc_url = f"http://127.0.0.1:{http}", f"127.0.0.1:{grpc}"
        self.metrics_url, self.log_path = f"http://127.0.0.1:{metrics}/metrics", Path(log)


def full_triton(model_dir: Path, log: Path) -> TritonServer:
    return TritonServer(
        REPO,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        log_path=log,
        env={
            "NOOR_SMOLLM2_DIR": str(model_dir),
            "NOOR_TRITON_FAULT_INJECTION": "1",
            # torch.compile's warm-up costs minutes here; eager decoding is fast enough for tests.
            "NOOR_VLLM_ENFORCE_EAGER": "1",
            "VLLM_CPU_KVCACHE_SPACE": "1",
        },
    )


def embeddings_triton(folder: Path) -> TritonServer:
    """Two copies of minilm (``minilm``, ``minilm_b``), so one pool's model can go away while the
    other's stays. (Kept apart from the vLLM server: reloading a model there shortly before shutdown
    has stalled the other model's unload.)"""
    repo = folder / "repo"
    shutil.copytree(REPO / "minilm", repo / "minilm")
    shutil.copytree(REPO / "minilm", repo / "minilm_b")
    config = repo / "minilm_b" / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "minilm"', 'name: "minilm_b"'))
    return TritonServer(
        repo,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        log_path=folder / "tritonserver.log",
        model_control_mode="explicit",
    )


def repository_call(server, model: str, action: str) -> None:
    """Load or unload a model through Triton's repository API (explicit model control)."""
    url = f"{server.http_url}/v2/repository/models/{model}/{action}"
    urllib.request.urlopen(urllib.request.Request(url, data=b"{}", method="POST"), timeout=600).read()


def metric(server, name: str, model: str) -> float:
    """Sum of one Triton metric's samples for ``model``."""
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and f'model="{model}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total
