"""Provable lower bounds on the step time, so every solve can say how far from optimal it might be.

Layers are independent (each has its own placement, and step time is the sum of layer maxima), so the
step bound is the sum of per-layer bounds. For one layer, with loads w [E], G GPUs of S slots
(P = G*S slots, R = P - E redundant), curves t_g, and any feasible placement of layer time T:

Notation. A placement chooses replica counts r_e >= 1 with sum r_e = P; each replica of e is an *item*
of u_e = w_e / r_e tokens, and GPU g holds S items with ``T >= sum_{items on g} t_g(u)``. Every curve
is non-decreasing, t_g(0) = 0 and t_g(n) >= f_g := t_g(0+) for n > 0. Z = #experts with w_e = 0.

(B1) Floors. If Z = 0 every item has u > 0, so every GPU's time is at least S*f_g. In general at least
    K nonzero items exist (K = P if Z = 0, else E - Z) and a GPU holding k of them takes >= k*f_g, so T is
    at least the K-th smallest of the multiset {k*f_g : g, k = 1..S} (fewer pairs than K fit below it).

(B2) Hot experts. An item of e on GPU g costs t_g(w_e/r_e) and, when Z = 0, its GPU also holds S-1 other
    nonzero items costing >= f_g each. So within time T each replica of e can take at most
    ``n(T) = max_g sup{n : t_g(n) + (S-1) f_g [Z=0] <= T}`` tokens, expert e needs >= ceil(w_e / n(T))
    replicas, and T is infeasible if those exceed P. Bisection on T keeps an infeasible lower end.

(B3) Total work. Pick a reference curve t_ref and sigma_g = min_{n>0} t_g(n)/t_ref(n) (exact for
    curves that are scaled copies, as in a fleet of one GPU model). Then
    ``sum_{items on g} t_ref(u) <= T / sigma_g``; summing over GPUs,
    ``H(r) := sum_e r_e t_ref(w_e/r_e) <= T * sum_g 1/sigma_g``. With increments
    ``m_{e,k} = (k+1) t_ref(w_e/(k+1)) - k t_ref(w_e/k)``, ``H(r) = H(1) + sum_e sum_{k<r_e} m_{e,k}``
    is H(1) plus R increments, so ``H(r) >= H(1) + (sum of the R smallest increments over all e, k)``
    whatever r is: no convexity of t is assumed. This is tight in the linear (prefill) regime.

(B4) Slow GPUs first. The k slowest GPUs (largest sigma) hold kS items whose t_ref-cost is at most
    ``T * sum_{j<=k} 1/sigma_(j)``. Among any m items at most R are second-or-later replicas of an expert
    already counted, so they include >= m - R distinct experts; an item of e costs at least
    ``c_e = t_ref(w_e / (R+1))`` and any nonzero item at least f_ref (0 if Z > 0). Hence
    ``Q_m = sum of the (m-R)+ smallest c_e + (m - (m-R)+) f_ref`` bounds the cost of any m items, and
    ``T >= Q_{kS} / sum_{j<=k} 1/sigma_(j)`` for every k. With no redundancy and one slow GPU this is its
    S lightest experts, slowed down: the decode regime's bound.

**Sampled steps** (the expected objective, ``expected_lower_bounds``): the objective is the weighted mean
over sampled steps n of ``sum_l T_{n,l}`` for ONE placement, and every placement's value is at least the
weighted mean of each step's own minimum, so per-step layer bounds averaged with the samples' weights
bound it (B1, B2, B4 here). It is also at least the placement's slowest GPU's *expected* time, to which
B3's argument applies with expected item costs: the R smallest *expected* increments (one partition for
all steps, and never below the mean of per-step B3s). The layer bound is the larger of the two.
Each step's loads are integers and its replicas split as the engine splits them, so an item may
carry no tokens although its expert has some (``round-robin``: 1 token over 2 replicas). The bounds are
then taken with ``split``: (B1) counts only K = E - Z nonzero items and (B2) no floors of other items;
(B3) prices r replicas of e as the split does, ``h_e(r) = (w mod r) t(w//r + 1) + (r - w mod r) t(w//r)``
for ``round-robin`` (the increment argument needs no convexity, so it holds as is), and for
``sglang-static``, whose shares depend on where the replicas are, by ``max(f [w > 0], m w)`` with
``m = min_{n>0} t_ref(n) / n`` whatever r is; (B4) prices an item of e at ``t_ref(w // (R+1))``
(``round-robin``) or leaves the bound out (``sglang-static``), with no floor.

**Weighted replica split** (``split="weighted"``, ``split.py``): the shares are the planner's choice, so
an item may carry any part of its expert's tokens, none included: the bounds are taken as for
``sglang-static``, whose shares are arbitrary too (B1 counts K = E - Z items, B2 no floors of other
items, B3 prices e's replicas at ``max(f [w > 0], m w)``, no B4): they hold for every split.

The layer bound is max(B1..B4) (each is a necessary condition), shaved by a relative 1e-9 so rounding in
the evaluator can never put a placement below it. B3 and B4 are taken over a few reference curves (one
per distinct curve shape in the fleet) and the best kept.
"""

