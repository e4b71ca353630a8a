"""A placement and the one evaluator that prices it.

Every policy, every bound check, every report and the operator's drift decision price placements
here, so "predicted time" means the same thing everywhere (ARCHITECTURE.md, "The cost model"):

* a slot holding expert e, which has ``r_e`` replicas in the layer, serves ``load_e / r_e`` tokens
  (engines split an expert's tokens evenly over its replicas; SGLang's static dispatch does not quite:
  ``evaluate(..., dispatch="sglang-static")`` prices it, see ``dispatch.py``); a placement that carries
  replica weights (``Placement.weights``, the ``weighted`` replica split, ``split.py``) serves
  ``load_e * w`` in a slot of share w instead, whatever the dispatch;
* GPU g's layer time is the sum of ``t_g`` over its S slots;
* a layer takes as long as its slowest GPU (expert parallelism synchronises every layer);
* a model step is the sum of its layers.

That is the **mean-load** objective: one step of mean loads. The **expected** objective
(``evaluate(..., routing=...)``, ``routing.py``) prices the same way each of N sampled steps of the
deployment's step mix, where each expert receives the integer tokens routing gave it in that step (often
0 at decode batch sizes: an empty slot costs nothing) split over its replicas as the engine splits them
(``Routing.dispatch``), and averages the step times with the samples' weights: the layer time is
``sum_n w_n max_g sum_slots t_g(tokens_n)``, the mean over steps of the slowest GPU, not the slowest GPU
of a mean step.

Shapes: L layers, E logical experts, G GPUs, S slots per GPU, P = G * S physical slots. Slot s of GPU g
is physical slot ``g * S + s`` (SGLang's and EPLB's convention: rank r holds slots r*S .. r*S+S-1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vibe.placement.curves import CurveTable, Fleet, numbers_array
from vibe.placement.errors import PlacementError
from vibe.placement.routing import Routing
from vibe.placement.split import check_weights, sampled_weighted_gpu_times, weighted_gpu_times

#: Inputs whose step could take longer than this are rejected as out of range (a step takes
#: milliseconds; this only keeps every sum the solvers form finite).
MAX_STEP_SECONDS = 1e100

#: Relative tolerance of "no slower than" comparisons between two placements' predicted times (rounding).
EPS_GUARD = 1e-9

#: A placement decision taken on sampled steps (a layer's candidate, a swap) must gain at least this many
#: standard errors of the paired per-step difference: with few samples per kind, choosing the best of many
#: options on the samples alone fits their noise (measured: 16 samples per kind of 256-token decode steps
#: looked 2.8 % faster in-sample than on held-out steps, and lost to the mean-load pick).
SIGNIFICANCE_Z = 2.0


@dataclass
class Placement:
    """Which logical expert each physical slot holds, per layer.

    Attributes:
        phy2log: [L, P] int64, ``phy2log[l, g * S + s]`` = the logical expert in slot s of GPU g.
        slots_per_gpu: S.
        num_experts: E. Every expert has at least one slot in every layer.
        weights: None (the even split) or [L, P] float64 the share of its expert's tokens each slot
            serves (the ``weighted`` replica split, ``split.py``): >= 0, each expert's summing to 1.
    """

    phy2log: np.ndarray
    slots_per_gpu: int
    num_experts: int
    weights: np.ndarray | None = None

    def __post_init__(self) -> None:
        try:
            phy = np.array(self.phy2log, dtype=np.int64)
        except (TypeError, ValueError, OverflowError):
            raise PlacementError("InvalidPlacement", "physicalToLogical must hold integers") from None
        s, e = int(self.slots_per_gpu), int(self.num_experts)
        if phy.ndim != 2 or phy.shape[0] == 0 or phy.shape[1] == 0:
            raise PlacementError("InvalidPlacement", "a placement needs a [layers][slots] expert map")
        if s <= 0 or phy.shape[1] % s:
            raise PlacementError(
                "InvalidPlacement", f"{phy.shape[1]} physical slots do not split into {s} slots per GPU"
            )
        if e <= 0 or phy.min() < 0 or phy.max() >= e:
            raise PlacementError("InvalidPlacement", f"expert ids must lie in 0..{e - 1}")
        missing = np.flatnonzero((bincount_rows(phy, e) == 0).any(axis=1))
        if missing.size:
            raise PlacementError(
                "InvalidPlacement", f"layer {int(missing[0])} leaves an expert without a slot"
            )
        phy.setflags(write=False)
        self.phy2log = phy
        self.slots_per_gpu = s
        self.num_experts = e
        if self.weights is not None:
            self.weights = check_weights(self.weights, phy, e)

    @property
    def num_layers(self) -> int:
        return int(self.phy2log.shape[0])

    @property
    def num_slots(self) -> int:
        return int(self.phy2log.shape[1])

    @property
    def num_gpus(self) -> int:
        return self.num_slots // self.slots_per_gpu

    def by_gpu(self) -> np.ndarray:
        """[L, G, S] int64 view: the experts in each GPU's slots."""
        return self.phy2log.reshape(self.num_layers, self.num_gpus, self.slots_per_gpu)

    def logcnt(self) -> np.ndarray:
        """[L, E] int64: replicas of each logical expert (EPLB's ``logcnt``)."""
        return bincount_rows(self.phy2log, self.num_experts)

    def log2phy(self) -> np.ndarray:
        """[L, E, X] int64: each expert's physical slots, ascending, padded with -1 (EPLB's ``log2phy``).

        X = P - E + 1, the most replicas any expert can have (as DeepSeek's EPLB: redundant + 1).
        """
        num_layers, p = self.phy2log.shape
        e = self.num_experts
        cnt = self.logcnt()
        order = np.argsort(self.phy2log, axis=1, kind="stable")  # slots grouped by expert, ascending
        experts = np.take_along_axis(self.phy2log, order, axis=1)
        starts = np.cumsum(cnt, axis=1) - cnt
        rank = np.arange(p)[None, :] - np.take_along_axis(starts, experts, axis=1)
        out = np.full((num_layers, e, p - e + 1), -1, dtype=np.int64)
        out[np.arange(num_layers)[:, None], experts, rank] = order
        return out

    def moves_from(self, other: Placement) -> int:
        """Slots whose logical expert differs from ``other``'s (the weights copied to get here)."""
        if other.phy2log.shape != self.phy2log.shape:
            raise PlacementError("ShapeMismatch", "the current placement has a different shape")
        return int(np.count_nonzero(self.phy2log != other.phy2log))

    def moved_experts_from(self, other: Placement) -> int:
        """(layer, GPU, expert) copies that are new on their GPU (a slot reshuffle within a GPU is free)."""
        new = _gpu_expert_counts(self.by_gpu(), self.num_experts)
        old = _gpu_expert_counts(other.by_gpu(), other.num_experts)
        return int(np.maximum(new - old, 0).sum())


