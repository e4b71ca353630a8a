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


def h100_fleet(
    num_gpus: int,
    *,
    spread: float = 0.0,
    outliers: int = 0,
    outlier_factor: float = 1.5,
    hidden_size: int = 7168,
    intermediate_size: int = 2048,
    dtype: str = "bf16",
    gpus_per_node: int = 8,
    seed: int = 0,
) -> Fleet:
    """A fleet of H100s running one expert shape, with per-GPU slowdowns (see module doc).

    GPU ids are ``node-NN/i`` with ``gpus_per_node`` per node; the outliers are the last GPUs of the
    first nodes (a fixed, documented choice so that results are reproducible).
    """
    rng = np.random.default_rng(seed)
    tokens, seconds = reference_curve(hidden_size, intermediate_size, dtype)
    factor = 1.0 + spread * np.abs(rng.standard_normal(num_gpus))
    slow = [min(num_gpus - 1, (k + 1) * gpus_per_node - 1) for k in range(outliers)]
    factor[slow] *= outlier_factor
    gpus = []
    for i in range(num_gpus):
        node = f"node-{i // gpus_per_node:02d}"
        gpus.append(GPUCurve(f"{node}/{i % gpus_per_node}", node, tokens, seconds * factor[i]))
    return Fleet(tuple(gpus))