from __future__ import annotations

import numpy as np

from vibe.placement.cost import check_shapes
from vibe.placement.curves import CurveTable, Fleet
from vibe.placement.routing import Routing

#: Relative slack applied to every bound, covering floating-point rounding in the evaluator.
ROUNDING_SLACK = 1e-9

#: At most this many reference curves are tried for B3/B4 (one per distinct curve shape).
MAX_REFERENCES = 4

#: Splits whose replicas' shares may be anything (the bounds that hold for every split).
ANY_SPLIT = ("sglang-static", "weighted")


def lower_bound(loads: np.ndarray, fleet: Fleet, slots_per_gpu: int) -> float:
    """A provably valid lower bound on the step time of any placement (seconds); see the module doc."""
    loads = check_shapes(loads, fleet, slots_per_gpu)
    return float(layer_lower_bounds(loads, fleet.table, slots_per_gpu).sum())


def layer_lower_bounds(
    loads: np.ndarray, table: CurveTable, slots_per_gpu: int, split: str = "even"
) -> np.ndarray:
    """[L] float64 lower bounds on each layer's time, for validated [L, E] loads whose replicas split as
    ``split`` says (``even``: the mean-load model; see the module docstring for the others)."""
    s = slots_per_gpu
    b = np.maximum(_floor_bound(loads, table, s, split), _expert_bound(loads, table, s, split))
    for ref in _reference_gpus(table):
        sigma = _speed_ratios(table, ref)
        b = np.maximum(b, _work_bound(loads, table, s, ref, sigma, split))
        if split not in ANY_SPLIT:
            b = np.maximum(b, _slow_gpus_bound(loads, table, s, ref, sigma, split))
    return b * (1.0 - ROUNDING_SLACK)


def expected_lower_bounds(
    routing: Routing, table: CurveTable, slots_per_gpu: int, split: str | None = None
) -> np.ndarray:
    """[L] float64 lower bounds on each layer's expected time under the expected objective (module
    docstring): the larger of the sampled steps' own B1, B2, B4 averaged with the samples' weights, and
    B3 on expected work (``_expected_work_bound``). ``split`` overrides ``routing.dispatch``
    (``weighted``: a bound for any split)."""
    s, split = slots_per_gpu, split or routing.dispatch
    refs = [(ref, _speed_ratios(table, ref)) for ref in _reference_gpus(table)]
    per_step = np.zeros(routing.counts.shape[1])
    for w, counts in zip(routing.weights, routing.counts, strict=True):
        loads = counts.astype(np.float64)
        b = np.maximum(_floor_bound(loads, table, s, split), _expert_bound(loads, table, s, split))
        if split not in ANY_SPLIT:
            for ref, sigma in refs:
                b = np.maximum(b, _slow_gpus_bound(loads, table, s, ref, sigma, split))
        per_step += w * b
    work = max(
        (_expected_work_bound(routing, table, s, ref, sigma, split) for ref, sigma in refs), key=np.sum
    )
    return np.maximum(per_step, work) * (1.0 - ROUNDING_SLACK)


