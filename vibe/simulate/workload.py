"""Requests: arrival times and prompt/output lengths, seeded and deterministic.

* Arrivals: a renewal process at ``rate`` requests per second. Gaps are Gamma(shape, 1 / (rate * shape))
  with shape = ``burstiness``: 1 is Poisson (exponential gaps), below 1 bursty, above 1 smoother (the
  same knob as SGLang's and vLLM's ``bench_serving --burstiness``).
* Lengths: prompt and output tokens each uniform on [mean * (1 - spread), mean * (1 + spread)], rounded,
  at least 1 (SGLang's ``bench_serving --dataset-name random`` draws uniform lengths the same way);
  ``spread`` 0 gives fixed lengths.

Requests are admitted first come, first served (``engine``). The same seed gives the same requests for
every policy, so policies are compared on one trace.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Workload:
    """What the simulated clients send."""

    rate: float  # requests per second
    requests: int
    prompt_tokens: float  # mean
    output_tokens: float  # mean
    spread: float = 0.5  # lengths uniform within mean * (1 +- spread)
    burstiness: float = 1.0  # Gamma shape of the gaps; 1 = Poisson
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.rate > 0 and np.isfinite(self.rate)):
            raise ValueError(f"rate must be a positive number of requests per second, not {self.rate!r}")
        if self.requests < 1:
            raise ValueError("at least one request")
        if not (self.prompt_tokens >= 1 and self.output_tokens >= 1):
            raise ValueError("prompt and output means must be at least 1 token")
        if not (0 <= self.spread < 1):
            raise ValueError("length spread must lie in [0, 1)")
        if not self.burstiness > 0:
            raise ValueError("burstiness must be > 0")


@dataclass(frozen=True)
class Requests:
    """N requests, sorted by arrival: arrival [N] s, prompt [N] tokens, output [N] tokens (>= 1)."""

    arrival: np.ndarray
    prompt: np.ndarray
    output: np.ndarray

    def __len__(self) -> int:
        return int(self.arrival.size)


def generate(w: Workload) -> Requests:
    """The requests of a workload (module doc); the lengths do not depend on the rate."""
    rng = np.random.default_rng([w.seed, 1])
    gaps = rng.gamma(w.burstiness, 1.0 / (w.rate * w.burstiness), size=w.requests)
    arrival = np.cumsum(gaps) - gaps[0]  # the first request arrives at t = 0
    lengths = np.random.default_rng([w.seed, 2])
    u = lengths.uniform(-1.0, 1.0, size=(2, w.requests))
    prompt = np.maximum(1, np.round(w.prompt_tokens * (1 + w.spread * u[0]))).astype(np.int64)
    output = np.maximum(1, np.round(w.output_tokens * (1 + w.spread * u[1]))).astype(np.int64)
    return Requests(arrival, prompt, output)