@dataclass
class Evaluation:
    """The predicted times of one placement under one set of loads and curves.

    Attributes:
        step_time_s: sum over layers of the slowest GPU's time.
        layer_times_s: [L] float64, each layer's slowest GPU.
        gpu_times_s: [L, G] float64, each GPU's time in each layer.
        imbalance: mean over layers of (max GPU time / mean GPU time); 1.0 is perfect balance.
    """

    step_time_s: float
    layer_times_s: np.ndarray
    gpu_times_s: np.ndarray
    imbalance: float


def evaluate(
    placement: Placement,
    loads: np.ndarray,
    fleet: Fleet,
    *,
    dispatch: str = "even",
    gpus_per_node: int | None = None,
    routing: Routing | None = None,
) -> Evaluation:
    """Price a placement: the cost model above, vectorised over all slots of all layers.

    ``dispatch`` other than ``even`` replaces the even split of an expert's tokens over its replicas by
    what the engine does (``vibe.placement.dispatch``: ``sglang-static``, with ``gpus_per_node`` or, by
    default, the fleet's nodes); the mean-load solvers always optimise for ``even``.

    With ``routing`` the placement is priced by the expected objective instead (module docstring): the
    result's times are expectations over the sampled steps (``gpu_times_s``: each GPU's expected time),
    and the replicas split as ``routing.dispatch`` says (``dispatch`` is then unused).

    A placement with ``weights`` splits its replicas by them under either objective (no dispatch used).
    """
    loads = check_shapes(loads, fleet, placement.slots_per_gpu, placement)
    s = placement.slots_per_gpu
    if placement.weights is not None:
        if routing is None:
            return evaluation_of(
                weighted_gpu_times(placement.phy2log, loads, placement.weights, fleet.table, s)
            )
        check_routing(routing, loads)
        sampled = sampled_weighted_gpu_times(
            placement.phy2log,
            routing.counts,
            placement.weights,
            fleet.table,
            s,
            routing.dispatch,
            offsets=routing.offsets,
        )
        return expected_evaluation_of(sampled, routing.weights)
    if routing is not None:
        check_routing(routing, loads)
        per_node = gpus_per_node_for(fleet) if routing.dispatch == "sglang-static" else None
        sampled = sampled_gpu_times(
            placement.phy2log, routing, fleet.table, placement.slots_per_gpu, gpus_per_node=per_node
        )
        return expected_evaluation_of(sampled, routing.weights)
    if dispatch in ("even", "round-robin"):  # round-robin's mean split is the even one
        gpu_times = gpu_times_of(placement.phy2log, loads, fleet.table, placement.slots_per_gpu)
        return evaluation_of(gpu_times)
    from vibe.placement.dispatch import gpus_per_node_of, slot_tokens

    per_node = gpus_per_node or gpus_per_node_of([g.node for g in fleet.gpus])
    tokens = slot_tokens(placement.phy2log, loads, placement.slots_per_gpu, dispatch, gpus_per_node=per_node)
    num_layers, p = tokens.shape
    gpu = np.arange(p) // placement.slots_per_gpu
    cost = fleet.table(gpu[None, :], tokens)
    return evaluation_of(cost.reshape(num_layers, placement.num_gpus, placement.slots_per_gpu).sum(axis=2))


