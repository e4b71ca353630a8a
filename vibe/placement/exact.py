"""``exact``: OR-Tools CP-SAT on each layer, warm-started from ``vibe``, to check how close vibe gets.

Role: a yardstick for small instances (Mixtral-sized layers), not a production policy: the model grows
as E * G * (R + 1) integer variables per layer. Larger instances are refused with ``InstanceTooLarge``.

Per layer, with replica-cost table ``c[g, e, k] = t_g(w_e / k)`` (seconds, rounded *down* to 0.1 ns so
that CP-SAT's proven bound also bounds the real problem):

* ``z[e, k]`` (bool): expert e has k replicas; exactly one k per expert; ``sum_e sum_k k z[e, k] = P``.
* ``y[e, g, k]`` (int 0..S): replicas of e on g when it has k replicas;
  ``y[e, g, k] <= S z[e, k]``, ``sum_g y[e, g, k] = k z[e, k]``, ``sum_{e,k} y[e, g, k] = S`` per GPU.
* minimise T with ``sum_{e,k} c[g, e, k] y[e, g, k] <= T`` for every GPU.

One worker and a deterministic time limit (``time_budget_s`` shared by the layers) keep it
reproducible. The returned placement is priced again by the one evaluator; ``info`` reports how many
layers CP-SAT proved optimal and the sum of its per-layer bounds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vibe.placement.curves import CurveTable
from vibe.placement.errors import PlacementError

#: Largest E * G * (R + 1) per layer the exact model accepts.
MAX_VARIABLES = 40_000

#: Cost resolution: seconds are scaled by this and rounded down.
SCALE = 1e10


def solve_exact(
    loads: np.ndarray,
    table: CurveTable,
    slots_per_gpu: int,
    hint: np.ndarray,
    *,
    time_budget_s: float,
) -> tuple[np.ndarray, dict[str, Any]]:
    """[L, P] placement from CP-SAT per layer (falling back to ``hint`` where CP-SAT finds nothing better).

    Args:
        loads: [L, E]; hint: [L, P] a feasible placement (vibe's) to warm-start from.
    Returns:
        phy2log [L, P] and info {"optimalLayers": int, "cpsatBoundSeconds": float}.
    """
    try:
        from ortools.sat.python import cp_model
    except ImportError:  # pragma: no cover - exercised only without the optional extra
        raise PlacementError(
            "MissingDependency", "the exact policy needs OR-Tools: pip install 'vibe-operator[exact]'"
        ) from None
    num_layers, e = loads.shape
    g, s = table.num_gpus, slots_per_gpu
    p = g * s
    kmax = p - e + 1
    if e * g * kmax > MAX_VARIABLES:
        raise PlacementError(
            "InstanceTooLarge",
            f"exact is for small instances: {e} experts x {g} GPUs x {kmax} replica counts is more than "
            f"{MAX_VARIABLES} variables per layer",
        )
    out = hint.copy()
    optimal = 0
    bound_total = 0.0
    ks = np.arange(1, kmax + 1)
    for layer in range(num_layers):
        w = loads[layer]
        cost = table.all_gpus(w[:, None] / ks[None, :])  # [G, E, K]
        icost = np.floor(cost * SCALE).astype(np.int64)
        m = cp_model.CpModel()
        z = [[m.new_bool_var(f"z{i}_{k}") for k in ks] for i in range(e)]
        y = [
            [[m.new_int_var(0, min(s, int(k)), f"y{i}_{j}_{k}") for k in ks] for j in range(g)]
            for i in range(e)
        ]
        for i in range(e):
            m.add_exactly_one(z[i])
            for ki, k in enumerate(ks):
                m.add(sum(y[i][j][ki] for j in range(g)) == int(k) * z[i][ki])
        m.add(sum(int(k) * z[i][ki] for i in range(e) for ki, k in enumerate(ks)) == p)
        horizon = int(icost.sum(axis=(1, 2)).max()) + 1
        t = m.new_int_var(0, horizon, "T")
        for j in range(g):
            m.add(sum(y[i][j][ki] for i in range(e) for ki in range(kmax)) == s)
            m.add(sum(int(icost[j, i, ki]) * y[i][j][ki] for i in range(e) for ki in range(kmax)) <= t)
        m.minimize(t)
        # warm start from the hint
        hp = hint[layer].reshape(g, s)
        cnt = np.bincount(hint[layer], minlength=e)
        for i in range(e):
            for ki, k in enumerate(ks):
                on = int(cnt[i] == k)
                m.add_hint(z[i][ki], on)
                for j in range(g):
                    m.add_hint(y[i][j][ki], int((hp[j] == i).sum()) if on else 0)
        solver = cp_model.CpSolver()
        solver.parameters.num_workers = 1
        solver.parameters.max_deterministic_time = max(0.05, time_budget_s / num_layers)
        solver.parameters.random_seed = 0
        status = solver.solve(m)
        if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            bound_total += solver.best_objective_bound / SCALE
            optimal += int(status == cp_model.OPTIMAL)
            slots = []
            for j in range(g):
                for i in range(e):
                    for ki in range(kmax):
                        slots += [i] * int(solver.value(y[i][j][ki]))
            out[layer] = np.array(slots, dtype=np.int64)
    return out, {"optimalLayers": optimal, "cpsatBoundSeconds": bound_total}
