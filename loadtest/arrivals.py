"""Inter-arrival gaps of an open-loop load.

Real clients do not wait for each other: requests arrive whether or not the last ones were served. A
closed loop (N users each waiting for its answer) slows down with the server and hides overload; an
open loop keeps arriving at the offered rate, so queues and latency grow where capacity ends.

Gaps are gamma-distributed with shape ``burstiness`` and mean ``1/rate`` (the convention of vLLM's
serving benchmark): shape 1 is a Poisson process; below 1 arrivals come in clumps (coefficient of
variation ``1/sqrt(burstiness)``); above 1 they are more regular than Poisson.
"""

from __future__ import annotations

import random


class Arrivals:
    def __init__(self, burstiness: float = 1.0, rng: random.Random | None = None) -> None:
        if burstiness <= 0:
            raise ValueError("burstiness must be > 0")
        self.burstiness = burstiness
        self.rng = rng or random.Random()

    def gap(self, rate: float) -> float:
        """Seconds until the next arrival at ``rate`` arrivals per second."""
        if rate <= 0:
            raise ValueError("rate must be > 0")
        if self.burstiness == 1.0:
            return self.rng.expovariate(rate)
        return self.rng.gammavariate(self.burstiness, 1.0 / (rate * self.burstiness))
