"""Constructive placement policies: the engines' defaults, the token-balanced (EPLB-style) baseline and
vibe's hardware-aware start.

Each builds a complete placement for all layers at once: layers are independent, so the per-layer
greedy steps run as one numpy operation over a [L, ...] batch instead of a Python loop over layers.
Local search (``search.py``) then improves vibe's start; the baselines are left as engines run them.

* ``linear``: slot p holds expert p mod E (SGLang's trivial location, vLLM's ``linear``): contiguous
  blocks of experts per GPU, redundant slots cycle from expert 0.
* ``round-robin``: vLLM's ``round_robin``: the same expert sequence dealt to GPUs in turn.
* ``token-balanced``: what DeepSeek's EPLB does, written from its description: give each redundant slot
  to the expert with the most tokens per replica, then pack replicas, heaviest first, onto the GPU with
  the fewest tokens that still has a free slot. It balances tokens and ignores GPU speed.
* vibe's start (``pack_by_time``): the same replication, packed heaviest first onto the GPU that would
  *finish* earliest with it under its own curve (earliest-finish-time list scheduling): heavy replicas land
  on fast GPUs, and slow GPUs fill their slots with light ones.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vibe.placement.curves import CurveTable


def linear(num_layers: int, num_experts: int, num_gpus: int, slots_per_gpu: int) -> np.ndarray:
    """[L, P] int64: slot p holds expert p mod E."""
    p = num_gpus * slots_per_gpu
    return np.broadcast_to(np.arange(p) % num_experts, (num_layers, p)).astype(np.int64)


def round_robin(num_layers: int, num_experts: int, num_gpus: int, slots_per_gpu: int) -> np.ndarray:
    """[L, P] int64: the i-th expert of the sequence 0, 1, .., E-1, 0, 1, .. goes to GPU i mod G."""
    p = num_gpus * slots_per_gpu
    seq = np.arange(p) % num_experts
    by_gpu = seq.reshape(slots_per_gpu, num_gpus).T  # item i -> (gpu i % G, slot i // G)
    return np.broadcast_to(by_gpu.reshape(p), (num_layers, p)).astype(np.int64)


def replicate_by_tokens(loads: np.ndarray, num_slots: int) -> np.ndarray:
    """Replica counts by EPLB's rule: each redundant slot to the expert with the most tokens per replica.

    Greedily adding a replica to ``argmax_e w_e / r_e`` picks, in order, the largest values of
    ``{w_e / k : k >= 1}``; so the R redundant replicas go to the R largest such values (ties: lower
    expert first, as an argmax would), computed for all layers at once.

    Args:
        loads: [L, E] float64 tokens per expert.
        num_slots: P >= E physical slots per layer.
    Returns:
        [L, E] int64 replica counts, each >= 1, each row summing to P.
    """
    return _extra_replicas(loads, num_slots, lambda k: -(loads[:, :, None] / k))


def replicate_by_work(loads: np.ndarray, num_slots: int, table: CurveTable, ref: int) -> np.ndarray:
    """Replica counts that minimise total work ``sum_e r_e t_ref(w_e / r_e)`` on a reference GPU.

    Adding the k-th replica of e costs ``inc[e, k] = (k+1) t(w_e/(k+1)) - k t(w_e/k)``; the R cheapest
    increments over all (e, k) are taken (exact when t is convex, a good heuristic otherwise). Below the
    curve's knee (decode) this gives redundant slots to the *coldest* experts, whose extra replicas cost
    only the floor and make ideal filler for slow GPUs; in the linear regime increments are nearly equal.

    Args:
        loads: [L, E]; num_slots: P; table/ref: the curve to price work with.
    Returns:
        [L, E] int64 replica counts, each >= 1, rows summing to P.
    """

    def increments(k: np.ndarray) -> np.ndarray:
        k = np.append(k, k.size + 1)
        h = k * table(ref, loads[:, :, None] / k)  # [L, E, R+1]
        # increments of one expert need not be sorted (t is not convex): take them in k order per expert
        # by ranking on the running maximum, which keeps the chosen set a prefix for every expert
        return np.maximum.accumulate(np.diff(h, axis=2), axis=2)

    return _extra_replicas(loads, num_slots, increments)


def _extra_replicas(
    loads: np.ndarray, num_slots: int, rank: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """[L, E] replica counts: one each, plus the R = P - E extra replicas that rank lowest.

    ``rank(k)`` gives [L, E, R] keys of "the k-th extra replica of e" for k = 1..R (float64); the R
    lowest per layer are taken (stable: lower expert, then lower k, first on ties).
    """
    num_layers, e = loads.shape
    redundant = num_slots - e
    counts = np.ones((num_layers, e), dtype=np.int64)
    if redundant <= 0:
        return counts
    keys = rank(np.arange(1, redundant + 1, dtype=np.float64)).reshape(num_layers, -1)  # expert-major
    top = np.argsort(keys, axis=1, kind="stable")[:, :redundant]
    np.add.at(counts, (np.arange(num_layers)[:, None], top // redundant), 1)
    return counts


def replicas_heaviest_first(loads: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The replicas of each layer as a list, sorted by tokens per replica, heaviest first.

    Returns:
        experts: [L, P] int64 expert of each replica; tokens: [L, P] float64 its tokens.
    """
    e = loads.shape[1]
    experts = np.stack([np.repeat(np.arange(e), c) for c in counts])  # [L, P]
    tokens = np.take_along_axis(loads / counts, experts, axis=1)
    order = np.argsort(-tokens, axis=1, kind="stable")
    return np.take_along_axis(experts, order, axis=1), np.take_along_axis(tokens, order, axis=1)


