"""Synthetic inputs: serving-like skewed expert loads and fleets of H100s with measured variability.

Role: the benchmark, the tests, the examples and the agent's simulated mode need inputs that look like
production without production data. Both generators are seeded and deterministic.

Loads (``skewed_loads``): per layer, a target skew ``rho_l`` (max / mean expert load) is drawn uniformly
from ``skew`` (2-4x by default, as seen in serving traces of DeepSeek-V3 and Qwen3 MoE layers, and
different per layer); expert popularity is log-normal, ``p_e ~ exp(sigma_l z_e)`` with z standard
normal, and ``sigma_l`` is solved by bisection so that max/mean of that layer equals ``rho_l`` exactly.
Loads are then scaled to ``mean_tokens`` per expert per forward step and rounded to whole tokens.
Decode batches put ~100 tokens on an average expert (below the H100 curve's knee), prefill thousands
(the linear part): the regimes need different placements.

Fleets (``h100_fleet``): every GPU runs the measured H100 reference curve, slowed by a per-GPU factor
``1 + spread * |z_g|`` (z standard normal): 0 % gives identical GPUs, 4 % and 8 % reproduce the SC'22
fleet figures (8 % average GPU-to-GPU variation), and ``outliers`` GPUs are additionally 1.5x slower
(the fail-slow GPUs those studies report).

How a GPU is slow (``slowed_curve``): a curve is a memory-bound floor (weight streaming, the flat part)
plus compute above it. A GPU ``factor`` times slower is slowed ``factor`` in its compute part and
``1 + (factor - 1) * floor_share`` at its floor. ``floor_share`` 1 scales the whole curve (the "uniform"
model, what these fleets did before); 0 leaves the floor alone (the "measured" model: a GPU slowed by
its power cap loses SM clock in the compute region, while floor-bound GEMMs run at the top clock below
the cap; benchmarks/results/gpu-slowness-h100-2026-12-07/).
"""

from __future__ import annotations

import numpy as np

from vibe.placement.curves import Fleet, GPUCurve, reference_curve


def skewed_loads(
    num_layers: int,
    num_experts: int,
    *,
    mean_tokens: float,
    skew: tuple[float, float] = (2.0, 4.0),
    seed: int = 0,
) -> np.ndarray:
    """[L, E] float64 whole-token loads with per-layer max/mean drawn from ``skew`` (see module doc)."""
    rng = np.random.default_rng(seed)
    rho = rng.uniform(skew[0], skew[1], size=num_layers)
    z = rng.standard_normal((num_layers, num_experts))
    rho = np.minimum(rho, num_experts * 0.999)  # max/mean cannot exceed E
    lo = np.zeros(num_layers)
    hi = np.full(num_layers, 20.0)
    for _ in range(100):  # bisection on sigma: max/mean of exp(sigma z) grows with sigma
        mid = 0.5 * (lo + hi)
        p = np.exp(mid[:, None] * (z - z.max(axis=1, keepdims=True)))
        ratio = p.max(axis=1) / p.mean(axis=1)
        lo = np.where(ratio < rho, mid, lo)
        hi = np.where(ratio < rho, hi, mid)
    p = np.exp(hi[:, None] * (z - z.max(axis=1, keepdims=True)))
    loads = p / p.mean(axis=1, keepdims=True) * mean_tokens
    return np.round(loads)


#: ``floor_share`` of the two slowness models (module doc).
#: How much of a slow GPU's compute slowdown reaches its memory-bound floor: ``uniform`` all of it (the
#: old assumption), ``measured`` none (a power-capped GPU runs its floor at the top clock below the cap),
#: ``clock`` 0.3 (a GPU whose SM clock is held down at any load, by heat or a clock limit: the floor pays
#: 0.07-0.63 of a clock loss, H100 clock probe, benchmarks/results/gpu-slowness-h100-2026-12-07/).
FLOOR_SHARE = {"uniform": 1.0, "measured": 0.0, "clock": 0.3}


def slowed_curve(seconds: np.ndarray, factor: float, floor_share: float = 1.0) -> np.ndarray:
    """[K] seconds of a curve ``factor`` times slower in compute, its floor by ``floor_share`` of that.

    The floor is the curve's smallest time (its flat, memory-bound part); ``seconds`` is [K], any order.
    """
    seconds = np.asarray(seconds, dtype=np.float64)
    floor = float(seconds.min())
    out: np.ndarray = floor * (1.0 + (factor - 1.0) * floor_share) + (seconds - floor) * factor
    return out


def unslowed_curve(seconds: np.ndarray, factor: float, floor_share: float = 1.0) -> np.ndarray:
    """``slowed_curve``'s inverse: the curve before it was made ``factor`` times slower that way."""
    seconds = np.asarray(seconds, dtype=np.float64)
    slowed_floor = float(seconds.min())
    floor = slowed_floor / (1.0 + (factor - 1.0) * floor_share)
    out: np.ndarray = floor + (seconds - slowed_floor) / factor
    return out


def spread_factors(
    num_gpus: int,
    *,
    spread: float,
    outliers: int = 0,
    outlier_factor: float = 1.5,
    gpus_per_node: int = 8,
    seed: int = 0,
) -> np.ndarray:
    """[G] per-GPU slowdowns ``1 + spread * |z|`` with ``outliers`` of them ``outlier_factor`` more.

    The outliers are the last GPUs of the first nodes (a fixed, documented choice, so results reproduce).
    """
    rng = np.random.default_rng(seed)
    factor = 1.0 + spread * np.abs(rng.standard_normal(num_gpus))
    slow = [min(num_gpus - 1, (k + 1) * gpus_per_node - 1) for k in range(outliers)]
    factor[slow] *= outlier_factor
    return factor


def fleet_of(
    tokens: np.ndarray,
    seconds: np.ndarray,
    factors: np.ndarray,
    *,
    floor_share: float = 1.0,
    gpus_per_node: int = 8,
) -> Fleet:
    """A fleet of ``len(factors)`` GPUs ``node-NN/i`` running one curve, each slowed by its factor."""
    gpus = []
    for i, f in enumerate(np.asarray(factors, dtype=np.float64)):
        node = f"node-{i // gpus_per_node:02d}"
        gpus.append(
            GPUCurve(f"{node}/{i % gpus_per_node}", node, tokens, slowed_curve(seconds, f, floor_share))
        )
    return Fleet(tuple(gpus))


def h100_fleet(
    num_gpus: int,
    *,
    spread: float = 0.0,
    outliers: int = 0,
    outlier_factor: float = 1.5,
    floor_share: float = 1.0,
    hidden_size: int = 7168,
    intermediate_size: int = 2048,
    dtype: str = "bf16",
    gpus_per_node: int = 8,
    seed: int = 0,
) -> Fleet:
    """A fleet of H100s running one expert shape, with per-GPU slowdowns (see module doc).

    GPU ids are ``node-NN/i`` with ``gpus_per_node`` per node; the outliers are the last GPUs of the
    first nodes (a fixed, documented choice so that results are reproducible). ``floor_share`` 1 (the
    default, the fleets of the placement benchmark) scales whole curves; ``FLOOR_SHARE["measured"]``
    leaves the floor alone.
    """
    tokens, seconds = reference_curve(hidden_size, intermediate_size, dtype)
    factor = spread_factors(
        num_gpus,
        spread=spread,
        outliers=outliers,
        outlier_factor=outlier_factor,
        gpus_per_node=gpus_per_node,
        seed=seed,
    )
    return fleet_of(tokens, seconds, factor, floor_share=floor_share, gpus_per_node=gpus_per_node)
