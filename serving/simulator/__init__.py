"""An engine simulator that speaks vLLM's OpenAI API and ``/metrics`` and models continuous batching.

It lets routing and fairness be measured on 8–64 replicas on one small machine, and is the basis for
capacity planning. It never replaces the real engine in end-to-end tests. See ``docs/simulator.md``.
"""

from .cluster import SimulatorCluster, run_simulators
from .engine import Engine
from .profiles import Profile, Timing, available_profiles, load_profile
from .server import SimulatorServer

__all__ = [
    "Engine",
    "Profile",
    "SimulatorCluster",
    "SimulatorServer",
    "Timing",
    "available_profiles",
    "load_profile",
    "run_simulators",
]
