"""The replica split: how an expert's tokens divide over its replicas, even or weighted by the planner.

Role: the option ``solve(..., replica_split=...)`` (``REPLICA_SPLITS``). ``even`` (the default) is what
every engine does today: a slot holding expert e serves ``load_e / r_e`` tokens. ``weighted`` gives each
slot a *share* of its expert's tokens that the planner chooses, so a replica on a fast GPU can serve more
than one on a slow GPU. Only a dispatch that takes weights can run it: vibe's own (the reference EP
layer, ``vibe.measure.reference_ep``); ``vibe.engines`` records which formats can (``Engine.weights``).

Weights: [L, P] float64, ``w[l, p]`` = the share of expert ``phy2log[l, p]``'s tokens slot p serves, >= 0,
an expert's shares summing to 1 (``even_weights``: ``1 / r_e``). Under mean loads slot p serves
``load_e * w``; in a sampled step with c tokens for e, ``c * w`` with the ``even`` dispatch, or with
``round-robin`` (vibe's own dispatch deals whole tokens) an integer within one token of it
(``sampled_weighted_tokens``: equal shares are dealt exactly as ``round-robin``, so even shares price as
the even split). ``sglang-static`` cannot take weights.

Choice (``choose_weights``), water-filling by multiplicative updates, per layer: starting from even,
every round multiplies each replicated slot's share by ``(m_e / T_g) ** alpha``, where ``T_g`` is its
GPU's time in the layer (expected over the samples under the expected objective) and ``m_e`` the mean of
``T`` over the GPUs of e's replicas, then renormalises each expert's shares. Tokens move from replicas
on GPUs that finish late to replicas on GPUs that finish early; at the fixed point the GPUs holding an
expert's replicas finish together (or a share has gone to 0). Per layer the best weights seen are kept
(the objective: the slowest GPU under mean loads, the expected slowest GPU under sampled routing); a
round that makes a layer no better halves its ``alpha``. Even is round 0, and other weights replace it
only where they are faster by a relative ``EPS``: so the chosen weights are never slower than the even
split, layer by layer, on the objective they were chosen for; with identical GPUs that are already
balanced they stay even.

Shapes: N samples, L layers, E experts, G GPUs, S slots per GPU, P = G * S.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import numpy as np

from vibe.placement.curves import CurveTable, numbers_array
from vibe.placement.dispatch import sampled_slot_tokens
from vibe.placement.errors import PlacementError
from vibe.placement.routing import Routing

#: The replica splits ``solve`` knows, the default first (``vibe plan --replica-split``, the CRD's
#: ``spec.placement.replicaSplit``).
ReplicaSplit = Literal["even", "weighted"]
REPLICA_SPLITS: tuple[str, ...] = get_args(ReplicaSplit)

#: Rounds of multiplicative updates per choice, the first step size, and the relative gain a layer's
#: weighted split must show over the best so far to be kept.
ROUNDS = 40
ALPHA = 1.0
EPS = 1e-9

#: How far an expert's shares may sum from 1 in a placement read back (rounding in JSON).
SUM_TOLERANCE = 1e-6


def check_split(split: object) -> str:
    """``split`` if it is a known replica split, else ``PlacementError(InvalidDispatch)``."""
    if split not in REPLICA_SPLITS:
        raise PlacementError(
            "InvalidDispatch", f"unknown replica split {split!r} (one of {', '.join(REPLICA_SPLITS)})"
        )
    return str(split)


def replica_counts(phy2log: np.ndarray, num_experts: int) -> np.ndarray:
    """[L, P] int64: replicas in the layer of each slot's expert."""
    return np.take_along_axis(expert_sums(phy2log, None, num_experts), phy2log, axis=1)


def even_weights(phy2log: np.ndarray, num_experts: int) -> np.ndarray:
    """[L, P] float64 ``1 / r_e`` per slot: the even split as weights."""
    return 1.0 / replica_counts(np.asarray(phy2log, dtype=np.int64), num_experts)