def gpus_per_node_for(fleet: Fleet) -> int:
    """GPUs per node of a fleet laid out as SGLang lays out ranks (raises ``InvalidDispatch`` otherwise)."""
    from vibe.placement.dispatch import gpus_per_node_of

    return gpus_per_node_of([g.node for g in fleet.gpus])


def check_routing(routing: Routing, loads: np.ndarray) -> None:
    """The routing was drawn for loads of this shape (``ShapeMismatch`` otherwise)."""
    if not isinstance(routing, Routing):
        raise PlacementError("InvalidLoads", "routing must be a vibe.placement.routing.Routing")
    if routing.shape != loads.shape:
        raise PlacementError(
            "ShapeMismatch",
            f"the routing samples are for {routing.shape[0]} layers x {routing.shape[1]} experts, "
            f"the loads are {loads.shape[0]} x {loads.shape[1]}",
        )


def sampled_gpu_times(
    phy2log: np.ndarray,
    routing: Routing,
    table: CurveTable,
    slots_per_gpu: int,
    *,
    gpus_per_node: int | None = None,
    layers: np.ndarray | None = None,
) -> np.ndarray:
    """[N, L, G] float64 each GPU's time in each layer of each sampled step (no validation: internal).

    With ``layers`` ([M] ints), row m of ``phy2log`` ([M, P]) is a placement of layer ``layers[m]``:
    several placements of one layer priced at once (``[N, M, G]``, on that layer's samples).
    """
    from vibe.placement.dispatch import sampled_slot_tokens

    counts, offsets = routing.counts, routing.offsets
    if layers is not None:
        counts, offsets = counts[:, layers], offsets[:, layers]
    tokens = sampled_slot_tokens(
        phy2log,
        counts,
        slots_per_gpu,
        routing.dispatch,
        offsets=offsets,
        gpus_per_node=gpus_per_node,
    )  # [N, L, P]
    n, num_layers, p = tokens.shape
    gpu = np.arange(p) // slots_per_gpu
    cost = table(gpu[None, None, :], tokens)
    return cost.reshape(n, num_layers, p // slots_per_gpu, slots_per_gpu).sum(axis=3)


def expected_evaluation_of(sampled: np.ndarray, weights: np.ndarray) -> Evaluation:
    """Summaries of [N, L, G] sampled GPU times weighted by [N] sample weights (summing to 1).

    ``layer_times_s`` is each layer's expected slowest GPU; ``gpu_times_s`` each GPU's expected time;
    ``imbalance`` the mean over layers of expected slowest / mean expected GPU time.
    """
    layer = np.tensordot(weights, sampled.max(axis=2), axes=1)  # [L]
    gpu = np.tensordot(weights, sampled, axes=1)  # [L, G]
    mean = gpu.mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(mean > 0, layer / mean, 1.0)
    return Evaluation(
        step_time_s=float(layer.sum()), layer_times_s=layer, gpu_times_s=gpu, imbalance=float(ratio.mean())
    )


def expected_layer_times(
    phy2log: np.ndarray,
    routing: Routing,
    table: CurveTable,
    slots_per_gpu: int,
    *,
    gpus_per_node: int | None = None,
) -> np.ndarray:
    """[L] each layer's expected time under the expected objective (no validation: internal)."""
    sampled = sampled_layer_times(phy2log, routing, table, slots_per_gpu, gpus_per_node=gpus_per_node)
    return np.asarray(np.tensordot(routing.weights, sampled, axes=1))


def sampled_layer_times(
    phy2log: np.ndarray,
    routing: Routing,
    table: CurveTable,
    slots_per_gpu: int,
    *,
    gpus_per_node: int | None = None,
    layers: np.ndarray | None = None,
) -> np.ndarray:
    """[N, L] each layer's time (its slowest GPU) in each sampled step (no validation: internal;
    ``layers`` as in ``sampled_gpu_times``)."""
    sampled = sampled_gpu_times(
        phy2log, routing, table, slots_per_gpu, gpus_per_node=gpus_per_node, layers=layers
    )
    return sampled.max(axis=2)


def paired_difference(diff: np.ndarray, routing: Routing) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean and standard error of per-step differences ``diff`` [..., N, L] (candidate - base):
    each kind of step is a stratum, ``var = sum_k w_k^2 var_k / R`` (infinite with one sample per kind)."""
    mean = np.tensordot(diff, routing.weights, axes=([-2], [0]))  # [..., L]
    var = np.zeros(mean.shape)
    r = routing.samples
    for k, w in enumerate(routing.mix.weights):
        part = np.compress(routing.kind == k, diff, axis=-2)
        var = var + (w**2 * part.var(axis=-2, ddof=1) / r if r > 1 else np.inf)
    return mean, np.sqrt(var)


def mean_load_layer_times(
    phy2log: np.ndarray,
    routing: Routing,
    table: CurveTable,
    slots_per_gpu: int,
    *,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """[L] each layer's time under the mean-load evaluator, averaged over the mix: sum over kinds k of
    ``weight_k * max_g`` (mean-load GPU time at kind k's mean loads), replicas split by ``weights``
    (``Placement.weights``) or evenly."""
    out = np.zeros(phy2log.shape[0])
    for w, loads in zip(routing.mix.weights, routing.mean_loads, strict=True):
        if weights is None:
            t = gpu_times_of(phy2log, loads, table, slots_per_gpu)
        else:
            t = weighted_gpu_times(phy2log, loads, weights, table, slots_per_gpu)
        out += w * t.max(axis=1)
    return out


class ExpectedReplicaCost:
    """Expected seconds ONE replica of an expert takes on each GPU, given its replica count, over the
    routing samples: what local search prices a slot with under the expected objective.

    ``round-robin``: with c tokens over r replicas, a replica takes ``c // r + 1`` with chance
    ``(c mod r) / r`` (the first replica is random), else ``c // r``: exact over the random start.
    ``even`` and ``sglang-static``: ``t_g(c / r)`` (SGLang's static shares depend on where the replicas
    are, not only how many there are; the search prices them evenly and the evaluator exactly).
    Summing these over a GPU's slots gives its expected time; the max over GPUs of expected times is at
    most the expected max (what ``evaluate`` reports), which the search therefore approximates from below.

    Every curve is linear in its values on the fleet's shared grid (``t_g(n) = sum_j a_j(n) y[g, j]``,
    the same interpolation weights a(n) for every GPU), so an expectation over samples is one weight
    vector per (layer, expert, replicas), accumulated over the samples once, times ``y``: the work does not
    grow with samples x GPUs.
    """

    def __init__(self, routing: Routing, table: CurveTable) -> None:
        self.routing = routing
        self.table = table

    def __call__(self, layers: np.ndarray, experts: np.ndarray, replicas: np.ndarray) -> np.ndarray:
        """[G, *shape] for broadcastable int arrays of layers, experts and (>= 1) replica counts."""
        layers, experts, replicas = np.broadcast_arrays(layers, experts, replicas)
        shape = layers.shape
        r = np.maximum(replicas, 1).reshape(1, -1)  # [1, M]
        c = self.routing.counts[:, layers.reshape(-1), experts.reshape(-1)]  # [N, M]
        w = self.routing.weights[:, None]  # [N, 1]
        values: list[np.ndarray]
        probs: list[np.ndarray]
        if self.routing.dispatch == "round-robin":
            q, rem = np.divmod(c, r)
            frac = rem / r
            values, probs = [q, q + 1], [w * (1.0 - frac), w * frac]
        else:
            values, probs = [c / r], [np.broadcast_to(w, c.shape)]
        k = self.table.x.size
        m = r.size
        acc = np.zeros(m * k)
        item = (np.arange(m) * k)[None, :]
        for v, p in zip(values, probs, strict=True):
            j, f = self._interpolation(np.asarray(v, dtype=np.float64))
            p = np.where(v > 0, p, 0.0)
            acc += np.bincount((item + j).ravel(), (p * (1.0 - f)).ravel(), minlength=m * k)
            acc += np.bincount((item + j + 1).ravel(), (p * f).ravel(), minlength=m * k)
        out = self.table.y @ acc.reshape(m, k).T  # [G, M]
        return np.asarray(out).reshape(self.table.num_gpus, *shape)

    def _interpolation(self, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grid segment j and fraction f with ``t_g(n) = (1 - f) y[g, j] + f y[g, j + 1]`` for n > 0 (as
        ``CurveTable.__call__``: flat below x[0], the last segment extended past x[-1])."""
        x = self.table.x
        j = np.clip(np.searchsorted(x, n, side="right") - 1, 0, x.size - 2)
        f = (np.maximum(n, x[0]) - x[j]) / (x[j + 1] - x[j])
        return j, f


def evaluation_of(gpu_times: np.ndarray) -> Evaluation:
    """Summaries of a [L, G] matrix of GPU times."""
    layer = gpu_times.max(axis=1)
    mean = gpu_times.mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(mean > 0, layer / mean, 1.0)
    return Evaluation(
        step_time_s=float(layer.sum()),
        layer_times_s=layer,
        gpu_times_s=gpu_times,
        imbalance=float(ratio.mean()),
    )


def gpu_times_of(phy2log: np.ndarray, loads: np.ndarray, table: CurveTable, slots_per_gpu: int) -> np.ndarray:
    """[L, G] float64 GPU times of a [L, P] expert map under [L, E] loads (no validation: internal)."""
    num_layers, p = phy2log.shape
    e = loads.shape[1]
    cnt = bincount_rows(phy2log, e)
    per_replica = loads / np.maximum(cnt, 1)
    tokens = np.take_along_axis(per_replica, phy2log, axis=1)  # [L, P]
    gpu = np.arange(p) // slots_per_gpu
    cost = table(gpu[None, :], tokens)
    return cost.reshape(num_layers, p // slots_per_gpu, slots_per_gpu).sum(axis=2)


def check_shapes(
    loads: np.ndarray, fleet: Fleet, slots_per_gpu: int, placement: Placement | None = None
) -> np.ndarray:
    """Validate loads against the fleet, the slot count and (optionally) a placement; return float64 loads."""
    loads = check_loads(loads)
    if not isinstance(fleet, Fleet):
        raise PlacementError("InvalidFleet", "fleet must be a vibe.placement.Fleet (see read_fleet)")
    if (
        isinstance(slots_per_gpu, bool)
        or not isinstance(slots_per_gpu, (int, np.integer))
        or slots_per_gpu < 1
    ):
        raise PlacementError(
            "InfeasibleSlots", f"slots per GPU must be a positive integer, not {slots_per_gpu!r}"
        )
    num_layers, e = loads.shape
    g = len(fleet)
    if slots_per_gpu * g < e:
        raise PlacementError(
            "InfeasibleSlots",
            f"{g} GPUs x {slots_per_gpu} slots = {g * slots_per_gpu} slots cannot hold {e} experts",
        )
    with np.errstate(over="ignore", invalid="ignore"):  # the worst a step can take: every slot at the max
        worst = float(fleet.table.all_gpus(loads.max()).max() * slots_per_gpu * num_layers)
    if not worst < MAX_STEP_SECONDS:
        raise PlacementError(
            "InvalidLoads",
            f"loads up to {loads.max():.3g} tokens per expert could take {worst:.3g} s per step on these "
            "curves: the loads or the curves are out of range",
        )
    if placement is not None:
        if placement.slots_per_gpu != slots_per_gpu:
            raise PlacementError(
                "ShapeMismatch",
                f"the placement has {placement.slots_per_gpu} slots per GPU, not {slots_per_gpu}",
            )
        if placement.num_gpus != g:
            raise PlacementError(
                "ShapeMismatch", f"the placement spans {placement.num_gpus} GPUs, the fleet {g}"
            )
        if (placement.num_layers, placement.num_experts) != (num_layers, e):
            raise PlacementError(
                "ShapeMismatch",
                f"the placement is for {placement.num_layers} layers x {placement.num_experts} experts, "
                f"the loads are {num_layers} x {e}",
            )
    return loads


def check_loads(loads: object) -> np.ndarray:
    """[L, E] float64 loads, finite and >= 0, or a PlacementError saying what is wrong."""
    arr = numbers_array(loads)
    if arr is None:
        raise PlacementError("InvalidLoads", "loads must be a [layers][experts] array of numbers")
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise PlacementError("InvalidLoads", f"loads must be [layers][experts], got shape {list(arr.shape)}")
    bad = ~np.isfinite(arr)
    if bad.any():
        layer, e = (int(v) for v in np.argwhere(bad)[0])
        raise PlacementError(
            "InvalidLoads", f"load of layer {layer} expert {e} is {arr[layer, e]} (NaN or infinite)"
        )
    if (arr < 0).any():
        layer, e = (int(v) for v in np.argwhere(arr < 0)[0])
        raise PlacementError(
            "InvalidLoads", f"load of layer {layer} expert {e} is negative ({arr[layer, e]:g})"
        )
    return arr


def bincount_rows(a: np.ndarray, n: int) -> np.ndarray:
    """[R, C] ints in 0..n-1 -> [R, n] counts per row (one flat bincount)."""
    rows = a.shape[0]
    flat = a + (np.arange(rows) * n)[:, None]
    return np.bincount(flat.ravel(), minlength=rows * n).reshape(rows, n)


def _gpu_expert_counts(by_gpu: np.ndarray, n: int) -> np.ndarray:
    """[L, G, S] -> [L, G, E] replica counts of each expert on each GPU."""
    num_layers, g, s = by_gpu.shape
    return bincount_rows(by_gpu.reshape(num_layers * g, s), n).reshape(num_layers, g, n)
