"""Managed processes stop with their whole group; vLLM commands and GPU placement are built right.

No engine is started here (see tests/e2e/test_vllm_launcher.py for the real one).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

from serving.launcher.process import ManagedProcess, free_port, group_members
from serving.launcher.vllm import VLLMServer, launch_pool

# A parent that ignores SIGTERM and a child that ignores it too: only SIGKILL to the group ends them.
STUBBORN = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
print("ready", flush=True)
time.sleep(600)
"""


def _wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_stop_kills_the_whole_group_even_when_sigterm_is_ignored(tmp_path: Path):
    proc = ManagedProcess([sys.executable, "-c", STUBBORN], log_path=tmp_path / "p.log", name="stubborn")
    proc.start()
    _wait_for(lambda: "ready" in proc.log_tail() and len(group_members(proc.pgid)) == 2)
    started = time.monotonic()
    proc.stop(timeout_s=1.0)
    assert time.monotonic() - started < 8
    assert group_members(proc.pgid) == []
    assert not proc.running()


def test_graceful_stop_and_log_tail(tmp_path: Path):
    with ManagedProcess([sys.executable, "-c", "print('hello from child', flush=True); import time; time.sleep(60)"],
                        log_path=tmp_path / "p.log") as proc:
        _wait_for(lambda: "hello from child" in proc.log_tail())
        pgid = proc.pgid
        assert proc.rss_bytes() > 1_000_000
    assert group_members(pgid) == []
    assert proc.returncode is not None


def test_log_defaults_to_a_temp_file():
    proc = ManagedProcess([sys.executable, "-c", "print('x')"])
    proc.start()
    _wait_for(lambda: proc.returncode is not None)
    proc.stop()
    assert proc.log_path is not None and proc.log_tail().strip() == "x"
    proc.log_path.unlink()


def test_free_port_is_bindable():
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_vllm_command_and_environment_cpu(tmp_path: Path):
    server = VLLMServer(tmp_path, ["a", "b"], port=8123, kv_cache_gib=3, max_num_seqs=8, extra_args=["--seed", "1"])
    cmd = server.command()
    assert cmd[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    joined = " ".join(cmd)
    assert f"--model {tmp_path}" in joined and "--served-model-name a b --host" in joined
    assert "--port 8123" in joined and "--max-model-len 2048" in joined and "--max-num-seqs 8" in joined
    assert cmd[-2:] == ["--seed", "1"] and "--kv-cache-memory-bytes" not in cmd
    env = server.environment()
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "3" and env["HF_HUB_OFFLINE"] == "1"
    assert env.get("VLLM_CPU_OMP_THREADS_BIND") == os.environ.get("VLLM_CPU_OMP_THREADS_BIND")  # untouched
    bound = VLLMServer(tmp_path, ["a"], port=1, cpu_threads_bind="nobind", extra_env={"X_NOOR": "1"}).environment()
    assert bound["VLLM_CPU_OMP_THREADS_BIND"] == "nobind" and bound["X_NOOR"] == "1"
    assert server.url == "http://127.0.0.1:8123"


def test_launch_pool_places_one_replica_per_gpu(tmp_path: Path):
    servers = launch_pool(tmp_path, ["m"], replicas=3, base_port=9000, gpus=["0", "1"], start=False)
    assert [(s.port, s.gpu) for s in servers] == [(9000, "0"), (9001, "1")]
    assert servers[1].environment()["CUDA_VISIBLE_DEVICES"] == "1"
    assert "--kv-cache-memory-bytes" in servers[0].command()


def test_launch_pool_starts_one_replica_on_cpu_hosts(tmp_path: Path):
    servers = launch_pool(tmp_path, ["m"], replicas=4, base_port=9000, gpus=[], start=False)
    assert [(s.port, s.gpu) for s in servers] == [(9000, None)]