def expert_sums(phy2log: np.ndarray, weights: np.ndarray | None, num_experts: int) -> np.ndarray:
    """[L, E] the sum of each expert's shares over its slots (``weights`` None: its replicas, int64).
    ``cost.bincount_rows`` with weights; ``cost`` imports this module, so it is not used here."""
    rows = phy2log.shape[0]
    flat = phy2log + (np.arange(rows) * num_experts)[:, None]
    w = None if weights is None else weights.ravel()
    return np.bincount(flat.ravel(), w, minlength=rows * num_experts).reshape(rows, num_experts)


def check_weights(weights: object, phy2log: np.ndarray, num_experts: int) -> np.ndarray:
    """Validated [L, P] float64 shares for this expert map (read-only), or a ``PlacementError`` saying
    what is wrong (a placement read back from a file is untrusted)."""
    w = numbers_array(weights)
    if w is None:
        raise PlacementError("InvalidPlacement", "replica weights must be numbers")
    if w.shape != phy2log.shape:
        raise PlacementError(
            "InvalidPlacement",
            f"replica weights have shape {list(w.shape)}, the expert map {list(phy2log.shape)}",
        )
    if not np.all(np.isfinite(w)) or (w < 0).any():
        raise PlacementError("InvalidPlacement", "replica weights must be finite and non-negative")
    sums = expert_sums(phy2log, w, num_experts)
    bad = np.argwhere(np.abs(sums - 1.0) > SUM_TOLERANCE)
    if bad.size:
        layer, e = (int(v) for v in bad[0])
        raise PlacementError(
            "InvalidPlacement",
            f"the replica weights of layer {layer} expert {e} sum to {sums[layer, e]:.6g}, not 1",
        )
    w = w / np.take_along_axis(sums, phy2log, axis=1)  # exact sums of 1 after rounding in a file
    w.setflags(write=False)
    return w


