"""Many simulated replicas in the calling process: the in-process API benchmarks and tests use.

    async with run_simulators(8, "cpu-smollm2", time_scale=0.5) as urls:
        ...  # urls[i] is "http://127.0.0.1:<port>"; POST urls[i] + "/v1/chat/completions"

All replicas share the caller's event loop (no subprocesses to start or reap); each binds its own free
port on 127.0.0.1 (port 0, so there is no race for a port). The yielded list also carries the servers
(``urls.servers[i].engine``) for benchmarks that want engine state without scraping ``/metrics``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from .profiles import Profile, load_profile
from .server import SimulatorServer


class SimulatorCluster(list[str]):
    """The base URLs of running replicas (a ``list[str]``), plus their ``servers``."""

    servers: list[SimulatorServer]


def resolve_profile(profile: str | Path | Profile, **overrides: Any) -> Profile:
    if isinstance(profile, Profile):
        return profile.replace(**overrides) if overrides else profile
    return load_profile(profile, **overrides)


@asynccontextmanager
async def run_simulators(
    n: int,
    profile: str | Path | Profile = "cpu-smollm2",
    *,
    time_scale: float = 1.0,
    host: str = "127.0.0.1",
    base_port: int | None = None,
    served_model_name: str | None = None,
    seed: int = 0,
    **profile_overrides: Any,
) -> AsyncIterator[SimulatorCluster]:
    """Start ``n`` simulated engines; yields their base URLs; stops them all on exit.

    ``base_port=None`` binds free ports; otherwise replica ``i`` listens on ``base_port + i``.
    ``profile_overrides`` change profile fields for this run (``max_num_seqs=32``, ``floor_ms=20``...).
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    prof = resolve_profile(profile, **profile_overrides)
    servers = [
        SimulatorServer(
            prof,
            host=host,
            port=0 if base_port is None else base_port + i,
            time_scale=time_scale,
            served_model_name=served_model_name,
            seed=seed + i,
        )
        for i in range(n)
    ]
    cluster = SimulatorCluster()
    cluster.servers = servers
    started: list[SimulatorServer] = []
    try:
        for server in servers:
            cluster.append(await server.start())
            started.append(server)
        yield cluster
    finally:
        for server in started:
            await server.stop()
