"""How an engine splits each expert's tokens over the expert's replicas: tokens per physical slot.

Role: an option of the evaluator (``cost.evaluate(..., dispatch=...)``). The cost model everywhere else
assumes ``even``; this module prices what SGLang's static dispatch really does, so the two can be
compared (``benchmarks/sglang_dispatch.py``, docs/serving.md).

* ``even``: a slot holding expert e serves ``load_e / r_e`` tokens (``r_e`` replicas in the layer). SGLang's
  ``--ep-dispatch-algorithm dynamic`` (a replica per token, evenly) and DeepSeek's EPLB assume this;
  TensorRT-LLM's load balancer does it (round-robin over the replicas). Each engine's split is on its
  record, ``vibe.engines.Engine.dispatch``.
* ``sglang-static``: SGLang's ``--ep-dispatch-algorithm static`` (the default with DeepEP once a placement
  file is given; ``compute_logical_to_rank_dispatch_physical_map`` in
  ``sglang/srt/eplb/expert_location.py``, 0.5.23). Every source rank sends ALL its tokens for expert e to
  ONE replica, fixed per (rank, layer, expert): the first replica on its own GPU if it holds one; else
  the first replica on its own node, when the node holds some but not all of e's replicas; else a "fair"
  pick (each replica gets ``k // r_e`` of the k remaining ranks, the remainder drawn at random: priced
  here by its expectation, ``k / r_e`` each). Each rank routes ``load_e / G`` of e's tokens (data-parallel
  attention: every rank serves its own requests). So a replica on a GPU with other replicas nearby
  serves less than its even share, and a lone replica on a node serves the whole node's share.

Under sampled routing (``routing.py``: the tokens each expert receives in one step are integers, many of
them 0) ``sampled_slot_tokens`` splits each step's counts the same ways, plus ``round-robin``: TensorRT-LLM
and vLLM deal an expert's tokens over its replicas in turn, so with c tokens and r replicas, c mod r of
them take ``c // r + 1`` and the rest ``c // r`` (a replica may take none: 1 token over 2 replicas costs one
slot, not two). Which replica starts is drawn per step (``Routing.offsets``).

Shapes: L layers, E experts, G GPUs (EP ranks), S slots per GPU, P = G * S; slot p is on GPU ``p // S``,
node ``p // (S * gpus_per_node)`` (ranks fill nodes in order, as SGLang's ``ep_size // nnodes``).
"""

from __future__ import annotations

import numpy as np

from vibe.placement.errors import PlacementError

#: The dispatches vibe prices. With mean loads ``round-robin`` is ``even`` (its expectation); under sampled
#: routing it deals integer tokens (``sampled_slot_tokens``).
DISPATCH = ("even", "round-robin", "sglang-static")


def static_dispatch_choices(
    phy2log: np.ndarray, num_experts: int, slots_per_gpu: int, rank: int, *, gpus_per_node: int
) -> np.ndarray:
    """[L, E] int64: the slot SGLang's static dispatch fixes for ``rank``'s tokens of each expert, or -1
    where it makes a fair (random) pick among all replicas.

    Args:
        phy2log: [L, P] expert in each physical slot.
        rank: the source EP rank (its GPU).
        gpus_per_node: GPUs (ranks) per node.
    """
    phy2log = np.asarray(phy2log, dtype=np.int64)
    num_layers, p = phy2log.shape
    slot_gpu = np.arange(p) // slots_per_gpu
    slot_node = np.arange(p) // (slots_per_gpu * gpus_per_node)
    node = rank // gpus_per_node
    out = np.full((num_layers, num_experts), -1, dtype=np.int64)
    for layer in range(num_layers):
        row = phy2log[layer]
        for e in range(num_experts):
            slots = np.flatnonzero(row == e)  # ascending, as SGLang lists the candidates
            if slots.size == 1:
                out[layer, e] = slots[0]
                continue
            own = slots[slot_gpu[slots] == rank]
            if own.size:
                out[layer, e] = own[0]
                continue
            near = slots[slot_node[slots] == node]
            if 0 < near.size < slots.size:
                out[layer, e] = near[0]
    return out


