"""Incremental re-placement: recover most of the gain of a full re-solve while moving few experts.

Role: when loads or GPU speeds drift, the operator asks for a better placement *close to* the one in
service, because every changed slot means copying an expert's weights (44 MB for DeepSeek-V3 in FP8)
onto a GPU while it serves. ``moves`` counts physical slots whose logical expert changed.

Method, in two steps:

1. **Trajectories.** From the current placement every layer walks greedily, all layers at once: each
   step takes the layer's best swap (2 slots change) or replica re-target (1 slot changes), whichever
   gains more per changed slot. The gain is the drop of the layer's time (its slowest GPU); a move that
   only lowers the slowest GPU while another ties with it is valued at ``TIE_PROGRESS_WEIGHT`` of that
   drop, which lets a layer cross such plateaus. A layer stops when no move improves it, after ``P``
   steps, or when the work budget ends. Slots put back to their original expert cost nothing.
2. **Choice.** Each layer's trajectory is a list of (slots changed, time saved) points; their upper
   concave hulls are merged, best ratio first, as in a fractional knapsack, and taken while they fit in
   ``max_moves``. Without a cap they are taken down to the knee of that merged curve: while a step
   gains at least ``KNEE`` times the walks' average gain per changed slot (their whole gain over all
   their slots), and at least ``min_gain`` of the current step time per slot. Each layer is then
   replayed up to its chosen point.

Layers are independent, so this spends the move budget where it buys the most step time, whichever
layers those are. The result is never slower than the current placement under the new inputs.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import numpy as np

from vibe.placement.cost import Placement, check_shapes
from vibe.placement.curves import Fleet
from vibe.placement.engine import Result, make_result
from vibe.placement.errors import PlacementError
from vibe.placement.search import EPS, EVALS_PER_SECOND, SearchState

#: Default stop without ``max_moves``: a step must gain this fraction of the step time per slot it
#: changes (on the hull, so a plateau followed by a gain counts as their average)...
MIN_GAIN = 1e-6

#: ... and this fraction of the walks' average gain per changed slot: the knee of the trade-off, past
#: which copies buy little (on the DeepSeek-V3 benchmark it keeps 15-40 of 288 slots per layer and
#: recovers 80-98 % of a full re-solve's gain; see benchmarks/results/placement.md).
KNEE = 0.25

#: Weight of "the slowest GPU got faster" when the layer's time itself cannot move (ties).
TIE_PROGRESS_WEIGHT = 1e-3


def replace_incremental(
    current: Placement,
    loads: np.ndarray,
    fleet: Fleet,
    *,
    max_moves: int | None = None,
    time_budget_s: float = 1.0,
    min_gain: float | None = None,
) -> Result:
    """A placement near ``current`` for new loads and/or curves (see the module docstring).

    Args:
        current: the placement in service.
        loads: [L, E] new tokens per expert per step.
        fleet: the GPUs (same count and order as ``current``) with their current curves.
        max_moves: at most this many slots may differ from ``current`` (None: no cap; ``min_gain`` decides).
        time_budget_s: search budget, as a deterministic work budget (see ``search.py``).
        min_gain: take a step only if it gains at least this fraction of the step time per changed slot
            (default ``MIN_GAIN`` without ``max_moves``, 0 with it). Without ``max_moves`` a step must
            also reach the knee (``KNEE``, see the module docstring).
    Returns:
        Result with policy "incremental"; ``moves`` = slots changed, ``moved_experts`` = expert copies.
    """
    started = time.perf_counter()
    if not isinstance(current, Placement):
        raise PlacementError("InvalidPlacement", "the current placement must be a vibe.placement.Placement")
    loads = check_shapes(loads, fleet, current.slots_per_gpu, current)
    if max_moves is not None and (
        isinstance(max_moves, bool) or not isinstance(max_moves, (int, np.integer)) or max_moves < 0
    ):
        raise PlacementError(
            "InvalidPlacement", f"max_moves must be a non-negative integer, not {max_moves!r}"
        )
    if min_gain is None:
        min_gain = MIN_GAIN if max_moves is None else 0.0
    s = current.slots_per_gpu
    cap = current.num_slots if max_moves is None else min(int(max_moves), current.num_slots)
    steps, moves, times, converged = _trajectories(
        SearchState(loads, fleet.table, current.phy2log, s),
        current.by_gpu(),
        cap,
        time_budget_s * EVALS_PER_SECOND,
    )
    step_time = float(times[:, 0].sum())
    limit = np.inf if max_moves is None else int(max_moves)
    chosen = _choose(moves, times, limit, min_gain * step_time, knee=KNEE if max_moves is None else 0.0)
    state = SearchState(loads, fleet.table, current.phy2log, s)
    _replay(state, steps, chosen)
    placement = Placement(state.phy2log(), s, current.num_experts)
    return make_result("incremental", placement, loads, fleet, started, current=current, converged=converged)


def _trajectories(
    state: SearchState, orig: np.ndarray, cap: int, max_evals: float
) -> tuple[list[list[tuple[Any, ...]]], np.ndarray, np.ndarray, bool]:
    """Walk every layer greedily from the current placement (all layers batched).

    Returns:
        steps: per layer, the moves taken in order; moves: [L, K+1] slots differing from ``orig``
        after k steps (padded with the last value); times: [L, K+1] layer time after k steps (padded);
        converged: False if the work budget ended a walk.
    """
    num_layers = state.T.shape[0]
    rows_all = np.arange(num_layers)
    steps: list[list[tuple[Any, ...]]] = [[] for _ in range(num_layers)]
    moves = [[0] for _ in range(num_layers)]
    times = [[float(t)] for t in state.layer_times()]
    active = np.ones(num_layers, dtype=bool)
    converged = True
    while active.any():
        if state.evals >= max_evals:
            converged = False
            break
        layers = rows_all[active]
        a = layers.size
        rows = np.arange(a)
        T = state.T[layers]
        tmax = T.max(axis=1)
        now_diff = (state.phy[layers] != orig[layers]).sum(axis=(1, 2))

        # best swap per layer: value and slot changes
        sw, b, i, h, j = state.best_swaps(layers)
        rest = T.copy()
        rest[rows, b] = -np.inf
        rest[rows, h] = -np.inf
        sw_max = np.maximum(sw, rest.max(axis=1))
        x = state.phy[layers, b, i]
        y = state.phy[layers, h, j]
        sw_delta = _delta(orig[layers], state.phy[layers], rows, [(b, i, y), (h, j, x)])
        sw_ok = np.isfinite(sw) & (sw < tmax * (1 - EPS))
        sw_value = np.where(sw_ok, (tmax - sw_max) + TIE_PROGRESS_WEIGHT * (tmax - sw), -np.inf)

        # best re-target per layer
        rt, ga, sa, ry, rt_max = state.best_retargets(layers, with_layer_max=True)
        rt_delta = _delta(orig[layers], state.phy[layers], rows, [(ga, sa, ry)])
        rt_ok = np.isfinite(rt) & (rt < tmax * (1 - EPS))
        rt_value = np.where(rt_ok, (tmax - rt_max) + TIE_PROGRESS_WEIGHT * (tmax - rt), -np.inf)

        sw_rate = _rate(sw_value, sw_delta)
        rt_rate = _rate(rt_value, rt_delta)
        use_rt = (rt_rate > sw_rate) | ((rt_rate == sw_rate) & (rt_value > sw_value))
        value = np.where(use_rt, rt_value, sw_value)
        after = now_diff + np.where(use_rt, rt_delta, sw_delta)
        go = (value > 0) & (after <= cap)
        for k in np.flatnonzero(~go):
            active[layers[k]] = False
        do_sw = go & ~use_rt
        do_rt = go & use_rt
        if do_sw.any():
            state.apply_swaps(layers[do_sw], b[do_sw], i[do_sw], h[do_sw], j[do_sw])
        if do_rt.any():
            state.apply_retargets(layers[do_rt], ga[do_rt], sa[do_rt], ry[do_rt])
        new_t = state.T[layers].max(axis=1)
        for k in np.flatnonzero(go):
            layer = int(layers[k])
            if do_sw[k]:
                steps[layer].append(("swap", int(b[k]), int(i[k]), int(h[k]), int(j[k])))
            else:
                steps[layer].append(("retarget", int(ga[k]), int(sa[k]), int(ry[k])))
            moves[layer].append(int(after[k]))
            times[layer].append(float(new_t[k]))
            if len(steps[layer]) >= state.phy.shape[1] * state.S:
                active[layer] = False
    width = max(len(m) for m in moves)
    pad = np.array([m + [m[-1]] * (width - len(m)) for m in moves], dtype=np.int64)
    padt = np.array([t + [t[-1]] * (width - len(t)) for t in times])
    return steps, pad, padt, converged


def _choose(
    moves: np.ndarray, times: np.ndarray, limit: float, min_gain_s: float, *, knee: float
) -> np.ndarray:
    """[L] steps to keep per layer: merge the layers' concave hulls of (moves, gain), best ratio first.

    Args:
        moves, times: [L, K+1] from ``_trajectories``.
        limit: most slots that may change in total; min_gain_s: least seconds gained per changed slot;
        knee: least gain per changed slot as a fraction of the hulls' average (their total gain over
            their total slots changed).
    """
    num_layers = moves.shape[0]
    increments = []  # (ratio, layer, step index at the end of the increment, d_moves)
    chosen = np.zeros(num_layers, dtype=np.int64)
    used = 0
    for layer in range(num_layers):
        gain = times[layer, 0] - times[layer]
        hull = _hull(moves[layer], gain)
        chosen[layer] = hull[0][2]  # the best point that changes no slot (usually step 0)
        used += hull[0][0]
        for (m0, g0, _), (m1, g1, k1) in itertools.pairwise(hull):
            increments.append(((g1 - g0) / (m1 - m0), layer, k1, m1 - m0))
    increments.sort(key=lambda t: (-t[0], t[1], t[2]))
    if increments:
        gained = sum(ratio * dm for ratio, _, _, dm in increments)
        min_gain_s = max(min_gain_s, knee * gained / sum(dm for *_, dm in increments))
    blocked = np.zeros(num_layers, dtype=bool)
    for ratio, layer, k, dm in increments:
        if blocked[layer]:
            continue
        if ratio < min_gain_s or ratio <= 0 or used + dm > limit:
            blocked[layer] = True  # its later increments build on this one
            continue
        used += dm
        chosen[layer] = k
    return chosen


def _hull(m: np.ndarray, g: np.ndarray) -> list[tuple[int, float, int]]:
    """Upper concave hull of a layer's (moves, gain) points, as (moves, gain, step), from its best free point.

    Stopping after step k costs ``m[k]`` changed slots (it can dip when slots return to their original
    expert) and gains ``g[k]`` (non-decreasing in k).
    """
    order = sorted(range(m.size), key=lambda k: (int(m[k]), -g[k], k))
    frontier: list[tuple[int, float, int]] = []
    for k in order:  # cheapest first; keep a point only if it gains more than every cheaper one
        if not frontier or g[k] > frontier[-1][1]:
            frontier.append((int(m[k]), float(g[k]), k))
    hull: list[tuple[int, float, int]] = []
    for p in frontier:
        while len(hull) >= 2:
            (m0, g0, _), (m1, g1, _) = hull[-2], hull[-1]
            if (g1 - g0) * (p[0] - m0) <= (p[1] - g0) * (m1 - m0):  # hull[-1] under the chord
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def _replay(state: SearchState, steps: list[list[tuple[Any, ...]]], chosen: np.ndarray) -> None:
    """Apply each layer's first ``chosen[l]`` steps, step by step across layers."""
    for k in range(int(chosen.max(initial=0))):
        take = [layer for layer in range(len(steps)) if chosen[layer] > k]
        swaps = [(layer, steps[layer][k]) for layer in take if steps[layer][k][0] == "swap"]
        rets = [(layer, steps[layer][k]) for layer in take if steps[layer][k][0] == "retarget"]
        if swaps:
            lay = np.array([layer for layer, _ in swaps])
            args = np.array([st[1:] for _, st in swaps])
            state.apply_swaps(lay, args[:, 0], args[:, 1], args[:, 2], args[:, 3])
        if rets:
            lay = np.array([layer for layer, _ in rets])
            args = np.array([st[1:] for _, st in rets])
            state.apply_retargets(lay, args[:, 0], args[:, 1], args[:, 2])


def _delta(orig: np.ndarray, now: np.ndarray, rows: np.ndarray, changes: list[tuple[Any, ...]]) -> np.ndarray:
    """[A] change in slots differing from ``orig`` if slots (g, s) take experts e (arrays over layers)."""
    d = np.zeros(rows.size, dtype=np.int64)
    for g, s, e in changes:
        d += (e != orig[rows, g, s]).astype(np.int64) - (now[rows, g, s] != orig[rows, g, s]).astype(np.int64)
    return d


def _rate(value: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Value per changed slot; free moves (delta <= 0) first."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(value > 0, np.where(delta > 0, value / np.maximum(delta, 1), np.inf), -np.inf)
