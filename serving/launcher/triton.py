"""Start a local Triton Inference Server on a model repository, wait for it, stop it cleanly.

On hosts without NVIDIA's container this runs the ``tritonserver`` binary that nvidia-pytriton bundles,
from the runtime environment ``serving.launcher.triton_env`` makes (numpy<2 for the Python-backend
stub, the project's packages linked in). The server gets its own process group, so stopping it also
stops the Python-backend stubs and the vLLM engine processes they start.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from serving.launcher.triton_env import TritonRuntime, ensure_runtime

ModelControlMode = Literal["none", "explicit", "poll"]


class TritonStartError(RuntimeError):
    """Triton exited or did not become ready in time; the message ends with its log's tail."""


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TritonServer:
    """One ``tritonserver`` process serving ``model_repository`` on 127.0.0.1 (by default).

    ``env`` adds variables for the models (e.g. ``NOOR_SMOLLM2_DIR``); nothing may reach a model hub,
    so ``HF_HUB_OFFLINE=1`` is always set. With ``model_control_mode="explicit"`` the repository API
    (load/unload) is enabled and ``load_models`` says what to load at start (default: all).
    """

    def __init__(
        self,
        model_repository: Path,
        *,
        http_port: int,
        grpc_port: int,
        metrics_port: int,
        log_path: Path | None = None,
        host: str = "127.0.0.1",
        runtime: TritonRuntime | None = None,
        runtime_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
        model_control_mode: ModelControlMode = "none",
        load_models: Sequence[str] = ("*",),
        exit_timeout_s: int = 60,
        log_verbose: int = 0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        self.host = host
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.metrics_port = metrics_port
        self.log_path = Path(log_path) if log_path else None
        self._runtime = runtime
        self._runtime_dir = runtime_dir
        self._env = dict(env or {})
        self.model_control_mode = model_control_mode
        self.load_models = tuple(load_models)
        self.exit_timeout_s = exit_timeout_s
        self.log_verbose = log_verbose
        self.extra_args = tuple(extra_args)
        self._proc: subprocess.Popen | None = None
        self._workdir: Path | None = None
        self._log_file = None

    # --- addresses --------------------------------------------------------------------------------

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """``host:port`` as tritonclient's gRPC clients take it."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # --- lifecycle --------------------------------------------------------------------------------

    def command(self, backends_dir: Path) -> list[str]:
        runtime = self._runtime
        assert runtime is not None
        cmd = [
            str(runtime.tritonserver),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backends_dir}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            "--allow-cpu-metrics=true",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--model-control-mode={self.model_control_mode}",
            f"--log-verbose={self.log_verbose}",
        ]
        if self.model_control_mode == "explicit":
            cmd += [f"--load-model={name}" for name in self.load_models]
        return cmd + list(self.extra_args)

    def start(self) -> None:
        """Spawn the server (returns at once; see ``wait_ready``)."""
        if self.is_running():
            raise RuntimeError("Triton is already running")
        if self._runtime is None:
            self._runtime = ensure_runtime(self._runtime_dir)
        runtime = self._runtime
        self._workdir = Path(tempfile.mkdtemp(prefix="noor-triton-"))
        # Triton wants the stub inside the backend's folder; the bundled tree is shared, so copy it.
        backends = self._workdir / "backends"
        shutil.copytree(runtime.backends, backends)
        shutil.copy2(runtime.stub, backends / "python" / "triton_python_backend_stub")
        if self.log_path is None:
            self.log_path = self._workdir / "tritonserver.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab")
        env = runtime.environ()
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        # The models switch their stub to this UTF-8 locale (its embedded Python ignores PYTHONUTF8).
        if "UTF-8" not in (env.get("LC_ALL") or env.get("LC_CTYPE") or env.get("LANG") or "").upper():
            env["LC_ALL"] = "C.UTF-8"
        env.update(self._env)
        self._proc = subprocess.Popen(
            self.command(backends),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self._workdir,
            start_new_session=True,  # own process group: stubs and vLLM engines die with it
        )

    def log_tail(self, n_bytes: int = 4000) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n_bytes))
            return f.read().decode(errors="replace")

    def ready(self) -> bool:
        """True when ``/v2/health/ready`` answers 200 (all loaded models ready)."""
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout_s: float = 600.0) -> float:
        """Block until ready; return the seconds waited. Raises ``TritonStartError``."""
        if self._proc is None:
            raise RuntimeError("Triton was not started")
        t0 = time.monotonic()
        while True:
            if self._proc.poll() is not None:
                raise TritonStartError(f"tritonserver exited with {self._proc.returncode}:\n{self.log_tail()}")
            if self.ready():
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout_s:
                raise TritonStartError(f"tritonserver not ready after {timeout_s:.0f} s:\n{self.log_tail()}")
            time.sleep(0.25)

    def stop(self, timeout_s: float | None = None) -> int | None:
        """Stop the server; return its exit code.

        SIGTERM goes to ``tritonserver`` alone first, so it can unload its models (our models' finalize
        shuts vLLM down in order); whatever is left of the process group after the grace period is
        terminated, then killed.
        """
        proc, self._proc = self._proc, None
        code = None
        if proc is not None:
            pgid = proc.pid
            grace = timeout_s if timeout_s is not None else self.exit_timeout_s + 15
            try:
                proc.send_signal(signal.SIGTERM)
                code = proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _signal_group(pgid, signal.SIGKILL)
                code = proc.wait(timeout=10)
            # The stubs and vLLM's engine processes notice their parent's exit on their own; give them
            # a moment, then terminate and finally kill what is left.
            for sig in (None, signal.SIGTERM, signal.SIGKILL):
                if sig is not None:
                    _signal_group(pgid, sig)
                deadline = time.monotonic() + 10.0
                while _group_alive(pgid) and time.monotonic() < deadline:
                    time.sleep(0.1)
                if not _group_alive(pgid):
                    break
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._workdir is not None:
            if self.log_path is not None and self.log_path.is_relative_to(self._workdir):
                # The caller may still read the log: keep it, drop the copied backends.
                shutil.rmtree(self._workdir / "backends", ignore_errors=True)
            else:
                shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        return code

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
