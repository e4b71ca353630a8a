"""The ``random`` placement the tests compare every policy against (not a policy vibe offers).

A uniformly shuffled feasible placement: every expert once, the rest of the slots at random. The bound
tests check no placement beats the lower bound, random ones included; the reference EP layer runs two
random placements as the "anything feasible" case.
"""

from __future__ import annotations

import time

import numpy as np

from vibe.placement.cost import Placement, check_shapes
from vibe.placement.curves import Fleet
from vibe.placement.engine import Result, make_result


def random_placement(
    num_layers: int, num_experts: int, num_gpus: int, slots_per_gpu: int, rng: np.random.Generator
) -> np.ndarray:
    """[L, P] int64: a uniformly shuffled feasible placement (every expert once, the rest at random)."""
    p = num_gpus * slots_per_gpu
    out = np.empty((num_layers, p), dtype=np.int64)
    for layer in range(num_layers):
        extra = rng.integers(0, num_experts, size=p - num_experts)
        out[layer] = rng.permutation(np.concatenate([np.arange(num_experts), extra]))
    return out


def solve_random(loads: np.ndarray, fleet: Fleet, slots_per_gpu: int, *, seed: int = 0) -> Result:
    """A random placement priced by the one evaluator, as ``solve`` prices a policy's (policy ``random``)."""
    started = time.perf_counter()
    loads = check_shapes(loads, fleet, slots_per_gpu, None)
    num_layers, e = loads.shape
    phy = random_placement(num_layers, e, len(fleet), slots_per_gpu, np.random.default_rng(seed))
    return make_result("random", Placement(phy, slots_per_gpu, e), loads, fleet, started)
