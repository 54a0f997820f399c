"""Managed child processes for local engines (vLLM, Triton): started, logged, and always cleaned up.

Why: an engine is a tree of processes (vLLM's API server forks an engine-core process; Triton runs a
stub per model). Killing only the parent leaves the children holding memory and ports. So every
engine runs as the leader of its own process group (``start_new_session``), output goes to a log file
(its tail explains a failed start), and ``stop()`` sends SIGTERM to the whole group, waits, then
SIGKILLs whatever is left of it. An ``atexit`` hook stops anything still running when Python exits.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

#: Started and not yet stopped; held strongly so a process nobody references still stops at exit.
_live: set[ManagedProcess] = set()
_live_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS says is free now (another process may still take it before we bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def next_free_port(host: str, start: int) -> int:
    """The first port from ``start`` up that nothing listens on (predictable ports for a local setup)."""
    port = start
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex((host, port)) != 0:
                return port
        port += 1


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``, read from /proc (Linux)."""
    members = []
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: fall back to "does the group still exist"
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ..." — comm may hold spaces and parentheses, so split after it.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


class ManagedProcess:
    """One command run as its own process group, with its output in a log file.

    ``log_path`` None means a temporary file (kept after stop, so a failure can still be read).
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        cwd: Path | None = None,
        name: str | None = None,
    ) -> None:
        self.argv = [str(a) for a in argv]
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.name = name or Path(self.argv[0]).name
        self.log_path = Path(log_path) if log_path else None
        self._popen: subprocess.Popen[bytes] | None = None
        self._pgid: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        if self._popen is not None:
            raise RuntimeError(f"{self.name} was already started")
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix=f"noor-{self.name}-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,  # own session and process group: stop() reaches every child
            )
        self._pgid = self._popen.pid
        with _live_lock:
            _live.add(self)
        log.info("started %s (pid %d, log %s)", self.name, self._popen.pid, self.log_path)

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM the whole group, wait up to ``timeout_s``, then SIGKILL what is left.

        Returns the leader's exit code (None if it was never started). Safe to call twice.
        """
        if self._popen is None or self._pgid is None:
            return None
        pgid = self._pgid
        if self._popen.poll() is None or group_members(pgid):
            self._signal_group(signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                self._popen.poll()
                if self._popen.returncode is not None and not group_members(pgid):
                    break
                time.sleep(0.1)
            else:
                log.warning("%s (pgid %d) ignored SIGTERM for %.0f s; killing it", self.name, pgid, timeout_s)
                self._signal_group(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._popen.wait(timeout=5)
                deadline = time.monotonic() + 5
                while group_members(pgid) and time.monotonic() < deadline:
                    time.sleep(0.05)
        with _live_lock:
            _live.discard(self)
        return self._popen.returncode

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self._pgid is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._pgid, sig)

    # -- state -------------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    @property
    def pgid(self) -> int | None:
        return self._pgid

    @property
    def returncode(self) -> int | None:
        return self._popen.poll() if self._popen else None

    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def rss_bytes(self) -> int:
        """Resident memory of the whole process group (leader and children), summed VmRSS.

        Pages shared between the processes (libraries, shared memory) count once per process; see
        ``pss_bytes`` for the fair share.
        """
        return self._sum_proc_field("status", "VmRSS:")

    def pss_bytes(self) -> int:
        """Proportional set size of the group: shared pages split between their users (Linux 4.14+)."""
        return self._sum_proc_field("smaps_rollup", "Pss:")

    def _sum_proc_field(self, file: str, key: str) -> int:
        if self._pgid is None:
            return 0
        total = 0
        for pid in group_members(self._pgid):
            try:
                for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
                    if line.startswith(key):
                        total += int(line.split()[1]) * 1024  # kB
                        break
            except OSError:
                continue
        return total

    def log_tail(self, max_bytes: int = 6000) -> str:
        """The end of the log, for error messages."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            return handle.read().decode(errors="replace")

    def __enter__(self) -> ManagedProcess:
        if self._popen is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<ManagedProcess {self.name} pid={self.pid} running={self.running()}>"


@atexit.register
def _stop_all() -> None:
    with _live_lock:
        live = list(_live)
    for proc in live:
        with contextlib.suppress(Exception):
            proc.stop(timeout_s=5)