def weighted_gpu_times(
    phy2log: np.ndarray, loads: np.ndarray, weights: np.ndarray, table: CurveTable, slots_per_gpu: int
) -> np.ndarray:
    """[L, G] each GPU's time when slot p serves ``load_e * w[p]`` (mean loads; no validation)."""
    num_layers, p = phy2log.shape
    tokens = np.take_along_axis(loads, phy2log, axis=1) * weights
    gpu = np.arange(p) // slots_per_gpu
    cost = table(gpu[None, :], tokens)
    return cost.reshape(num_layers, p // slots_per_gpu, slots_per_gpu).sum(axis=2)


def equal_shares(phy2log: np.ndarray, weights: np.ndarray, num_experts: int) -> np.ndarray:
    """[L, P] bool: the slot's expert has all its shares equal (``1 / r_e``, within rounding)."""
    even = even_weights(phy2log, num_experts)
    off = expert_sums(phy2log, (np.abs(weights - even) > 1e-12).astype(np.float64), num_experts)
    return np.take_along_axis(off, phy2log, axis=1) == 0


def cumulative_shares(phy2log: np.ndarray, weights: np.ndarray, num_experts: int) -> np.ndarray:
    """[L, P] each slot's upper end ``W`` on [0, 1]: the sum of its expert's shares over the expert's slots
    up to and including it, in slot order (the last replica's is exactly 1)."""
    num_layers, p = phy2log.shape
    order = np.argsort(phy2log, axis=1, kind="stable")  # slots grouped by expert, ascending
    experts = np.take_along_axis(phy2log, order, axis=1)
    run = np.cumsum(np.take_along_axis(weights, order, axis=1), axis=1)
    last = np.concatenate([experts[:, 1:] != experts[:, :-1], np.ones((num_layers, 1), dtype=bool)], axis=1)
    before = np.concatenate([np.zeros((num_layers, 1)), run[:, :-1]], axis=1)
    first = np.concatenate([np.ones((num_layers, 1), dtype=bool), experts[:, 1:] != experts[:, :-1]], axis=1)
    base = np.maximum.accumulate(np.where(first, np.arange(p)[None, :], 0), axis=1)  # index of group start
    start = np.take_along_axis(before, base, axis=1)
    upper = np.where(last, 1.0, np.minimum(run - start, 1.0))
    out = np.empty_like(upper)
    np.put_along_axis(out, order, upper, axis=1)
    return out


def sampled_weighted_tokens(
    phy2log: np.ndarray,
    counts: np.ndarray,
    weights: np.ndarray,
    dispatch: str,
    *,
    offsets: np.ndarray | None = None,
) -> np.ndarray:
    """[N, L, P] float64 tokens each slot serves in each sampled step under the weighted split.

    ``even`` dispatch: fractional ``c * w``. ``round-robin`` (integers, vibe's own dispatch): an expert
    whose shares are all equal is dealt in turn over its replicas, exactly as ``round-robin`` (so even
    shares price exactly as the even split); otherwise systematically, the slot with cumulative shares
    ``[W - w, W)`` taking ``ceil(c W - u) - ceil(c (W - w) - u)`` of the c tokens, u in [0, 1) the step's
    phase (``offsets / 2**30``): an integer within one token of ``c * w``, summing to c.
    """
    return SampledSplit(phy2log, counts, dispatch, offsets=offsets).tokens(weights)


def sampled_weighted_gpu_times(
    phy2log: np.ndarray,
    counts: np.ndarray,
    weights: np.ndarray,
    table: CurveTable,
    slots_per_gpu: int,
    dispatch: str = "even",
    *,
    offsets: np.ndarray | None = None,
) -> np.ndarray:
    """[N, L, G] each GPU's time in each sampled step under the weighted split (no validation)."""
    return SampledSplit(phy2log, counts, dispatch, offsets=offsets).gpu_times(weights, table, slots_per_gpu)


class SampledSplit:
    """One expert map's sampled steps, ready to be priced under many weights (``sampled_weighted_tokens``):
    what does not depend on the weights (each slot's expert's tokens, the steps' phases, the whole-token
    deal of equal shares) is taken once, not again for every weights the water-filling tries."""

    def __init__(
        self, phy2log: np.ndarray, counts: np.ndarray, dispatch: str, *, offsets: np.ndarray | None = None
    ) -> None:
        if dispatch not in ("even", "round-robin"):
            raise PlacementError(
                "InvalidDispatch",
                "the weighted replica split is vibe's own dispatch: it prices 'even' or 'round-robin', "
                f"not {dispatch!r}",
            )
        n = counts.shape[0]
        num_layers, p = phy2log.shape
        self.phy2log = phy2log
        self.dispatch = dispatch
        self.num_experts = counts.shape[2]
        index = np.broadcast_to(phy2log, (n, num_layers, p))
        self.per_slot = np.take_along_axis(counts, index, axis=2)  # [N, L, P] the slot's expert's tokens
        self.phase: np.ndarray | float = 0.0
        self.dealt: np.ndarray | None = None
        if dispatch == "round-robin":
            if offsets is not None:
                self.phase = np.take_along_axis(offsets, index, axis=2) / float(1 << 30)
            self.dealt = sampled_slot_tokens(phy2log, counts, 1, "round-robin", offsets=offsets)

    def tokens(self, weights: np.ndarray) -> np.ndarray:
        """[N, L, P] float64 tokens each slot serves under ``weights`` (``sampled_weighted_tokens``)."""
        per_slot = self.per_slot
        if self.dealt is None:
            return per_slot * weights[None]
        u = self.phase
        upper = cumulative_shares(self.phy2log, weights, self.num_experts)[None]
        lower = np.maximum(upper - weights[None], 0.0)
        weighted = np.ceil(per_slot * upper - u) - np.ceil(per_slot * lower - u)
        return np.where(equal_shares(self.phy2log, weights, self.num_experts)[None], self.dealt, weighted)

    def gpu_times(self, weights: np.ndarray, table: CurveTable, slots_per_gpu: int) -> np.ndarray:
        """[N, L, G] each GPU's time in each sampled step under ``weights``."""
        tokens = self.tokens(weights)
        n, num_layers, p = tokens.shape
        gpu = np.arange(p) // slots_per_gpu
        cost = table(gpu[None, None, :], tokens)
        return cost.reshape(n, num_layers, p // slots_per_gpu, slots_per_gpu).sum(axis=3)


def choose_weights(
    phy2log: np.ndarray,
    loads: np.ndarray,
    table: CurveTable,
    slots_per_gpu: int,
    *,
    routing: Routing | None = None,
    rounds: int = ROUNDS,
) -> np.ndarray:
    """[L, P] the weighted split for this expert map (module docstring): never slower than even, per layer,
    on the mean-load objective (``routing`` None) or the expected one over ``routing``'s samples.

    With ``routing`` two water-fillings are run, one on the mix's mean loads and one on the sampled
    steps' expected GPU times, and per layer the faster of them on the sampled steps is kept (measured:
    the mean-load one often moves the expected slowest GPU further, since the expected GPU times hide which
    GPU is slowest in each step), where it beats even.
    """
    phy = np.asarray(phy2log, dtype=np.int64)
    e = loads.shape[1]
    s = slots_per_gpu
    even = even_weights(phy, e)
    if not (replica_counts(phy, e) > 1).any() or phy.shape[1] // s < 2:
        return _frozen(even)

    def mean_price(loads: np.ndarray) -> Pricer:
        def price(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            t = weighted_gpu_times(phy, loads, w, table, s)
            return t.max(axis=1), t

        return price

    if routing is None:
        return _frozen(_water_fill(phy, e, s, mean_price(loads), rounds))

    steps = SampledSplit(phy, routing.counts, routing.dispatch, offsets=routing.offsets)

    def expected_price(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sampled = steps.gpu_times(w, table, s)
        return (
            np.tensordot(routing.weights, sampled.max(axis=2), axes=1),
            np.tensordot(routing.weights, sampled, axes=1),
        )

    cands = [even, _water_fill(phy, e, s, expected_price, rounds)]
    cands.append(_water_fill(phy, e, s, mean_price(routing.mean_loads_of_mix()), rounds))
    values = np.stack([expected_price(w)[0] for w in cands])  # [C, L]
    best = np.zeros(phy.shape[0], dtype=np.int64)
    for c in range(1, len(cands)):
        best = np.where(values[c] < values[best, np.arange(best.size)] * (1.0 - EPS), c, best)
    return _frozen(np.stack(cands)[best, np.arange(best.size)])


#: Prices weights: ([L] the layer objective, [L, G] each GPU's time that steers the water-filling).
Pricer = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def _water_fill(phy: np.ndarray, e: int, s: int, price: Pricer, rounds: int) -> np.ndarray:
    """[L, P] the best weights of ``rounds`` multiplicative updates from even, per layer (module doc)."""
    num_layers, p = phy.shape
    replicated = replica_counts(phy, e) > 1
    best_w = even_weights(phy, e)
    best, gpu_t = price(best_w)
    alpha = np.full(num_layers, ALPHA)
    slot_gpu = np.arange(p) // s
    rows = np.arange(num_layers)[:, None]
    replicas = np.maximum(expert_sums(phy, replicated.astype(np.float64), e), 1.0)  # [L, E]
    for _ in range(rounds):
        t_slot = gpu_t[:, slot_gpu]  # [L, P] each slot's GPU time
        mean_t = expert_sums(phy, np.where(replicated, t_slot, 0.0), e) / replicas
        # [L, E] mean GPU time over each expert's replicas
        with np.errstate(divide="ignore", invalid="ignore"):
            factor = np.where(t_slot > 0, mean_t[rows, phy] / t_slot, 1.0) ** alpha[:, None]
        trial = np.where(replicated, best_w * factor, best_w)
        trial = trial / np.take_along_axis(expert_sums(phy, trial, e), phy, axis=1)
        value, trial_t = price(trial)
        better = value < best * (1.0 - EPS)
        best_w = np.where(better[:, None], trial, best_w)
        best = np.where(better, value, best)
        alpha = np.where(better, alpha, alpha / 2.0)
        gpu_t = np.where(better[:, None], trial_t, gpu_t)
    return np.asarray(best_w)


def _frozen(w: np.ndarray) -> np.ndarray:
    out = np.array(w, dtype=np.float64)
    out.setflags(write=False)
    return out