def pack_by_tokens(experts: np.ndarray, tokens: np.ndarray, num_gpus: int, slots_per_gpu: int) -> np.ndarray:
    """EPLB's balanced packing: each replica, in the given order, to the least-loaded GPU with a free slot.

    Args:
        experts, tokens: [L, P] replicas in packing order (heaviest first).
    Returns:
        [L, P] int64 phy2log.
    """
    shape = (experts.shape[0], num_gpus)
    return _list_schedule(
        experts, num_gpus, slots_per_gpu, lambda i: np.broadcast_to(tokens[:, i, None], shape), finish=False
    )


def pack_by_time(experts: np.ndarray, cost: np.ndarray, num_gpus: int, slots_per_gpu: int) -> np.ndarray:
    """Earliest-finish-time packing: each replica, in order, to the GPU that would finish it soonest.

    Args:
        experts: [L, P] replicas in packing order (heaviest first).
        cost: [L, G, E] seconds one replica of each expert takes on each GPU (its own curve).
    Returns:
        [L, P] int64 phy2log.
    """
    rows = np.arange(experts.shape[0])
    return _list_schedule(
        experts, num_gpus, slots_per_gpu, lambda i: cost[rows, :, experts[:, i]], finish=True
    )


def _list_schedule(
    experts: np.ndarray,
    num_gpus: int,
    slots_per_gpu: int,
    item_cost: Callable[[int], np.ndarray],
    *,
    finish: bool,
) -> np.ndarray:
    """Greedy list scheduling, all layers at once: replica i, in order, goes to the GPU with a free slot
    that is least busy (``finish=False``) or would finish it soonest (``finish=True``), lowest rank on ties.

    Args:
        experts: [L, P] replicas in packing order; item_cost(i): [L, G] what replica i adds to each GPU.
    Returns:
        [L, P] int64 phy2log.
    """
    num_layers, p = experts.shape
    rows = np.arange(num_layers)
    busy = np.zeros((num_layers, num_gpus))
    used = np.zeros((num_layers, num_gpus), dtype=np.int64)
    phy = np.empty((num_layers, num_gpus, slots_per_gpu), dtype=np.int64)
    for i in range(p):
        c = item_cost(i)
        key = busy + c if finish else busy
        g = np.argmin(np.where(used < slots_per_gpu, key, np.inf), axis=1)
        phy[rows, g, used[rows, g]] = experts[:, i]
        busy[rows, g] += c[rows, g]
        used[rows, g] += 1
    return phy.reshape(num_layers, p)


def replica_costs(loads: np.ndarray, counts: np.ndarray, table: CurveTable) -> np.ndarray:
    """[L, G, E] seconds one replica of each expert takes on each GPU, given replica counts [L, E]."""
    return np.moveaxis(table.all_gpus(loads / counts), 0, 1)
