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

**Under the expected objective** (``routing``: a step mix's sampled steps, as ``solve(..., routing=...)``
optimises), the same two steps price what the full planner prices. Each layer walks twice, each walk with
the whole work budget: on the mix's mean loads (the mean-load walk above, move for move) and under
expected slot costs (``cost.ExpectedReplicaCost``, as ``engine.vibe_expected``'s searches). Every point of
both walks is then priced by the evaluator itself on the sampled steps (``cost.sampled_layer_times``:
integer tokens split as the engine dispatches them, a slot with no tokens costing nothing), and a point
counts as a gain only where it beats the placement in service by ``cost.SIGNIFICANCE_Z`` standard errors
of the paired per-step difference (as the full planner's choice). The hulls are those of (slots changed,
expected time saved) over both walks' points, so the move budget and the knee are spent on the expected
objective, and the result carries the expected objective's times, bound and gap. Pricing every point
costs more than the walks: on DeepSeek-V3, one core, 1.0-1.9 s against 0.1-0.4 s for the mean-load
search at EP 32 and EP 8 with one kind of decode step (16 samples;
``benchmarks/results/placement-expected.md``), about 3 s against 0.2 s at EP 32 with a decode + prefill
mix (32 samples).
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import numpy as np

from vibe.placement.cost import (
    SIGNIFICANCE_Z,
    ExpectedReplicaCost,
    Placement,
    check_routing,
    check_shapes,
    gpus_per_node_for,
    paired_difference,
    sampled_layer_times,
)
from vibe.placement.curves import Fleet
from vibe.placement.engine import Result, make_result, with_replica_split
from vibe.placement.errors import PlacementError
from vibe.placement.routing import Routing
from vibe.placement.search import EPS, EVALS_PER_SECOND, SearchState
from vibe.placement.split import check_split

#: Default stop without ``max_moves``: a step must gain this fraction of the step time per slot it
#: changes (on the hull, so a plateau followed by a gain counts as their average)...
MIN_GAIN = 1e-6

#: ... and this fraction of the walks' average gain per changed slot: the knee of the trade-off, past
#: which copies buy little (on the DeepSeek-V3 benchmark it keeps 15-40 of 288 slots per layer and
#: recovers 80-98 % of a full re-solve's gain; see benchmarks/results/placement.md).
KNEE = 0.25

#: Weight of "the slowest GPU got faster" when the layer's time itself cannot move (ties).
TIE_PROGRESS_WEIGHT = 1e-3

#: Most (sample x placement x slot) entries priced at once when the walks' points are priced on the
#: sampled steps (a few float64 arrays of this many entries).
CHUNK = 4_000_000


def replace_incremental(
    current: Placement,
    loads: np.ndarray,
    fleet: Fleet,
    *,
    max_moves: int | None = None,
    time_budget_s: float = 1.0,
    min_gain: float | None = None,
    routing: Routing | None = None,
    replica_split: str = "even",
) -> Result:
    """A placement near ``current`` for new loads and/or curves (see the module docstring).

    Args:
        current: the placement in service.
        loads: [L, E] new tokens per expert per step (with ``routing``: the load profile it was drawn from).
        fleet: the GPUs (same count and order as ``current``) with their current curves.
        max_moves: at most this many slots may differ from ``current`` (None: no cap; ``min_gain`` decides).
        time_budget_s: search budget, as a deterministic work budget (see ``search.py``).
        min_gain: take a step only if it gains at least this fraction of the step time per changed slot
            (default ``MIN_GAIN`` without ``max_moves``, 0 with it). Without ``max_moves`` a step must
            also reach the knee (``KNEE``, see the module docstring).
        routing: sampled steps of the deployment's step mix (``routing.sample_routing`` of ``loads``):
            choose and price by the expected step time instead of the mean-load one (module docstring).
        replica_split: ``even``, or ``weighted``: the moves are chosen as for ``even``, then the result
            carries per-slot shares chosen for the objective (``engine.with_replica_split``), priced with
            them.
    Returns:
        Result with policy "incremental"; ``moves`` = slots changed, ``moved_experts`` = expert copies;
        with ``routing``, its times, bound and gap are the expected objective's (``info`` says so).
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
    check_split(replica_split)
    if min_gain is None:
        min_gain = MIN_GAIN if max_moves is None else 0.0
    s = current.slots_per_gpu
    cap = current.num_slots if max_moves is None else min(int(max_moves), current.num_slots)
    limit = np.inf if max_moves is None else int(max_moves)
    knee = KNEE if max_moves is None else 0.0
    budget = time_budget_s * EVALS_PER_SECOND
    if routing is not None:
        check_routing(routing, loads)
        phy, converged = _expected_choice(current, routing, fleet, cap, limit, min_gain, knee, budget)
    else:
        steps, moves, times, converged = _trajectories(
            SearchState(loads, fleet.table, current.phy2log, s), current.by_gpu(), cap, budget
        )
        chosen = _choose(moves, times, limit, min_gain * float(times[:, 0].sum()), knee=knee)
        phy = _apply(current.by_gpu(), steps, chosen)
    placement = Placement(phy.reshape(phy.shape[0], -1), s, current.num_experts)
    info: dict[str, Any] = {}
    if replica_split != "even":
        placement = with_replica_split(placement, loads, fleet, replica_split, routing=routing)
        info["replicaSplit"] = replica_split
    return make_result(
        "incremental",
        placement,
        loads,
        fleet,
        started,
        current=current,
        converged=converged,
        info=info,
        routing=routing,
    )


def _expected_choice(
    current: Placement,
    routing: Routing,
    fleet: Fleet,
    cap: int,
    limit: float,
    min_gain: float,
    knee: float,
    budget: float,
) -> tuple[np.ndarray, bool]:
    """[L, G, S] the chosen placement under the expected objective (module docstring), and whether both
    walks converged within the budget."""
    s, table = current.slots_per_gpu, fleet.table
    orig = current.by_gpu()
    per_node = gpus_per_node_for(fleet) if routing.dispatch == "sglang-static" else None
    walks = []
    converged = True
    for pricer in (None, ExpectedReplicaCost(routing, table)):
        state = SearchState(routing.mean_loads_of_mix(), table, current.phy2log, s, pricer=pricer)
        steps, moves, _, ok = _trajectories(state, orig, cap, budget)
        converged &= ok
        walks.append((steps, moves))
    moves = np.concatenate([m for _, m in walks], axis=1)  # [L, K]: every point of both walks
    sampled = _sampled_points(orig, walks, routing, table, s, per_node)  # [N, L, K]
    gain, se = paired_difference(np.moveaxis(sampled - sampled[:, :, :1], 2, 0), routing)  # [K, L]
    gain, se = gain.T, se.T  # [L, K]: < 0 is faster than the placement in service
    times = np.where(gain + SIGNIFICANCE_Z * se < 0, gain, 0.0)  # noise is no gain: the time in service
    times = times + np.tensordot(routing.weights, sampled[:, :, 0], axes=1)[:, None]
    chosen = _choose(moves, times, limit, min_gain * float(times[:, 0].sum()), knee=knee)
    width = walks[0][1].shape[1]
    out = orig.copy()
    for w, (steps, _) in enumerate(walks):
        mine = (chosen >= width) if w else (chosen < width)
        take = np.where(mine, chosen - w * width, 0)
        part = _apply(orig, steps, take)
        out[mine] = part[mine]
    return out, converged


def _sampled_points(
    orig: np.ndarray,
    walks: list[tuple[list[list[tuple[Any, ...]]], np.ndarray]],
    routing: Routing,
    table: Any,
    s: int,
    per_node: int | None,
) -> np.ndarray:
    """[N, L, K] each layer's time in each sampled step at every point of the walks (their columns side
    by side, as in the walks' ``moves``; a padded column repeats its walk's last point)."""
    num_layers = orig.shape[0]
    phys: list[np.ndarray] = []  # the placements to price (each walk's points, in order)
    rows: list[int] = []  # the layer of each
    where: list[tuple[int, int, int]] = []  # (layer, column, index in phys) of every column
    column = 0
    for steps, moves in walks:
        width = moves.shape[1]
        for layer in range(num_layers):
            now = orig[layer].copy()
            points = [now.reshape(-1).copy()]
            for step in steps[layer]:
                _step(now, step)
                points.append(now.reshape(-1).copy())
            phys.extend(points)
            rows.extend([layer] * len(points))
            first = len(phys) - len(points)
            where.extend((layer, column + k, first + min(k, len(points) - 1)) for k in range(width))
        column += width
    phy = np.stack(phys)
    layer_of = np.asarray(rows, dtype=np.int64)
    n, p = routing.counts.shape[0], phy.shape[1]
    per = max(1, CHUNK // (n * p))
    priced = np.concatenate(
        [
            sampled_layer_times(
                phy[a : a + per], routing, table, s, gpus_per_node=per_node, layers=layer_of[a : a + per]
            )
            for a in range(0, len(phys), per)
        ],
        axis=1,
    )  # [N, M]
    out = np.empty((n, num_layers, column))
    idx = np.asarray(where, dtype=np.int64)
    out[:, idx[:, 0], idx[:, 1]] = priced[:, idx[:, 2]]
    return out


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


def _apply(orig: np.ndarray, steps: list[list[tuple[Any, ...]]], chosen: np.ndarray) -> np.ndarray:
    """[L, G, S] ``orig`` with each layer's first ``chosen[l]`` steps applied."""
    out = orig.copy()
    for layer, k in enumerate(chosen):
        for step in steps[layer][: int(k)]:
            _step(out[layer], step)
    return out


def _step(phy: np.ndarray, step: tuple[Any, ...]) -> None:
    """Apply one walk step to a layer's [G, S] placement in place."""
    if step[0] == "swap":
        _, b, i, h, j = step
        phy[b, i], phy[h, j] = phy[h, j], phy[b, i]
    else:
        _, g, slot, y = step
        phy[g, slot] = y


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
