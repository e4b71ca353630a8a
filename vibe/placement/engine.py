"""``solve``: one entry point for every policy, returning a ``Result`` priced by the one evaluator.

Role: the CLI, the benchmark and the operator's reconciler call ``solve`` (or ``replace_incremental``,
in ``incremental.py``) and get back the placement with its predicted times, its lower bound and the gap,
so that policies are compared on exactly the same footing.

``vibe`` (the default): replicate by EPLB's rule, pack with each GPU's own curve (earliest finish
time), keep per layer whichever of that and the token-balanced packing is faster, then local search
(swaps and replica re-targets, ``search.py``). Starting from the token-balanced layout where it is better
and never accepting a worsening move makes ``vibe`` never slower than ``token-balanced``, layer by layer.

With ``routing`` (``routing.py``) the objective is the **expected** step time over the deployment's step
mix under sampled routing (``cost.py``), and ``vibe`` builds candidates and keeps, per layer, the one with
the least expected time among those no slower than token-balanced under the mean-load evaluator (averaged
over the mix, ``cost.mean_load_layer_times``): so it is never worse than token-balanced under either
objective. The candidates: token-balanced; the mean-load ``vibe`` placement of each kind of step's mean
loads; and local search under expected slot costs (``cost.ExpectedReplicaCost``) from the best of those and
from an earliest-finish packing by expected costs. The result's bound is the per-sample bounds averaged
(``bounds.expected_lower_bounds``). Other policies build what they always build, priced the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np

from vibe.placement import policies
from vibe.placement.bounds import expected_lower_bounds, layer_lower_bounds
from vibe.placement.cost import (
    EPS_GUARD,
    SIGNIFICANCE_Z,
    ExpectedReplicaCost,
    Placement,
    check_routing,
    check_shapes,
    evaluate,
    evaluation_of,
    gpu_times_of,
    gpus_per_node_for,
    mean_load_layer_times,
    paired_difference,
    sampled_layer_times,
)
from vibe.placement.curves import Fleet
from vibe.placement.errors import PlacementError
from vibe.placement.routing import Routing
from vibe.placement.search import EVALS_PER_SECOND, SearchState, improve, kick
from vibe.placement.split import check_split, choose_weights, weighted_gpu_times

#: The name of a policy ``solve`` knows (the MoEDeployment CRD's ``spec.policy`` enum is exactly these).
PolicyName = Literal["round-robin", "linear", "token-balanced", "vibe", "exact"]

#: Policies a comparison table shows by default (``exact`` needs OR-Tools and a small instance).
COMPARED: tuple[PolicyName, ...] = ("round-robin", "linear", "token-balanced", "vibe")


@dataclass
class Result:
    """A placement with its predicted performance.

    Attributes:
        policy: the policy that produced it.
        placement: the placement.
        step_time_s: predicted model step time (sum over layers of the slowest GPU).
        layer_times_s: [L] float64 per-layer times.
        imbalance: mean over layers of max / mean GPU time.
        lower_bound_s: a provable lower bound on ``step_time_s`` for any placement of these inputs.
        gap: ``step_time_s / lower_bound_s - 1`` (how far from optimal it can at most be).
        solve_seconds: wall-clock seconds the solve took (not part of any output file: not deterministic).
        moves: physical slots whose logical expert differs from the given current placement (each is one
            expert's weights copied onto a GPU); 0 without a current placement.
        moved_experts: (layer, GPU, expert) copies new on their GPU (moves that are a reshuffle of slots
            within one GPU need no copy and are not counted here).
        gpu_times_s: [L, G] float64 per-GPU times.
        layer_bounds_s: [L] float64 per-layer lower bounds (their sum is ``lower_bound_s``).
        converged: False if the search stopped on its budget rather than at a local optimum.
        info: extra policy-specific facts (e.g. the exact solver's status), JSON-serialisable.
    """

    policy: str
    placement: Placement
    step_time_s: float
    layer_times_s: np.ndarray
    imbalance: float
    lower_bound_s: float
    gap: float
    solve_seconds: float
    moves: int = 0
    moved_experts: int = 0
    gpu_times_s: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    layer_bounds_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    converged: bool = True
    info: dict[str, Any] = field(default_factory=dict)


def solve(
    loads: np.ndarray,
    fleet: Fleet,
    slots_per_gpu: int,
    policy: str = "vibe",
    *,
    time_budget_s: float = 1.0,
    seed: int = 0,
    current: Placement | None = None,
    routing: Routing | None = None,
    replica_split: str = "even",
) -> Result:
    """Place experts on the fleet's GPUs with a policy and price the result.

    Args:
        loads: [L, E] tokens per expert per forward step (see ``read_loads``).
        fleet: the GPUs in rank order with their curves (see ``read_fleet``).
        slots_per_gpu: S, physical expert slots per GPU per layer; ``S * G >= E``.
        policy: one of ``POLICIES``.
        time_budget_s: search budget for ``vibe`` (as a deterministic work budget, see ``search.py``)
            and ``exact`` (as CP-SAT's deterministic time).
        seed: the seed of ``vibe``'s kicks (every policy is deterministic for a given seed).
        current: the placement in service, if any: the result's slots are then ordered within each GPU
            to keep experts where they already are, and ``moves`` counts the copies needed.
        routing: sampled steps of the deployment's step mix (``routing.sample_routing`` of these loads):
            optimise and price the expected step time instead of the mean-load one (module docstring).
        replica_split: ``even`` (every engine's split) or ``weighted``: the placement is built as for
            ``even``, then carries per-slot shares (``Placement.weights``, ``split.choose_weights``) chosen
            for the objective; ``vibe`` then keeps, per layer, its placement or token-balanced's, each with
            its own weights, whichever is no slower under every objective it is judged on (``_weighted``).
            The bound is then one that holds for any split (``bounds.layer_lower_bounds``).
    Returns:
        Result; ``vibe.engines`` serialises it.
    Raises:
        PlacementError: bad shapes, loads, slots or policy.
    """
    started = time.perf_counter()
    loads = check_shapes(loads, fleet, slots_per_gpu, current)
    if policy not in POLICIES:
        raise PlacementError("UnknownPolicy", f"unknown policy {policy!r} (one of {', '.join(POLICIES)})")
    if not (np.isfinite(time_budget_s) and time_budget_s > 0):
        raise PlacementError(
            "InvalidBudget",
            f"the solve time budget must be a positive number of seconds, not {time_budget_s}",
        )
    split = check_split(replica_split)
    s = slots_per_gpu
    if routing is not None:
        check_routing(routing, loads)
        if routing.dispatch == "sglang-static":
            gpus_per_node_for(fleet)  # refuse a fleet SGLang could not lay out, before any work
    if routing is not None and policy == "vibe":
        built = vibe_expected(loads, fleet, s, routing, time_budget_s=time_budget_s, seed=seed)
    else:
        built = POLICIES[policy](loads, fleet, s, time_budget_s, seed)
    if split == "weighted" and routing is not None and routing.dispatch == "sglang-static":
        raise PlacementError(
            "InvalidDispatch",
            "the weighted replica split is vibe's own dispatch: SGLang's static dispatch cannot take weights",
        )
    if split == "weighted":
        phy, weights = _weighted(built.phy, policy, loads, fleet, s, routing)
        placement = Placement(phy, s, loads.shape[1], weights)
        built = Built(phy, built.converged, {**built.info, "replicaSplit": split})
    else:
        placement = Placement(built.phy, s, loads.shape[1])
    if current is not None:
        placement = align_to(placement, current)
    return make_result(
        policy,
        placement,
        loads,
        fleet,
        started,
        current=current,
        converged=built.converged,
        info=built.info,
        bounds=built.bounds if routing is None and split == "even" else None,
        routing=routing,
    )


def _weighted(
    phy: np.ndarray, policy: str, loads: np.ndarray, fleet: Fleet, s: int, routing: Routing | None
) -> tuple[np.ndarray, np.ndarray]:
    """([L, P] expert map, [L, P] shares) of ``policy``'s placement under the weighted split.

    ``vibe`` keeps, per layer, its own layer or token-balanced's (each with its own weights), whichever
    is no slower under the mean-load evaluator (averaged over the step mix with ``routing``) and, with
    ``routing``, on the sampled steps: so it stays never worse than token-balanced with the same split.
    """
    table = fleet.table
    weights = choose_weights(phy, loads, table, s, routing=routing)
    if policy != "vibe":
        return phy, weights
    tb = token_balanced(loads, len(fleet), s)
    tb_w = choose_weights(tb, loads, table, s, routing=routing)
    keep = np.ones(loads.shape[0], dtype=bool)
    kinds = (
        [(1.0, loads)] if routing is None else list(zip(routing.mix.weights, routing.mean_loads, strict=True))
    )
    mean_v = sum(w * weighted_gpu_times(phy, m, weights, table, s).max(axis=1) for w, m in kinds)
    mean_tb = sum(w * weighted_gpu_times(tb, m, tb_w, table, s).max(axis=1) for w, m in kinds)
    keep &= np.asarray(mean_v <= mean_tb * (1.0 + EPS_GUARD))
    if routing is not None:
        exp_v = evaluate(Placement(phy, s, loads.shape[1], weights), loads, fleet, routing=routing)
        exp_tb = evaluate(Placement(tb, s, loads.shape[1], tb_w), loads, fleet, routing=routing)
        keep &= exp_v.layer_times_s <= exp_tb.layer_times_s * (1.0 + EPS_GUARD)
    return np.where(keep[:, None], phy, tb), np.where(keep[:, None], weights, tb_w)


# ---- the policy registry: name -> how it builds a placement


@dataclass(frozen=True)
class Built:
    """What a policy built: [L, P] phy2log, whether its search converged, facts for ``Result.info``, and
    the per-layer lower bounds when it computed them anyway (``make_result`` computes them otherwise)."""

    phy: np.ndarray
    converged: bool = True
    info: dict[str, Any] = field(default_factory=dict)
    bounds: np.ndarray | None = None


#: A policy: (loads [L, E], fleet, slots per GPU, time budget in seconds, seed) -> what it built.
Policy = Callable[[np.ndarray, Fleet, int, float, int], Built]


def _linear(loads: np.ndarray, fleet: Fleet, s: int, budget: float, seed: int) -> Built:
    return Built(policies.linear(loads.shape[0], loads.shape[1], len(fleet), s))


def _round_robin(loads: np.ndarray, fleet: Fleet, s: int, budget: float, seed: int) -> Built:
    return Built(policies.round_robin(loads.shape[0], loads.shape[1], len(fleet), s))


def _token_balanced(loads: np.ndarray, fleet: Fleet, s: int, budget: float, seed: int) -> Built:
    return Built(token_balanced(loads, len(fleet), s))


def _vibe(loads: np.ndarray, fleet: Fleet, s: int, budget: float, seed: int) -> Built:
    bounds = layer_lower_bounds(loads, fleet.table, s)
    phy, converged = vibe(loads, fleet, s, time_budget_s=budget, seed=seed, bounds=bounds)
    return Built(phy, converged, bounds=bounds)


def _exact(loads: np.ndarray, fleet: Fleet, s: int, budget: float, seed: int) -> Built:
    from vibe.placement.exact import solve_exact

    bounds = layer_lower_bounds(loads, fleet.table, s)
    start, _ = vibe(loads, fleet, s, time_budget_s=budget, seed=seed, bounds=bounds)
    phy, info = solve_exact(loads, fleet.table, s, start, time_budget_s=budget)
    return Built(phy, info=info, bounds=bounds)


#: Policies ``solve`` knows, in the order reports list them (``PolicyName`` spelled as a registry).
POLICIES: dict[str, Policy] = {
    "round-robin": _round_robin,
    "linear": _linear,
    "token-balanced": _token_balanced,
    "vibe": _vibe,
    "exact": _exact,
}
assert tuple(POLICIES) == get_args(PolicyName), "POLICIES and PolicyName must name the same policies"


def token_balanced(loads: np.ndarray, num_gpus: int, slots_per_gpu: int) -> np.ndarray:
    """[L, P] EPLB-style placement: replicate by tokens per replica, pack by tokens."""
    counts = policies.replicate_by_tokens(loads, num_gpus * slots_per_gpu)
    experts, tokens = policies.replicas_heaviest_first(loads, counts)
    return policies.pack_by_tokens(experts, tokens, num_gpus, slots_per_gpu)


def vibe(
    loads: np.ndarray,
    fleet: Fleet,
    slots_per_gpu: int,
    *,
    time_budget_s: float,
    seed: int = 0,
    bounds: np.ndarray | None = None,
) -> tuple[np.ndarray, bool]:
    """[L, P] vibe placement and whether its local search converged within the budget.

    Starts (per layer the fastest is kept): EPLB's replication packed by tokens (the baseline) and by
    time, and work-minimal replication packed by time (better below the knee, where extra replicas of
    cold experts cost only the floor). Then local search, then kicks (``search.kick``) for the layers
    still more than ``KICK_TOLERANCE`` above their lower bound.
    """
    g, s = len(fleet), slots_per_gpu
    table = fleet.table
    ref = int(np.argsort(table.floor, kind="stable")[g // 2])  # a median-speed GPU prices "work"
    starts: list[np.ndarray] = []
    for counts in (
        policies.replicate_by_tokens(loads, g * s),
        policies.replicate_by_work(loads, g * s, table, ref),
    ):
        experts, tokens = policies.replicas_heaviest_first(loads, counts)
        if not starts:
            starts.append(policies.pack_by_tokens(experts, tokens, g, s))
        starts.append(policies.pack_by_time(experts, policies.replica_costs(loads, counts, table), g, s))
    times = np.stack([gpu_times_of(phy, loads, table, s).max(axis=1) for phy in starts])  # [starts, L]
    best = times.argmin(axis=0)
    start = np.stack(starts)[best, np.arange(loads.shape[0])]
    state = SearchState(loads, table, start, s)
    budget = time_budget_s * EVALS_PER_SECOND
    converged = improve(state, budget)
    phy = state.phy2log()
    if converged:
        if bounds is None:
            bounds = layer_lower_bounds(loads, table, s)
        phy = kick(loads, table, s, phy, bounds, np.random.default_rng(seed), budget - state.evals)
    return phy, converged


def vibe_expected(
    loads: np.ndarray,
    fleet: Fleet,
    slots_per_gpu: int,
    routing: Routing,
    *,
    time_budget_s: float,
    seed: int = 0,
) -> Built:
    """vibe under the expected objective (module docstring): candidates, then a per-layer choice.

    Per layer, among the candidates no slower than token-balanced under the mean-load evaluator, the
    default is the one the mean-load evaluator rates fastest (what the mean-load planner would keep), or
    token-balanced where that one is slower on the sampled steps; a candidate replaces it only where the
    sampled steps say it is faster by ``SIGNIFICANCE_Z`` standard errors of the paired difference
    (``cost.paired_difference``), the fastest such one. So the result is never slower than token-balanced
    under either objective, layer by layer.

    The work budget is shared: a quarter to the mean-load solves (the most frequent kind of step, and the
    mix's mean loads), a quarter to the two searches under expected slot costs, half to the swaps priced
    on the samples (``refine.py``) from the chosen candidate of each layer.
    """
    from vibe.placement.refine import refine

    g, s = len(fleet), slots_per_gpu
    table = fleet.table
    per_node = gpus_per_node_for(fleet) if routing.dispatch == "sglang-static" else None
    kinds = len(routing.mix.tokens)
    names = ["token-balanced"]
    cands = [token_balanced(loads, g, s)]
    converged = True
    # mean-load solves: the most frequent kind of step, and with several kinds the mix's mean loads (a
    # solve per kind would cost a full search each on the largest instances)
    top = int(np.argmax(routing.mix.weights))
    means = [(f"vibe@{routing.mix.tokens[top]}", routing.mean_loads[top])]
    if kinds > 1:
        means.append(("vibe@mean", routing.mean_loads_of_mix()))
    for name, mean in means:
        phy, ok = vibe(mean, fleet, s, time_budget_s=time_budget_s / (4 * len(means)), seed=seed)
        names.append(name)
        cands.append(phy)
        converged &= ok

    prices: list[tuple[np.ndarray, np.ndarray]] = []  # each candidate's, priced once for all picks

    def pick(cands: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        prices.extend(
            layer_prices(c, routing, table, s, gpus_per_node=per_node) for c in cands[len(prices) :]
        )
        return choose_priced(cands, prices, routing)

    start, _ = pick(cands)
    cost = ExpectedReplicaCost(routing, table)
    counts = policies.replicate_by_tokens(loads, g * s)
    experts, _ = policies.replicas_heaviest_first(loads, counts)
    layers = np.arange(loads.shape[0])
    costs = np.moveaxis(cost(layers[:, None], np.arange(loads.shape[1])[None, :], counts), 0, 1)  # [L, G, E]
    packed = policies.pack_by_time(experts, costs, g, s)
    budget = time_budget_s * EVALS_PER_SECOND
    for name, phy in (("expected-search", start), ("expected-packing", packed)):
        state = SearchState(loads, table, phy, s, pricer=cost)
        converged &= improve(state, budget / 8)
        names.append(name)
        cands.append(state.phy2log())
    phy, _ = pick(cands)
    phy, ok = refine(phy, routing, table, s, max_evals=budget / 2, gpus_per_node=per_node)
    converged &= ok
    names.append("sampled-swaps")
    cands.append(phy)
    phy, best = pick(cands)
    chosen = {n: int((best == i).sum()) for i, n in enumerate(names) if (best == i).any()}
    return Built(phy, converged, info={"layersFrom": chosen})


def choose_layers(
    cands: list[np.ndarray],
    routing: Routing,
    table: Any,
    slots_per_gpu: int,
    *,
    gpus_per_node: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per layer, the candidate ``vibe_expected`` keeps (its docstring): [L, P] and the index [L].

    Args:
        cands: [L, P] placements; ``cands[0]`` is token-balanced, the guard's reference.
    """
    prices = [layer_prices(c, routing, table, slots_per_gpu, gpus_per_node=gpus_per_node) for c in cands]
    return choose_priced(cands, prices, routing)


def layer_prices(
    phy: np.ndarray, routing: Routing, table: Any, slots_per_gpu: int, *, gpus_per_node: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """What ``choose_layers`` judges a candidate by: ([N, L] its layer times on the sampled steps, [L] its
    mean-load layer times averaged over the mix)."""
    return (
        sampled_layer_times(phy, routing, table, slots_per_gpu, gpus_per_node=gpus_per_node),
        mean_load_layer_times(phy, routing, table, slots_per_gpu),
    )


def choose_priced(
    cands: list[np.ndarray], prices: list[tuple[np.ndarray, np.ndarray]], routing: Routing
) -> tuple[np.ndarray, np.ndarray]:
    """``choose_layers`` on the candidates' ``layer_prices``, taken already."""
    rows = np.arange(cands[0].shape[0])
    sampled = np.stack([p[0] for p in prices])  # [C, N, L]
    mean_t = np.stack([p[1] for p in prices])  # [C, L]
    eligible = mean_t <= mean_t[0] * (1.0 + EPS_GUARD)  # never worse than token-balanced (cands[0])
    default = np.where(eligible, mean_t, np.inf).argmin(axis=0)  # [L]
    expected = np.einsum("n,cnl->cl", routing.weights, sampled)  # [C, L]
    default = np.where(expected[default, rows] <= expected[0] * (1.0 + EPS_GUARD), default, 0)
    base = sampled[default, :, rows].T  # [N, L]
    gain, se = paired_difference(sampled - base[None], routing)  # [C, L]
    better = eligible & (gain + SIGNIFICANCE_Z * se < 0)
    best = np.where(better.any(axis=0), np.where(better, gain, np.inf).argmin(axis=0), default)
    return np.stack(cands)[best, rows], best


def make_result(
    policy: str,
    placement: Placement,
    loads: np.ndarray,
    fleet: Fleet,
    started: float,
    *,
    current: Placement | None = None,
    converged: bool = True,
    info: dict[str, Any] | None = None,
    bounds: np.ndarray | None = None,
    routing: Routing | None = None,
) -> Result:
    """Price a placement and wrap it with its bound (shared by every policy).

    With ``routing``, the times and the bound are the expected objective's (``info`` says so and also
    gives the mean-load step time, ``meanLoadStepTimeSeconds``, averaged over the mix). A placement with
    replica weights is priced with them and bounded by a bound that holds for any split.
    """
    s = placement.slots_per_gpu
    info = dict(info or {})
    split = "even" if placement.weights is None else "weighted"
    if routing is not None:
        ev = evaluate(placement, loads, fleet, routing=routing)
        if bounds is None:
            bounds = expected_lower_bounds(routing, fleet.table, s, split=None if split == "even" else split)
        mean_t = mean_load_layer_times(placement.phy2log, routing, fleet.table, s, weights=placement.weights)
        info.update(routing.describe(), meanLoadStepTimeSeconds=float(mean_t.sum()))
    elif placement.weights is not None:
        ev = evaluate(placement, loads, fleet)
    else:
        ev = evaluation_of(gpu_times_of(placement.phy2log, loads, fleet.table, s))
    if split != "even":
        info["replicaSplit"] = split
    if bounds is None:
        bounds = layer_lower_bounds(loads, fleet.table, s, split=split)
    bound = float(bounds.sum())
    gap = ev.step_time_s / bound - 1.0 if bound > 0 else 0.0
    moves = placement.moves_from(current) if current is not None else 0
    moved = placement.moved_experts_from(current) if current is not None else 0
    return Result(
        policy=policy,
        placement=placement,
        step_time_s=ev.step_time_s,
        layer_times_s=ev.layer_times_s,
        imbalance=ev.imbalance,
        lower_bound_s=bound,
        gap=gap,
        solve_seconds=time.perf_counter() - started,
        moves=moves,
        moved_experts=moved,
        gpu_times_s=ev.gpu_times_s,
        layer_bounds_s=bounds,
        converged=converged,
        info=info,
    )


def with_replica_split(
    placement: Placement, loads: np.ndarray, fleet: Fleet, split: str, *, routing: Routing | None = None
) -> Placement:
    """``placement`` with the replica split ``split``: its weights chosen for the objective (``weighted``,
    ``split.choose_weights``) or none (``even``)."""
    check_split(split)
    loads = check_shapes(loads, fleet, placement.slots_per_gpu, placement)
    weights = None
    if split == "weighted":
        if routing is not None:
            check_routing(routing, loads)
            if routing.dispatch == "sglang-static":
                raise PlacementError(
                    "InvalidDispatch", "SGLang's static dispatch cannot take replica weights"
                )
        weights = choose_weights(
            placement.phy2log, loads, fleet.table, placement.slots_per_gpu, routing=routing
        )
    return Placement(placement.phy2log, placement.slots_per_gpu, placement.num_experts, weights)


def align_to(placement: Placement, current: Placement) -> Placement:
    """The same placement with each GPU's slots reordered to keep experts where ``current`` has them.

    Slot order within a GPU does not change any time, but an expert that stays in its slot needs no copy;
    experts kept on a GPU but in another slot would be a needless copy, so they go back to their slot.
    """
    new = placement.by_gpu()
    old = current.by_gpu()
    num_layers, g, s = new.shape
    perm = np.broadcast_to(np.arange(s), new.shape).copy()  # slot k of a GPU takes its slot perm[k]
    same = (new == old).all(axis=2)
    for layer, gpu in zip(*np.nonzero(~same), strict=True):
        vals = new[layer, gpu]
        want = list(range(s))
        have = old[layer, gpu]
        slots = [-1] * s
        for k in range(s):  # keep matches in place
            match = next((i for i in want if vals[i] == have[k]), None)
            if match is not None:
                want.remove(match)
                slots[k] = match
        rest = iter(want)
        perm[layer, gpu] = [v if v >= 0 else next(rest) for v in slots]
    out = np.take_along_axis(new, perm, axis=2).reshape(num_layers, g * s)
    weights = None
    if placement.weights is not None:
        w = placement.weights.reshape(num_layers, g, s)
        weights = np.take_along_axis(w, perm, axis=2).reshape(num_layers, g * s)
    return Placement(out, placement.slots_per_gpu, placement.num_experts, weights)
