"""Start local vLLM OpenAI servers for a prepared model folder, and stop them cleanly.

Why a launcher of our own: ``noor up`` and the end-to-end tests need real engines on this machine
and on GPU hosts with the same code. vLLM is started as ``python -m vllm.entrypoints.openai.api_server``
(the ``vllm`` console script is broken in the CPU build), one process group per replica, so stopping
also ends vLLM's engine-core child. On CPU hosts the KV cache size comes from
``VLLM_CPU_KVCACHE_SPACE``; on GPU hosts each replica gets one GPU through ``CUDA_VISIBLE_DEVICES``
and a fixed KV cache (``--kv-cache-memory-bytes``) instead of 90 % of the card.

The servers run offline (``HF_HUB_OFFLINE``): the model folder is local, and nothing may be fetched
from a hub at run time.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from serving.launcher.process import ManagedProcess

log = logging.getLogger(__name__)

GIB = 1 << 30

#: Health checks go straight to the local engine, never through an HTTP(S)_PROXY from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EngineStartError(RuntimeError):
    """The engine exited, or did not become healthy in time. The message ends with its log's tail."""


class VLLMServer:
    """One vLLM OpenAI-compatible server process serving one model folder under one or more names."""

    def __init__(
        self,
        model_dir: Path,
        served_model_names: list[str],
        *,
        host: str = "127.0.0.1",
        port: int,
        max_model_len: int = 2048,
        kv_cache_gib: int = 2,
        max_num_seqs: int = 64,
        extra_args: Sequence[str] = (),
        log_path: Path | None = None,
        gpu: str | None = None,
        cpu_threads_bind: str | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        """``cpu_threads_bind`` sets ``VLLM_CPU_OMP_THREADS_BIND`` on CPU hosts: None keeps vLLM's
        "auto", which pins the worker's threads to all CPUs but one (on a 2-CPU machine: CPU 0, for
        every vLLM started there); "nobind" lets the OS place them, better where engines share a
        small machine; "0-3" or similar pins explicitly. ``extra_env`` is added to the environment last.
        """
        if not served_model_names:
            raise ValueError("served_model_names must name the model at least once")
        self.model_dir = Path(model_dir)
        self.served_model_names = list(served_model_names)
        self.host = host
        self.port = int(port)
        self.max_model_len = max_model_len
        self.kv_cache_gib = kv_cache_gib
        self.max_num_seqs = max_num_seqs
        self.extra_args = list(extra_args)
        self.gpu = gpu
        self.cpu_threads_bind = cpu_threads_bind
        self.extra_env = dict(extra_env or {})
        self.process = ManagedProcess(self.command(), env=self.environment(), log_path=log_path,
                                      name=f"vllm-{self.port}")

    # -- how it is started -------------------------------------------------------------------------

    def command(self) -> list[str]:
        cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir),
            "--served-model-name", *self.served_model_names,
            "--host", self.host,
            "--port", str(self.port),
            "--max-model-len", str(self.max_model_len),
            "--max-num-seqs", str(self.max_num_seqs),
        ]
        if self.gpu is not None:
            cmd += ["--kv-cache-memory-bytes", str(int(self.kv_cache_gib * GIB))]
        return cmd + self.extra_args

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            VLLM_NO_USAGE_STATS="1",
            DO_NOT_TRACK="1",
        )
        if self.gpu is None:
            env["VLLM_CPU_KVCACHE_SPACE"] = str(self.kv_cache_gib)
            if self.cpu_threads_bind is not None:
                env["VLLM_CPU_OMP_THREADS_BIND"] = self.cpu_threads_bind
        else:
            env["CUDA_VISIBLE_DEVICES"] = self.gpu
        env.update(self.extra_env)
        return env

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def log_path(self) -> Path | None:
        return self.process.log_path

    def start(self) -> None:
        log.info("starting vLLM for %s on %s (%s)", self.model_dir.name, self.url,
                 f"GPU {self.gpu}" if self.gpu is not None else "CPU")
        self.process.start()

    def running(self) -> bool:
        return self.process.running()

    def healthy(self, timeout_s: float = 2.0) -> bool:
        """One GET /health: True on 200."""
        try:
            with _DIRECT.open(f"{self.url}/health", timeout=timeout_s) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def wait_healthy(self, timeout_s: float, progress: bool = False) -> float:
        """Poll ``/health`` until it answers 200; return the seconds waited.

        Raises ``EngineStartError`` (with the log's tail) if the process exits or ``timeout_s`` passes.
        """
        started = time.monotonic()
        deadline = started + timeout_s
        bar = _StartProgress(self, enabled=progress)
        with bar:
            while True:
                if self.healthy():
                    return time.monotonic() - started
                code = self.process.returncode
                if code is not None:
                    raise EngineStartError(
                        f"vLLM on port {self.port} exited with code {code} before becoming healthy "
                        f"(log: {self.log_path})\n{self.process.log_tail()}"
                    )
                if time.monotonic() >= deadline:
                    raise EngineStartError(
                        f"vLLM on port {self.port} not healthy after {timeout_s:.0f} s "
                        f"(log: {self.log_path})\n{self.process.log_tail()}"
                    )
                bar.tick()
                time.sleep(0.5)

    def stop(self, timeout_s: float = 20.0) -> None:
        self.process.stop(timeout_s=timeout_s)

    def rss_bytes(self) -> int:
        """Resident memory of the API server and its engine-core and worker children (summed RSS)."""
        return self.process.rss_bytes()

    def pss_bytes(self) -> int:
        """The same processes' proportional set size (shared pages counted once)."""
        return self.process.pss_bytes()

    def __enter__(self) -> VLLMServer:
        if not self.process.running() and self.process.pid is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<VLLMServer {self.served_model_names} {self.url} pid={self.process.pid}>"