def _expected_work_bound(
    routing: Routing, table: CurveTable, s: int, ref: int, sigma: np.ndarray, split: str
) -> np.ndarray:
    """(B3) [L] on expected work: whatever the placement, its expected layer time is at least its slowest
    GPU's expected time, so B3's argument holds with each item's expected reference cost; the work of r
    replicas of e, ``E[h_e(r)]``, is H(1) plus r - 1 expected increments, and the R smallest of those over
    all (e, k) bound it from below as in B3. (Per step this would be the mean of per-step minima, which
    is never larger, and costs a partition per step.)"""
    num_layers, e = routing.shape
    redundant = table.num_gpus * s - e
    base = np.zeros((num_layers, e))
    inc = np.zeros((num_layers, e, max(redundant, 0)))
    k = np.arange(1, redundant + 2, dtype=np.float64)  # replica counts 1..R+1
    if split in ANY_SPLIT:  # any split: r replicas of w tokens cost at least max(f, m w)
        m = min(float((table.y[ref] / table.x).min()), float(table.slope[ref, -1]))
    for w, counts in zip(routing.weights, routing.counts, strict=True):
        value, which = np.unique(counts, return_inverse=True)  # [U], [L*E]: price each count once
        value = value.astype(np.float64)
        if split in ANY_SPLIT:
            base += w * np.where(value > 0, np.maximum(table.floor[ref], m * value), 0.0)[which].reshape(
                num_layers, e
            )
            continue
        if split == "round-robin":  # (w mod k) replicas of w//k + 1 tokens, the rest of w//k
            q, rem = np.divmod(value[:, None], k)
            h = rem * table(ref, q + 1) + (k - rem) * table(ref, q)
        else:
            h = k * table(ref, value[:, None] / k)  # [U, R+1]: k * t_ref(w/k)
        base += w * h[which, 0].reshape(num_layers, e)
        if redundant > 0:
            inc += w * np.diff(h, axis=1)[which].reshape(num_layers, e, redundant)
    extra = np.zeros(num_layers)
    if redundant > 0 and split not in ANY_SPLIT:
        flat = inc.reshape(num_layers, -1)
        extra = np.partition(flat, redundant - 1, axis=1)[:, :redundant].sum(axis=1)
    return (base.sum(axis=1) + extra) / (1.0 / sigma).sum()


def _floor_bound(loads: np.ndarray, table: CurveTable, s: int, split: str = "even") -> np.ndarray:
    """(B1) [L]: the K-th smallest k*f_g, K = number of items that must carry tokens."""
    e = loads.shape[1]
    p = table.num_gpus * s
    zeros = (loads == 0).sum(axis=1)
    k_needed = np.where((zeros == 0) & (split == "even"), p, e - zeros)  # [L]
    cands = np.sort((np.arange(1, s + 1)[:, None] * table.floor[None, :]).ravel())  # [P]
    return np.where(k_needed > 0, cands[np.maximum(k_needed, 1) - 1], 0.0)


def _expert_bound(
    loads: np.ndarray, table: CurveTable, s: int, split: str = "even", iters: int = 64
) -> np.ndarray:
    """(B2) [L]: the hot experts' replicas within T.

    Whether T is feasible depends on T only through the tokens one replica may take, so first find
    n* = the least per-replica tokens with ``sum_e max(1, ceil(w_e / n*)) <= P`` (bisection on n, keeping
    an infeasible lower end n_lo <= n*), then T >= min_g t_g(n_lo) + (S-1) f_g [Z = 0].
    """
    num_layers = loads.shape[0]
    p = table.num_gpus * s
    positive = np.asarray(loads > 0)
    lo = np.zeros(num_layers)
    hi = loads.max(axis=1) + 1.0  # one replica each: feasible since P >= E
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        need = np.where(positive, np.maximum(np.ceil(loads / mid[:, None] * (1 - 1e-12)), 1.0), 1.0)
        feasible = need.sum(axis=1) <= p
        hi = np.where(feasible, mid, hi)
        lo = np.where(feasible, lo, mid)
    full = np.asarray(positive.all(axis=1)) & (split == "even")
    others = np.where(full[:, None], (s - 1) * table.floor[None, :], 0.0)  # [L, G]
    at_lo = table.all_gpus(lo).T  # [L, G]
    return np.where(lo > 0, (at_lo + others).min(axis=1), 0.0)


