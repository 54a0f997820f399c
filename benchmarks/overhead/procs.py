"""Processes for a benchmark: started pinned to cores (``taskset -c``), waited for, measured, stopped.

Every process is started in its own session so stopping it (terminate, then kill) takes its children
(uvicorn's or granian's workers) with it.

Priority: with Linux autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled``), the CPU is
shared between sessions first, and a process's nice value only ranks it inside its own session. On a
machine shared with other work, ``nice -n -20`` alone left a spinning process 25 % of its core (measured
here with ~20 busy sessions); setting the session's autogroup nice as well gave it 98 %. So a negative
``nice`` sets both.

Wake-ups still wait: this VM's scheduler let a woken process wait up to a few milliseconds for its core
while other work ran, which adds the same milliseconds to every hop of a request (measured: a minimal
Python proxy's added p50 at 50 req/s was ~1.8 ms at nice -20, ~1.4 ms under SCHED_FIFO, its TTFT p99 at 16 streams 3.3 ms). ``rt`` runs a process
under SCHED_FIFO (``chrt -f``) instead, so it runs the moment it is woken; the kernel's real-time
throttling (95 % of each second by default) still leaves other work its share of a saturated core.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_session_nice(pid: int, nice: int) -> None:
    """Give ``pid``'s autogroup (its session's scheduling group) the niceness ``nice``, where allowed."""
    if nice:
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/autogroup").write_text(str(nice))


def rt_refused(rt: int) -> str | None:
    """Why SCHED_FIFO at priority ``rt`` cannot be had here (None when it can): a VM or container may
    refuse it even to root (seen on a Firecracker GPU host: "chrt: failed to set pid 0's policy:
    Operation not permitted"), and a benchmark should say so before it starts anything."""
    out = subprocess.run(["chrt", "-f", str(rt), "true"], capture_output=True, text=True)
    return None if out.returncode == 0 else (out.stderr.strip() or f"chrt exited {out.returncode}")


def pinned(cmd: list[str], cores: str | None, nice: int = 0, rt: int = 0) -> list[str]:
    """``cmd`` run on ``cores`` (taskset list syntax, e.g. "1" or "0,1") at niceness ``nice``, or under
    SCHED_FIFO at priority ``rt`` when it is not 0."""
    out = list(cmd)
    if cores is not None:
        out = ["taskset", "-c", cores, *out]
    if rt:
        out = ["chrt", "-f", str(rt), *out]
    elif nice:
        out = ["nice", "-n", str(nice), *out]
    return out


class Proc:
    def __init__(self, name: str, cmd: list[str], *, cores: str | None, nice: int = 0, env: dict | None = None,
                 log_dir: Path, cwd: Path | None = None, rt: int = 0) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        self.cmd = pinned(cmd, cores, nice, rt)
        with open(self.log, "ab") as log:
            self.popen = subprocess.Popen(
                self.cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        set_session_nice(self.popen.pid, nice)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        return ""

    def cpu_seconds(self) -> float:
        """User + system CPU of the process and its live children (the whole process group)."""
        return sum(self.cpu_by_pid().values())

    def cpu_by_pid(self) -> dict[int, float]:
        """User + system CPU of each live process of the group: how evenly a server's workers share the load."""
        out: dict[int, float] = {}
        for pid in _group_pids(self.popen.pid):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                out[pid] = (int(fields[11]) + int(fields[12])) / CLK_TCK
        return out

    def stop(self, timeout: float = 10.0) -> None:
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.getpgid(int(entry.name)) == pgid:
                    pids.append(int(entry.name))
    return pids


def wait_http(url: str, timeout: float, proc: Proc | None = None, headers: dict | None = None) -> None:
    """Wait until GET ``url`` answers 200 (and ``proc`` is still alive)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2) as r:
                if r.status == 200:
                    return
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            last = exc
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout:.0f}s ({last!r})" + (f"\n{proc.tail()}" if proc else ""))
