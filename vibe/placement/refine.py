"""Swaps priced on the sampled steps themselves: the last stage of ``vibe`` under the expected objective.

Role: local search under expected slot costs (``search.py`` with ``cost.ExpectedReplicaCost``) minimises
the slowest GPU's *expected* time, which is below the expected slowest GPU (what ``evaluate`` reports)
and can point the wrong way when few tokens make the slowest GPU change from step to step: with one
decode token over a fast and a slow GPU, pairing each hot expert with a cold one balances the expected
times, while putting both cold experts on the slow GPU leaves it idle in most steps and is faster. This
stage prices swaps on the N sampled steps directly.

Each round, per layer: take the GPU a that is most often the slowest (weighted by the samples; the next
one after a round that found nothing), price every swap of one of a's slots with any slot of any other
GPU h on every sample, and apply the swap with the least expected layer time if it improves. A swap
moves a replica with its tokens (a slot's tokens in each sample travel with it; the state is recomputed
exactly from the placement after every round). A layer stops after ``PATIENCE`` GPUs in a row gave
nothing. Replica counts never change here.

Per candidate and sample, the new layer time is ``max(T_a', T_h', max over the other GPUs)``, the last
from each sample's three slowest GPUs. A swap is taken only when its gain is ``cost.SIGNIFICANCE_Z`` standard
errors of the paired per-step difference (the best of thousands of swaps on a few samples is otherwise
often noise). The work is counted in (sample x candidate) evaluations against
the same budget unit as ``search.py``, so the result is deterministic.

Shapes: N samples, A layers in a round, G GPUs, S slots per GPU, P = G * S.
"""

from __future__ import annotations

import numpy as np

from vibe.placement.cost import SIGNIFICANCE_Z, paired_difference
from vibe.placement.curves import CurveTable
from vibe.placement.dispatch import sampled_slot_tokens
from vibe.placement.routing import Routing

#: GPUs tried in a row per layer (most often slowest first) before the layer is left as it is.
PATIENCE = 3

#: A swap must improve the expected layer time by this relative margin.
EPS = 1e-9

#: Most (sample x layer x candidate swap) entries priced at once (a few arrays of this many floats).
CHUNK = 4_000_000


def refine(
    phy2log: np.ndarray,
    routing: Routing,
    table: CurveTable,
    slots_per_gpu: int,
    *,
    max_evals: float,
    gpus_per_node: int | None = None,
) -> tuple[np.ndarray, bool]:
    """Improve [L, P] ``phy2log`` by swaps on the sampled steps; returns it and whether it converged."""
    phy = np.array(phy2log, dtype=np.int64)
    num_layers, p = phy.shape
    s = slots_per_gpu
    g = p // s
    if g < 2:
        return phy, True
    tried = np.zeros(num_layers, dtype=np.int64)
    active = np.ones(num_layers, dtype=bool)
    evals = 0.0
    while active.any():
        layers = np.flatnonzero(active)
        cost = routing.counts.shape[0] * layers.size * s * p
        if evals + cost > max_evals:
            return phy, False
        evals += cost
        n = routing.counts.shape[0]
        chunk = max(1, CHUNK // (n * s * p))  # layers per batch: bounds the [N, A, S, G, S] arrays
        parts = [
            _best_swaps(phy[part], routing, part, table, s, tried[part], gpus_per_node)
            for part in np.array_split(layers, -(-layers.size // chunk))
        ]
        ok, a, i, h, j = (np.concatenate(x) for x in zip(*parts, strict=True))
        rows = layers[ok]
        x, y = a[ok] * s + i[ok], h[ok] * s + j[ok]
        phy[rows, x], phy[rows, y] = phy[rows, y], phy[rows, x].copy()
        tried[rows] = 0
        tried[layers[~ok]] += 1
        active[layers[~ok]] = tried[layers[~ok]] < min(PATIENCE, g)
    return phy, True


def _best_swaps(
    phy: np.ndarray,
    routing: Routing,
    layers: np.ndarray,
    table: CurveTable,
    s: int,
    skip: np.ndarray,
    gpus_per_node: int | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per layer of ``phy`` ([A, P]): (whether its best swap gains significantly, GPU a, slot i on a, GPU h,
    slot j on h), a being the ``skip``-th most often slowest GPU."""
    a_n, p = phy.shape
    g = p // s
    w = routing.weights
    n = w.size
    rows = np.arange(a_n)
    tok = sampled_slot_tokens(
        phy,
        routing.counts[:, layers],
        s,
        routing.dispatch,
        offsets=routing.offsets[:, layers],
        gpus_per_node=gpus_per_node,
    )  # [N, A, P]
    gpu = np.arange(p) // s
    own = table(gpu[None, None, :], tok).reshape(n, a_n, g, s)  # each slot on its own GPU
    t = own.sum(axis=3)  # [N, A, G]
    cur = w @ t.max(axis=2)  # [A]
    slowest = t.argmax(axis=2)  # [N, A]
    blame = np.zeros((a_n, g))
    np.add.at(
        blame, (np.broadcast_to(rows, slowest.shape), slowest), np.broadcast_to(w[:, None], slowest.shape)
    )
    order = np.argsort(-blame, axis=1, kind="stable")
    a = order[rows, np.minimum(skip, g - 1)]  # [A]
    tokg = tok.reshape(n, a_n, g, s)
    tok_a = tokg[:, rows, a]  # [N, A, S] tokens of a's slots
    own_a = own[:, rows, a]  # [N, A, S]
    t_a = t[:, rows, a]  # [N, A]
    on_a = table(a[None, :, None], tok).reshape(n, a_n, g, s)  # every slot's tokens priced on a
    a_on = np.moveaxis(table.all_gpus(tok_a), 0, -1)  # [N, A, S, G] a's slots priced on every GPU
    # new times of a and h after swapping slot i of a with slot j of h: [N, A, S_i, G, S_j]
    new_a = (t_a[:, :, None] - own_a)[:, :, :, None, None] + on_a[:, :, None, :, :]
    new_h = (t[:, :, None, :, None] - own[:, :, None, :, :]) + a_on[:, :, :, :, None]
    # the slowest of the other GPUs, from each sample's three slowest (padded so that G >= 3)
    pad = np.concatenate([t, np.full((n, a_n, max(0, 3 - g)), -np.inf)], axis=2)
    top = np.argsort(-pad, axis=2, kind="stable")[:, :, :3]  # [N, A, 3]
    val = np.take_along_axis(pad, top, axis=2)
    hh = np.arange(g)[None, None, :, None]
    free = (top[:, :, None, :] != a[None, :, None, None]) & (top[:, :, None, :] != hh)  # [N, A, G, 3]
    first = free.argmax(axis=3)
    rest = np.where(
        free.any(axis=3), np.take_along_axis(val[:, :, None, :], first[..., None], axis=3)[..., 0], 0.0
    )
    new_max = np.maximum(np.maximum(new_a, new_h), rest[:, :, None, :, None])
    score = np.tensordot(w, new_max, axes=1)  # [A, S_i, G, S_j]
    score[rows, :, a, :] = np.inf  # swaps within a change nothing
    flat = score.reshape(a_n, -1)
    best = flat.argmin(axis=1)
    i, rem = np.divmod(best, g * s)
    h, j = np.divmod(rem, s)
    after = new_max[:, rows, i, h, j]  # [N, A] each step's layer time after the best swap
    gain, se = paired_difference(after - t.max(axis=2), routing)  # [A]
    ok = (flat[rows, best] < cur * (1.0 - EPS)) & (gain + SIGNIFICANCE_Z * se < 0)
    return ok, a, i, h, j