def _work_bound(
    loads: np.ndarray, table: CurveTable, s: int, ref: int, sigma: np.ndarray, split: str = "even"
) -> np.ndarray:
    """(B3) [L]: least total reference work over all replications, shared by the fleet's speed."""
    num_layers, e = loads.shape
    redundant = table.num_gpus * s - e
    if split in ANY_SPLIT:  # any split: r replicas of w tokens cost at least max(f, m w)
        m = min(float((table.y[ref] / table.x).min()), float(table.slope[ref, -1]))
        work = np.where(loads > 0, np.maximum(table.floor[ref], m * loads), 0.0)
        return work.sum(axis=1) / (1.0 / sigma).sum()
    # h_e(k) depends on w_e and k only: price each distinct load once (sampled loads repeat a lot)
    value, which = np.unique(loads, return_inverse=True)  # [U], [L*E]
    base = table(ref, value)[which].reshape(num_layers, e).sum(axis=1)  # H(1)
    extra = np.zeros(num_layers)
    if redundant > 0:
        k = np.arange(1, redundant + 2, dtype=np.float64)  # replica counts 1..R+1
        if split == "round-robin":  # (w mod k) replicas of w//k + 1 tokens, the rest of w//k
            q, rem = np.divmod(value[:, None], k)
            h = rem * table(ref, q + 1) + (k - rem) * table(ref, q)
        else:
            h = k * table(ref, value[:, None] / k)  # [U, R+1]: k * t_ref(w/k)
        inc = np.diff(h, axis=1)[which].reshape(num_layers, -1)  # [L, E*R]
        smallest = np.partition(inc, redundant - 1, axis=1)[:, :redundant]
        extra = smallest.sum(axis=1)
    return (base + extra) / (1.0 / sigma).sum()


def _slow_gpus_bound(
    loads: np.ndarray, table: CurveTable, s: int, ref: int, sigma: np.ndarray, split: str = "even"
) -> np.ndarray:
    """(B4) [L]: the k slowest GPUs must carry kS items, at least this costly, for every k."""
    num_layers, e = loads.shape
    g = table.num_gpus
    redundant = g * s - e
    least = loads / (redundant + 1) if split == "even" else np.floor(loads / (redundant + 1))
    c = np.sort(table(ref, least), axis=1)  # [L, E] cheapest item of each expert
    csum = np.concatenate([np.zeros((num_layers, 1)), np.cumsum(c, axis=1)], axis=1)  # [L, E+1]
    f_ref = np.where((loads > 0).all(axis=1) & (split == "even"), table.floor[ref], 0.0)  # [L]
    m = np.arange(1, g + 1) * s  # items on the k slowest GPUs, k = 1..G
    distinct = np.clip(m - redundant, 0, e)  # [G]
    q = csum[:, distinct] + (m - distinct)[None, :] * f_ref[:, None]  # [L, G]
    capacity = np.cumsum(np.sort(1.0 / sigma))  # slowest (smallest 1/sigma) first
    return (q / capacity[None, :]).max(axis=1)


def _speed_ratios(table: CurveTable, ref: int) -> np.ndarray:
    """[G] sigma_g = min over n > 0 of t_g(n) / t_ref(n), exactly.

    Both curves are piecewise linear on the same grid (flat below x[0], a ray past x[-1]); on each piece
    their ratio is a linear-fractional function, monotone, so its minimum is at a grid point or at the
    far end, where it tends to the ratio of the last slopes.
    """
    at_points = (table.y / table.y[ref][None, :]).min(axis=1)
    at_infinity = table.slope[:, -1] / table.slope[ref, -1]
    return np.minimum(at_points, at_infinity)


def _reference_gpus(table: CurveTable) -> list[int]:
    """Up to MAX_REFERENCES GPUs with distinct curve shapes (curves equal up to a scale share one)."""
    shape = table.y / table.y[:, -1:]
    reps: list[int] = []
    for g in range(table.num_gpus):
        if not any(np.allclose(shape[g], shape[r], rtol=1e-9, atol=0.0) for r in reps):
            reps.append(g)
    first = np.array(reps)
    if first.size > MAX_REFERENCES:
        first = first[np.linspace(0, first.size - 1, MAX_REFERENCES).round().astype(int)]
    return [int(i) for i in first]
