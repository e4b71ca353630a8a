"""Helpers for the placement tests: small random instances (fleets, loads) and hypothesis strategies."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from vibe.placement import Fleet, GPUCurve, reference_curve


def random_curve(rng: np.random.Generator, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A random valid curve: increasing tokens, non-decreasing seconds with flat stretches, rising end."""
    k = int(rng.integers(2, 8)) if k is None else k
    tokens = np.cumsum(rng.integers(1, 400, size=k)).astype(float)
    steps = rng.uniform(0, 1e-5, size=k - 1) * (rng.random(k - 1) < 0.7)
    steps[-1] = max(steps[-1], 1e-7)  # the last segment must rise
    seconds = rng.uniform(1e-5, 5e-5) + np.concatenate([[0.0], np.cumsum(steps)])
    return tokens, seconds


def random_fleet(rng: np.random.Generator, num_gpus: int, *, shared_shape: bool | None = None) -> Fleet:
    """GPUs with either scaled copies of one random curve or independent random curves."""
    shared = rng.random() < 0.5 if shared_shape is None else shared_shape
    base = random_curve(rng)
    gpus = []
    for i in range(num_gpus):
        tokens, seconds = base if shared else random_curve(rng)
        scale = 1.0 + 0.5 * rng.random() * (rng.random() < 0.5)
        gpus.append(GPUCurve(f"n{i // 4}/{i % 4}", f"n{i // 4}", tokens, seconds * scale))
    return Fleet(tuple(gpus))


def random_loads(rng: np.random.Generator, layers: int, experts: int) -> np.ndarray:
    """Skewed loads across regimes, sometimes with zero-load experts."""
    scale = float(rng.choice([5.0, 100.0, 3000.0]))
    loads = np.round(rng.lognormal(0.0, rng.uniform(0.1, 1.5), size=(layers, experts)) * scale)
    if rng.random() < 0.3:
        loads[rng.random((layers, experts)) < 0.2] = 0.0
    return loads


@st.composite
def instances(draw, max_experts: int = 10, max_gpus: int = 5, max_slots: int = 4, max_layers: int = 3):
    """(loads [L, E], fleet, S) with S * G >= E."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    g = draw(st.integers(1, max_gpus))
    s = draw(st.integers(1, max_slots))
    e = draw(st.integers(1, min(max_experts, g * s)))
    layers = draw(st.integers(1, max_layers))
    return random_loads(rng, layers, e), random_fleet(rng, g), s


def h100_fleet4() -> Fleet:
    """Four H100s, the last 1.5x slower."""
    tokens, seconds = reference_curve()
    return Fleet(tuple(GPUCurve(f"a/{i}", "a", tokens, seconds * (1.5 if i == 3 else 1.0)) for i in range(4)))