def slot_tokens(
    phy2log: np.ndarray,
    loads: np.ndarray,
    slots_per_gpu: int,
    dispatch: str = "even",
    *,
    gpus_per_node: int | None = None,
) -> np.ndarray:
    """[L, P] float64 tokens each physical slot serves under ``dispatch`` (see the module docstring).

    Args:
        phy2log: [L, P] expert in each slot; loads: [L, E] tokens per expert per step.
        gpus_per_node: GPUs per node (``sglang-static`` only; required there).
    """
    phy2log = np.asarray(phy2log, dtype=np.int64)
    loads = np.asarray(loads, dtype=np.float64)
    num_layers, p = phy2log.shape
    e = loads.shape[1]
    cnt = np.stack([np.bincount(row, minlength=e) for row in phy2log])
    if dispatch in ("even", "round-robin"):
        return np.take_along_axis(loads / np.maximum(cnt, 1), phy2log, axis=1)
    if dispatch != "sglang-static":
        raise PlacementError(
            "InvalidDispatch", f"unknown dispatch {dispatch!r} (one of {', '.join(DISPATCH)})"
        )
    g = p // slots_per_gpu
    if not gpus_per_node or gpus_per_node < 1 or g % gpus_per_node:
        raise PlacementError(
            "InvalidDispatch", f"sglang-static needs GPUs per node dividing {g} GPUs, got {gpus_per_node}"
        )
    share = loads / g  # [L, E] tokens of each expert from one source rank
    slot_gpu = np.arange(p) // slots_per_gpu
    slot_node = slot_gpu // gpus_per_node
    nodes = g // gpus_per_node
    out = np.zeros((num_layers, p))
    for layer in range(num_layers):
        row = phy2log[layer]
        order = np.argsort(row, kind="stable")  # slots grouped by expert, ascending within an expert
        bounds = np.concatenate(([0], np.cumsum(cnt[layer])))
        for x in range(e):
            slots = order[bounds[x] : bounds[x + 1]]
            if slots.size == 1:
                out[layer, slots[0]] = loads[layer, x]
                continue
            ranks = np.zeros(slots.size)  # source ranks sending to each replica
            holders = np.unique(slot_gpu[slots])
            # a holder rank sends to the first replica on its GPU
            first_on_gpu = np.searchsorted(slot_gpu[slots], holders)
            np.add.at(ranks, first_on_gpu, 1.0)
            fair = 0.0
            holders_per_node = np.bincount(holders // gpus_per_node, minlength=nodes)
            on_node = np.bincount(slot_node[slots], minlength=nodes)
            for n in range(nodes):
                others = gpus_per_node - holders_per_node[n]  # ranks of node n without a replica
                if not others:
                    continue
                if 0 < on_node[n] < slots.size:
                    ranks[np.flatnonzero(slot_node[slots] == n)[0]] += others
                else:
                    fair += others
            ranks += fair / slots.size
            out[layer, slots] = ranks * share[layer, x]
    return out


def sampled_slot_tokens(
    phy2log: np.ndarray,
    counts: np.ndarray,
    slots_per_gpu: int,
    dispatch: str,
    *,
    offsets: np.ndarray | None = None,
    gpus_per_node: int | None = None,
) -> np.ndarray:
    """[N, L, P] float64 tokens each physical slot serves in each sampled step.

    Args:
        phy2log: [L, P] expert in each slot.
        counts: [N, L, E] tokens each expert receives in each sampled step.
        dispatch: ``round-robin`` (integers dealt in turn from replica ``offsets % r``, in slot order),
            ``even`` (``c / r``) or ``sglang-static`` (each replica's fixed share of the expert's tokens,
            the shares ``slot_tokens`` gives for unit loads).
        offsets: [N, L, E] non-negative ints (``round-robin`` only; default 0: the first replica starts).
        gpus_per_node: for ``sglang-static``.
    """
    phy2log = np.asarray(phy2log, dtype=np.int64)
    counts = np.asarray(counts)
    n, num_layers, e = counts.shape
    cnt = np.stack([np.bincount(row, minlength=e) for row in phy2log])  # [L, E]
    per_slot = np.take_along_axis(counts, np.broadcast_to(phy2log, (n, *phy2log.shape)), axis=2)  # [N, L, P]
    if dispatch == "even":
        return per_slot / np.take_along_axis(cnt, phy2log, axis=1)[None]
    if dispatch == "sglang-static":
        share = slot_tokens(
            phy2log, np.ones((num_layers, e)), slots_per_gpu, dispatch, gpus_per_node=gpus_per_node
        )
        return per_slot * share[None]
    if dispatch != "round-robin":
        raise PlacementError(
            "InvalidDispatch", f"unknown dispatch {dispatch!r} (one of {', '.join(DISPATCH)})"
        )
    r = np.take_along_axis(cnt, phy2log, axis=1)[None]  # [1, L, P] replicas of each slot's expert
    rank = replica_rank(phy2log, e)[None]  # [1, L, P] which replica of its expert each slot is
    start = (
        0
        if offsets is None
        else np.take_along_axis(offsets, np.broadcast_to(phy2log, per_slot.shape), axis=2)
    )
    base, extra = np.divmod(per_slot, r)
    return (base + ((rank - start) % r < extra)).astype(np.float64)


def replica_rank(phy2log: np.ndarray, num_experts: int) -> np.ndarray:
    """[L, P] int64: 0 for an expert's first slot (in slot order), 1 for its second, ..."""
    p = phy2log.shape[1]
    order = np.argsort(phy2log, axis=1, kind="stable")
    experts = np.take_along_axis(phy2log, order, axis=1)
    cnt = np.stack([np.bincount(row, minlength=num_experts) for row in phy2log])
    starts = np.cumsum(cnt, axis=1) - cnt
    rank = np.empty_like(phy2log)
    np.put_along_axis(
        rank, order, np.arange(p)[None, :] - np.take_along_axis(starts, experts, axis=1), axis=1
    )
    return rank


def gpus_per_node_of(nodes: list[str]) -> int:
    """GPUs per node of a fleet in rank order, when every node holds the same number of consecutive ranks
    (SGLang's layout); raises otherwise."""
    runs: list[int] = []
    for i, node in enumerate(nodes):
        if i and node == nodes[i - 1]:
            runs[-1] += 1
        else:
            runs.append(1)
    if len(set(runs)) != 1 or len(runs) != len(set(nodes)):
        raise PlacementError(
            "InvalidDispatch", "sglang-static needs the same number of consecutive ranks on every node"
        )
    return runs[0]
