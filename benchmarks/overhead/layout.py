"""Which cores each part of the benchmark gets on a machine with cores to spare (``--layout auto``).

The figures mean something only when the parts do not take turns on a core: the gateway on one of its
own, Redis on one (as a production Redis has), the stubs and the load generators on theirs, and the
workers of a scaling run on the rest. One thread per physical core (an SMT sibling shares the core's
pipeline), and cpu 0's core left to the system and the benchmark's driver. On this project's 2-core VM
there is no such layout: the defaults (gateway on core 1, everything else on core 0) stay.
"""

from __future__ import annotations

import os
from pathlib import Path


def physical_cores() -> list[int]:
    """The first thread of each physical core, in order."""
    seen: set[str] = set()
    out = []
    for cpu in sorted(os.sched_getaffinity(0)):
        path = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        siblings = path.read_text().strip() if path.exists() else str(cpu)
        if siblings not in seen:
            seen.add(siblings)
            out.append(cpu)
    return out


def auto(cores: list[int] | None = None) -> dict | None:
    """Cores per part (taskset lists) and how many stubs and load generators, or None below 6 cores."""
    cores = [c for c in (physical_cores() if cores is None else cores) if c != 0]
    if len(cores) < 6:
        return None
    big = len(cores) >= 12
    gateway, redis, rest = cores[0], cores[1], cores[2:]
    stubs, rest = (rest[:2], rest[2:]) if big else (rest[:1], rest[1:])
    load, scaling = (rest[:4], rest[4:]) if big else (rest[:2], rest[2:])
    join = lambda xs: ",".join(map(str, xs))  # noqa: E731
    return {
        "gateway_cores": str(gateway), "redis_cores": str(redis), "stub_cores": join(stubs),
        "stub_procs": len(stubs), "load_cores": join(load), "load_procs": len(load),
        "scaling_cores": join(scaling) if scaling else None,
    }
