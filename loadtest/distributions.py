"""Length distributions for prompts and outputs, in tokens.

Real traffic is not "every prompt is 512 tokens": lengths are skewed (a few long documents among many
short questions). A lognormal with a given mean is the usual fit; fixed and uniform are there for
controlled experiments. Every draw is clamped to ``[min, max]`` so a tail never exceeds the model's
context.
"""

from __future__ import annotations

import math
import random
from typing import Literal

from pydantic import BaseModel, Field, model_validator


class Dist(BaseModel):
    """``{dist = "lognormal", mean = 200, sigma = 0.6, min = 8, max = 1500}`` and friends."""

    model_config = {"extra": "forbid"}

    dist: Literal["fixed", "uniform", "normal", "lognormal", "exponential"] = "fixed"
    value: float | None = Field(default=None, description="fixed: the value")
    mean: float | None = Field(default=None, gt=0, description="normal, lognormal, exponential: the mean")
    std: float | None = Field(default=None, ge=0, description="normal: the standard deviation")
    sigma: float = Field(default=0.5, gt=0, description="lognormal: sigma of the underlying normal")
    min: int = Field(default=1, ge=0)
    max: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _complete(self) -> Dist:
        need = {"fixed": ("value",), "uniform": ("max",), "normal": ("mean", "std"), "lognormal": ("mean",),
                "exponential": ("mean",)}[self.dist]
        missing = [n for n in need if getattr(self, n) is None]
        if missing:
            raise ValueError(f"{self.dist} distribution needs {', '.join(missing)}")
        if self.max is not None and self.max < self.min:
            raise ValueError("max must be >= min")
        return self

    @classmethod
    def fixed(cls, value: int) -> Dist:
        return cls(dist="fixed", value=value, min=min(1, value))

    def sample(self, rng: random.Random) -> int:
        if self.dist == "fixed":
            x = float(self.value)  # type: ignore[arg-type]
        elif self.dist == "uniform":
            return rng.randint(self.min, self.max)  # type: ignore[arg-type]
        elif self.dist == "normal":
            x = rng.gauss(self.mean, self.std)  # type: ignore[arg-type]
        elif self.dist == "lognormal":
            # mean of a lognormal is exp(mu + sigma^2/2): choose mu so the configured mean is the real one
            mu = math.log(self.mean) - self.sigma**2 / 2  # type: ignore[arg-type]
            x = rng.lognormvariate(mu, self.sigma)
        else:
            x = rng.expovariate(1.0 / self.mean)  # type: ignore[operator]
        n = max(self.min, int(round(x)))
        return min(n, self.max) if self.max is not None else n

    def expected(self) -> float:
        """The mean before clamping (for sizing a run, not for reporting: reports use measured counts)."""
        if self.dist == "fixed":
            return float(self.value)  # type: ignore[arg-type]
        if self.dist == "uniform":
            return (self.min + self.max) / 2  # type: ignore[operator]
        return float(self.mean)  # type: ignore[arg-type]

    def describe(self) -> str:
        if self.dist == "fixed":
            return f"{self.value:g}"
        if self.dist == "uniform":
            return f"uniform {self.min}–{self.max}"
        bounds = f", {self.min}–{self.max}" if self.max is not None else ""
        if self.dist == "normal":
            return f"normal mean {self.mean:g} sd {self.std:g}{bounds}"
        if self.dist == "lognormal":
            return f"lognormal mean {self.mean:g} σ {self.sigma:g}{bounds}"
        return f"exponential mean {self.mean:g}{bounds}"