class _StartProgress:
    """A rich spinner with the elapsed time and the log's last line, while vLLM starts."""

    def __init__(self, server: VLLMServer, *, enabled: bool) -> None:
        self.server = server
        self.enabled = enabled
        self._progress = None
        self._task = None

    def __enter__(self) -> _StartProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                                      TextColumn("[dim]{task.fields[last]}"), console=Console(stderr=True),
                                      transient=True)
            self._progress.__enter__()
            self._task = self._progress.add_task(f"Starting vLLM on {self.server.url}", total=None, last="")
        return self

    def tick(self) -> None:
        if self._progress is not None:
            lines = self.server.process.log_tail(2000).strip().splitlines()
            last = lines[-1][-80:] if lines else ""
            self._progress.update(self._task, last=last)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)


def detect_gpus() -> list[str]:
    """Indices of the NVIDIA GPUs on this host (``nvidia-smi -L``); empty where there are none."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=15, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    return [line.split(":", 1)[0].split()[1] for line in out.splitlines() if line.startswith("GPU ")]


def launch_pool(
    model_dir: Path,
    names: list[str],
    replicas: int,
    base_port: int,
    *,
    host: str = "127.0.0.1",
    max_model_len: int = 2048,
    kv_cache_gib: int = 2,
    max_num_seqs: int = 64,
    extra_args: Sequence[str] = (),
    log_dir: Path | None = None,
    gpus: list[str] | None = None,
    cpu_threads_bind: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    start: bool = True,
) -> list[VLLMServer]:
    """Start vLLM replicas of one model on ports ``base_port``, ``base_port + 1``, …; return them.

    On GPU hosts each replica gets its own GPU (``gpus``, or all that ``nvidia-smi -L`` lists), so at
    most one replica per GPU. On CPU hosts one replica is started whatever was asked: replicas would
    only fight over the same cores. Call ``wait_healthy`` on each (they start in parallel).
    ``start=False`` only builds them (to inspect or start later).
    """
    if replicas < 1:
        raise ValueError("replicas must be at least 1")
    gpus = detect_gpus() if gpus is None else list(gpus)
    if gpus:
        if replicas > len(gpus):
            log.warning("asked for %d vLLM replicas but only %d GPUs: starting %d", replicas, len(gpus), len(gpus))
        slots: list[str | None] = list(gpus[:replicas])
    else:
        if replicas > 1:
            log.warning("no GPU on this host: starting one vLLM replica instead of %d", replicas)
        slots = [None]
    servers: list[VLLMServer] = []
    try:
        for i, gpu in enumerate(slots):
            port = base_port + i
            server = VLLMServer(
                model_dir, names, host=host, port=port, max_model_len=max_model_len, kv_cache_gib=kv_cache_gib,
                max_num_seqs=max_num_seqs, extra_args=extra_args, gpu=gpu, cpu_threads_bind=cpu_threads_bind,
                extra_env=extra_env,
                log_path=(Path(log_dir) / f"vllm-{port}.log") if log_dir else None,
            )
            servers.append(server)
            if start:
                server.start()
    except BaseException:
        stop_all(servers)
        raise
    return servers


def wait_all_healthy(servers: Sequence[VLLMServer], timeout_s: float, progress: bool = False) -> None:
    """Wait for every server (they were started together, so the waits overlap)."""
    deadline = time.monotonic() + timeout_s
    for server in servers:
        server.wait_healthy(max(1.0, deadline - time.monotonic()), progress=progress)


def stop_all(servers: Sequence[VLLMServer]) -> None:
    for server in servers:
        try:
            server.stop()
        except Exception:  # noqa: BLE001 - stop the rest even if one fails
            log.exception("stopping %r failed", server)
