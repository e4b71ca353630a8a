"""Local search on placements: swaps and replica re-targets, batched over layers.

Role: vibe's solver and the incremental re-placer both start from a complete placement and improve it
here, one move per layer per round, until no improving move is left or the work budget ends.

Two moves, both keeping exactly S slots per GPU and at least one replica per expert:

* **swap**: exchange the experts of a slot on the layer's slowest GPU b and a slot on another GPU.
  Replica counts do not change, so each replica's cost on each GPU is a table lookup ``c0[g, e]``.
* **re-target**: a slot holding a redundant replica of x (r_x >= 2) takes a replica of y instead. x's
  other replicas get heavier (w_x / (r_x - 1)), y's lighter (w_y / (r_y + 1)): this is how replication
  adapts to the fleet (e.g. a slow GPU filling its slots with light replicas). Candidates: slots of b
  re-targeted to the experts of the next-heaviest GPUs or to the cheapest extra replicas on b; slots of
  the lightest GPUs re-targeted to one of b's experts; and redundant replicas anywhere off b, lightest
  GPUs first, re-targeted to b's costliest expert (the last two add a replica of a hot expert off b; the
  last finds spare replicas that the lightest GPUs may not hold, which is what lets an incremental
  re-placement follow a load drift below the curve's knee).

A move is accepted when every GPU whose time changes ends strictly below b's old time, the best such
move per layer (smallest new maximum among the changed GPUs) first. Each accepted move shrinks the
sorted vector of GPU times lexicographically, so the search terminates; a layer's time never rises.

A replica's cost is ``t_g(w_e / r_e)`` (the mean-load objective), or whatever a ``pricer`` says it is:
the expected objective passes its expected cost over sampled steps (``cost.ExpectedReplicaCost``).

Determinism: the budget is counted in candidate evaluations, not wall-clock seconds, so the same inputs
give the same placement on any machine and under any load (``EVALS_PER_SECOND`` converts a time budget).

Shapes: L layers (A of them active in a round), E experts, G GPUs, S slots per GPU, P = G*S.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vibe.placement.cost import bincount_rows
from vibe.placement.curves import CurveTable

#: Prices ONE replica of an expert on every GPU: (layers, experts, replica counts) as broadcastable int
#: arrays -> [G, *shape] seconds (``cost.ExpectedReplicaCost``; by default ``t_g(load / replicas)``).
Pricer = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

#: Candidate evaluations one core does per second (measured roughly on a busy shared core; an idle one
#: does about twice as many); a solve's ``time_budget_s`` becomes ``time_budget_s * EVALS_PER_SECOND``
#: evaluations, so the budget is a bound on work, not a deadline.
EVALS_PER_SECOND = 20e6

#: A move must improve by this relative margin (guards against cycling on rounding noise).
EPS = 1e-9

#: Re-target candidate sizes: heaviest GPUs whose experts b may take, cheap extra replicas on b,
#: lightest GPUs whose slots may take one of b's experts, redundant slots off b (lightest GPUs first)
#: that may take b's costliest expert.
RETARGET_HEAVY_GPUS = 1
RETARGET_CHEAP_EXPERTS = 8
RETARGET_LIGHT_GPUS = 2
RETARGET_SPARE_SLOTS = 32

#: Kicks: layers more than this fraction above their lower bound get perturbed and re-searched, for at
#: most KICK_ROUNDS rounds, each layer until KICK_PATIENCE rounds in a row bring nothing.
KICK_TOLERANCE = 0.005
KICK_ROUNDS = 40
KICK_PATIENCE = 8
#: Kicks are for coarse layers (few slots: each one matters, and a round is cheap); on layers of
#: hundreds of slots local search already ends within a fraction of a percent of the bound.
KICK_MAX_SLOTS = 64


class SearchState:
    """A batch of per-layer placements with everything a move evaluation needs, kept in sync.

    Cost arrays are laid out expert-major ([L, E, G]) so that gathering experts yields contiguous rows
    of per-GPU values.

    Attributes:
        loads: [L, E] tokens per expert.  phy: [L, G, S] expert in each slot.
        counts: [L, E] replicas per expert.  cnt: [L, E, G] replicas of each expert on each GPU.
        c0, cm, cp: [L, E, G] seconds one replica of e takes on g with r_e, r_e - 1 (c0 where r_e = 1)
            and r_e + 1 replicas.
        lose, gain: [L, E, G] change of g's time if e loses / gains a replica elsewhere:
            ``cnt * (cm - c0)`` and ``cnt * (cp - c0)``.
        sc: [L, G, S] seconds of each slot.  T: [L, G] seconds of each GPU.
    """

    def __init__(
        self,
        loads: np.ndarray,
        table: CurveTable,
        phy2log: np.ndarray,
        slots_per_gpu: int,
        *,
        pricer: Pricer | None = None,
    ) -> None:
        self.loads = loads
        self.table = table
        self.pricer = pricer
        num_layers, e = loads.shape
        self.G = table.num_gpus
        self.S = slots_per_gpu
        self.E = e
        self.phy = phy2log.reshape(num_layers, self.G, self.S).copy()
        self.counts = bincount_rows(self.phy.reshape(num_layers, -1), e)
        cnt = bincount_rows(self.phy.reshape(num_layers * self.G, self.S), e).reshape(num_layers, self.G, e)
        self.cnt = np.ascontiguousarray(np.moveaxis(cnt, 1, 2))
        self.c0 = np.empty((num_layers, e, self.G))
        self.cm = np.empty_like(self.c0)
        self.cp = np.empty_like(self.c0)
        self.lose = np.empty_like(self.c0)
        self.gain = np.empty_like(self.c0)
        self._price_columns(np.arange(num_layers)[:, None], np.arange(e)[None, :])
        self.sc = np.empty(self.phy.shape)
        self.T = np.empty(self.phy.shape[:2])
        self._refresh_layers(np.arange(num_layers))
        self.evals = 0

    # ---------------------------------------------------------------- bookkeeping

    def _price_columns(self, layers: np.ndarray, experts: np.ndarray) -> None:
        """Recompute c0/cm/cp/lose/gain for (layer, expert) pairs given as broadcastable int arrays."""
        layers, experts = np.broadcast_arrays(layers, experts)
        if self.pricer is None:
            w = self.loads[layers, experts]
            r = self.counts[layers, experts].astype(np.float64)
            t = self.table
            c0 = t.all_gpus(w / r)  # [G, ...]
            cm = np.where(r > 1, t.all_gpus(w / np.maximum(r - 1, 1)), c0)
            cp = t.all_gpus(w / (r + 1))
        else:
            n = self.counts[layers, experts]
            c0 = self.pricer(layers, experts, n)
            cm = np.where(n > 1, self.pricer(layers, experts, np.maximum(n - 1, 1)), c0)
            cp = self.pricer(layers, experts, n + 1)
        c0, cm, cp = (np.moveaxis(a, 0, -1) for a in (c0, cm, cp))  # [..., G]
        cnt = self.cnt[layers, experts]
        self.c0[layers, experts] = c0
        self.cm[layers, experts] = cm
        self.cp[layers, experts] = cp
        self.lose[layers, experts] = cnt * (cm - c0)
        self.gain[layers, experts] = cnt * (cp - c0)

    def _recount(self, layers: np.ndarray, experts: np.ndarray, gpus: np.ndarray, delta: int) -> None:
        """cnt[l, e, g] += delta for parallel index arrays, keeping lose/gain in step."""
        self.cnt[layers, experts, gpus] += delta
        c = self.cnt[layers, experts, gpus]
        c0 = self.c0[layers, experts, gpus]
        self.lose[layers, experts, gpus] = c * (self.cm[layers, experts, gpus] - c0)
        self.gain[layers, experts, gpus] = c * (self.cp[layers, experts, gpus] - c0)

    def _refresh_layers(self, layers: np.ndarray) -> None:
        """Recompute slot and GPU times of whole layers from c0."""
        if layers.size == 0:
            return
        phy = self.phy[layers]  # [A, G, S]
        self.sc[layers] = self.c0[layers[:, None, None], phy, np.arange(self.G)[None, :, None]]
        self.T[layers] = self.sc[layers].sum(axis=2)

    def phy2log(self) -> np.ndarray:
        """[L, P] int64."""
        return self.phy.reshape(self.phy.shape[0], -1).copy()

    def layer_times(self) -> np.ndarray:
        return self.T.max(axis=1)

    # ---------------------------------------------------------------- swaps

    def best_swaps(self, layers: np.ndarray) -> tuple[np.ndarray, ...]:
        """For each layer, the best swap between its slowest GPU b and any other GPU.

        Returns (per layer, [A] each): score (new max of the two changed GPUs; inf if none),
        b, slot on b, other GPU, slot on it.
        """
        a = layers.size
        s, g = self.S, self.G
        rows = np.arange(a)
        T = self.T[layers]  # [A, G]
        b = T.argmax(axis=1)
        tb = T[rows, b]
        phy = self.phy[layers]  # [A, G, S]
        sc = self.sc[layers]  # [A, G, S]
        eb = phy[rows, b]  # [A, S]
        cb = sc[rows, b]  # [A, S]
        lay = layers[:, None, None]
        on_b = self.c0[lay, phy, b[:, None, None]]  # [A, G, S]: each slot's expert priced on b
        b_items = self.c0[layers[:, None], eb]  # [A, S_i, G]: b's experts priced on every GPU
        # i: slot on b, (h, j): slot j on GPU h; b's own row is excluded by an infinite penalty
        rest = T[:, :, None] - sc  # [A, G, S_j]
        rest[rows, b] = np.inf
        new_b = (tb[:, None] - cb)[:, :, None, None] + on_b[:, None, :, :]  # [A, S_i, G, S_j]
        new_h = rest[:, None, :, :] + b_items[:, :, :, None]  # [A, S_i, G, S_j]
        flat = np.maximum(new_b, new_h).reshape(a, -1)
        best = flat.argmin(axis=1)
        self.evals += flat.size
        i, rem = np.divmod(best, g * s)
        h, j = np.divmod(rem, s)
        return flat[rows, best], b, i, h, j

    def apply_swaps(
        self, layers: np.ndarray, b: np.ndarray, i: np.ndarray, g: np.ndarray, j: np.ndarray
    ) -> None:
        """Exchange slot (b, i) and slot (g, j) in each given layer (replica counts unchanged)."""
        x = self.phy[layers, b, i].copy()
        y = self.phy[layers, g, j].copy()
        self.phy[layers, b, i] = y
        self.phy[layers, g, j] = x
        # one layer at a time per call, so no index repeats within a call
        self._recount(layers, x, b, -1)
        self._recount(layers, y, b, 1)
        self._recount(layers, y, g, -1)
        self._recount(layers, x, g, 1)
        self.sc[layers, b, i] = self.c0[layers, y, b]
        self.sc[layers, g, j] = self.c0[layers, x, g]
        self.T[layers, b] = self.sc[layers, b].sum(axis=1)
        self.T[layers, g] = self.sc[layers, g].sum(axis=1)

    # ---------------------------------------------------------------- re-targets

    def retarget_candidates(self, layers: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidate re-targets for each layer: [A, N] GPU a, slot s on a, new expert y."""
        a = layers.size
        s, g = self.S, self.G
        rows = np.arange(a)
        T = self.T[layers]
        order = np.argsort(-T, axis=1, kind="stable")  # heaviest first
        b = order[:, 0]
        phy = self.phy[layers]
        # (1) slots of b -> experts of the next-heaviest GPUs, or the cheapest extra replicas on b
        heavy = order[:, 1 : 1 + RETARGET_HEAVY_GPUS]
        y_heavy = phy[rows[:, None], heavy].reshape(a, -1)
        ncheap = min(RETARGET_CHEAP_EXPERTS, self.E)
        cp_b = self.cp[layers[:, None], np.arange(self.E)[None, :], b[:, None]]  # [A, E]
        y_cheap = np.argpartition(cp_b, ncheap - 1, axis=1)[:, :ncheap]
        ys = np.concatenate([y_heavy, y_cheap], axis=1)  # [A, m]
        m = ys.shape[1]
        a1 = np.broadcast_to(b[:, None, None], (a, s, m))
        s1 = np.broadcast_to(np.arange(s)[None, :, None], (a, s, m))
        y1 = np.broadcast_to(ys[:, None, :], (a, s, m))
        # (2) slots of the lightest GPUs -> one of b's experts
        nlight = min(RETARGET_LIGHT_GPUS, g - 1)
        light = order[:, g - nlight :]  # [A, k]
        eb = phy[rows, b]  # [A, S]
        a2 = np.broadcast_to(light[:, :, None, None], (a, nlight, s, s))
        s2 = np.broadcast_to(np.arange(s)[None, None, :, None], (a, nlight, s, s))
        y2 = np.broadcast_to(eb[:, None, None, :], (a, nlight, s, s))
        # (3) redundant replicas off b, on the lightest GPUs first -> b's costliest expert
        p = g * s
        gpu_of = np.arange(p) // s
        spare = (self.counts[layers[:, None], phy.reshape(a, p)] >= 2) & (gpu_of[None, :] != b[:, None])
        nspare = min(RETARGET_SPARE_SLOTS, p)
        pick = np.argsort(np.where(spare, T[:, gpu_of], np.inf), axis=1, kind="stable")[:, :nspare]
        a3, s3 = np.divmod(pick, s)  # [A, k]; non-redundant picks are dropped as invalid later
        hot = phy[rows, b, self.sc[layers, b].argmax(axis=1)]  # [A]
        y3 = np.broadcast_to(hot[:, None], (a, nspare))
        return (
            np.concatenate([a1.reshape(a, -1), a2.reshape(a, -1), a3], axis=1),
            np.concatenate([s1.reshape(a, -1), s2.reshape(a, -1), s3], axis=1),
            np.concatenate([y1.reshape(a, -1), y2.reshape(a, -1), y3], axis=1),
        )

    def eval_retargets(
        self, layers: np.ndarray, ga: np.ndarray, sa: np.ndarray, y: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """New GPU times after re-targeting slot (ga, sa) to expert y, for [A, N] candidates.

        Returns:
            new_t: [A, N, G] seconds per GPU (inf rows for invalid candidates);
            changed: [A, N, G] bool, which GPUs' times change.
        """
        lay = layers[:, None]
        x = self.phy[lay, ga, sa]  # [A, N]
        dx = self.lose[lay, x]  # [A, N, G]: x's other replicas get heavier
        dy = self.gain[lay, y]  # [A, N, G]: y's replicas get lighter
        at_a = self.cp[lay, y, ga] - self.cm[lay, x, ga]  # [A, N]: the slot itself swaps x for y
        onehot = np.arange(self.G)[None, None, :] == ga[:, :, None]
        new_t = self.T[layers][:, None, :] + dx + dy
        new_t += np.where(onehot, at_a[:, :, None], 0.0)
        changed = (dx != 0) | (dy != 0) | onehot
        valid = (self.counts[lay, x] >= 2) & (x != y)
        new_t[~valid] = np.inf
        self.evals += new_t.size
        return new_t, changed

    def best_retargets(self, layers: np.ndarray, *, with_layer_max: bool = False) -> tuple[np.ndarray, ...]:
        """Per layer: score (new max over changed GPUs, inf if no valid move), GPU, slot, new expert
        (and, if asked, the layer's new time: the max over all its GPUs)."""
        ga, sa, y = self.retarget_candidates(layers)
        rows = np.arange(layers.size)
        # keep only valid candidates (a redundant replica re-targeted to another expert), left-packed
        x = self.phy[layers[:, None], ga, sa]
        valid = (self.counts[layers[:, None], x] >= 2) & (x != y)
        k = int(valid.sum(axis=1).max(initial=0))
        if k == 0:
            inf = np.full(layers.size, np.inf)
            zero = np.zeros(layers.size, dtype=np.int64)
            return (inf, zero, zero, zero, inf) if with_layer_max else (inf, zero, zero, zero)
        keep = np.argsort(~valid, axis=1, kind="stable")[:, :k]
        ga, sa, y = (np.take_along_axis(v, keep, axis=1) for v in (ga, sa, y))
        new_t, changed = self.eval_retargets(layers, ga, sa, y)
        score = np.where(changed, new_t, -np.inf).max(axis=2)  # [A, N]
        # the slowest GPU b must be among the changed ones (else the layer cannot get faster)
        b = self.T[layers].argmax(axis=1)
        score[~changed[rows, :, b]] = np.inf
        score[~np.isfinite(score)] = np.inf
        best = score.argmin(axis=1)
        out: tuple[np.ndarray, ...] = (score[rows, best], ga[rows, best], sa[rows, best], y[rows, best])
        if with_layer_max:
            out = (*out, new_t[rows, best].max(axis=1))
        return out

    def apply_retargets(self, layers: np.ndarray, ga: np.ndarray, sa: np.ndarray, y: np.ndarray) -> None:
        """Slot (ga, sa) of each given layer takes a replica of y (layers distinct)."""
        x = self.phy[layers, ga, sa].copy()
        self.phy[layers, ga, sa] = y
        self.counts[layers, x] -= 1
        self.counts[layers, y] += 1
        self.cnt[layers, x, ga] -= 1
        self.cnt[layers, y, ga] += 1
        self._price_columns(layers[:, None], np.stack([x, y], axis=1))
        self._refresh_layers(layers)


def improve(state: SearchState, max_evals: float, *, retarget: bool = True) -> bool:
    """Best-improvement local search on every layer of ``state`` until none improves or the budget ends.

    Rounds alternate: swaps on every layer that still improves until none does, then one re-target
    round on the layers that changed since their last one, which re-opens swaps where a re-target was
    taken. A layer whose swaps and re-targets both find nothing is done.

    Returns:
        True if the search converged (no improving move left), False if the budget ended first.
    """
    num_layers = state.T.shape[0]
    swap_active = np.ones(num_layers, dtype=bool)
    dirty = np.ones(num_layers, dtype=bool)  # changed since its last re-target round found nothing
    while True:
        while swap_active.any():
            if state.evals >= max_evals:
                return False
            layers = np.flatnonzero(swap_active)
            score, b, i, g, j = state.best_swaps(layers)
            tb = state.T[layers, b]
            ok = score < tb * (1 - EPS)
            swap_active[layers[~ok]] = False
            if ok.any():
                state.apply_swaps(layers[ok], b[ok], i[ok], g[ok], j[ok])
                dirty[layers[ok]] = True
        if not retarget or not dirty.any():
            return True
        if state.evals >= max_evals:
            return False
        layers = np.flatnonzero(dirty)
        score, ga, sa, y = state.best_retargets(layers)
        ok = score < state.T[layers].max(axis=1) * (1 - EPS)
        dirty[layers[~ok]] = False
        if ok.any():
            state.apply_retargets(layers[ok], ga[ok], sa[ok], y[ok])
            swap_active[layers[ok]] = True


def kick(
    loads: np.ndarray,
    table: CurveTable,
    slots_per_gpu: int,
    phy2log: np.ndarray,
    bounds: np.ndarray,
    rng: np.random.Generator,
    max_evals: float,
) -> np.ndarray:
    """Iterated local search for the layers local search left far from their bound.

    A local optimum of single moves can need several coordinated changes to escape (coarse instances
    such as Mixtral's 8 experts on 16 slots, where a different replication needs a different packing).
    Each round, every such layer moves one or two replicas from a random expert that has several to a
    random other expert, is packed afresh with each GPU's curve (earliest finish time) and searched
    again; the result is kept if faster. With no redundant slots, the kick is two random swaps instead.
    Seeded, and counted in evaluations, so it is deterministic.

    Only layers of at most ``KICK_MAX_SLOTS`` slots are kicked.

    Args:
        loads: [L, E]; phy2log: [L, P] the local optimum; bounds: [L] layer lower bounds.
    Returns:
        [L, P] a placement no slower than ``phy2log`` in any layer.
    """
    from vibe.placement import policies  # local: policies prices with the table, like this module

    num_layers, e = loads.shape
    g, s = table.num_gpus, slots_per_gpu
    p = g * s
    if p > KICK_MAX_SLOTS:
        return phy2log
    best = phy2log.copy()
    best_t = _layer_times(best, loads, table, s)
    fails = np.zeros(num_layers, dtype=np.int64)
    spent = 0.0
    for _ in range(KICK_ROUNDS):
        todo = np.flatnonzero((best_t > bounds * (1 + KICK_TOLERANCE)) & (fails < KICK_PATIENCE))
        if todo.size == 0 or spent >= max_evals:
            break
        sub = loads[todo]
        if p > e:
            counts = bincount_rows(best[todo], e)
            for _ in range(int(rng.integers(1, 3))):
                donors = np.where(counts >= 2, rng.random(counts.shape), -1.0).argmax(axis=1)
                takers = np.where(np.arange(e)[None, :] != donors[:, None], rng.random(counts.shape), -1.0)
                takers = takers.argmax(axis=1)
                ok = counts[np.arange(todo.size), donors] >= 2
                counts[np.arange(todo.size)[ok], donors[ok]] -= 1
                counts[np.arange(todo.size)[ok], takers[ok]] += 1
            experts, _ = policies.replicas_heaviest_first(sub, counts)
            cand = policies.pack_by_time(experts, policies.replica_costs(sub, counts, table), g, s)
        else:
            cand = best[todo].copy()
            rows = np.arange(todo.size)
            for _ in range(2):
                i, j = rng.integers(0, p, size=(2, todo.size))
                cand[rows, i], cand[rows, j] = cand[rows, j], cand[rows, i].copy()
        state = SearchState(sub, table, cand, s)
        improve(state, max_evals - spent)
        spent += state.evals
        t = state.layer_times()
        better = t < best_t[todo] * (1 - EPS)
        best[todo[better]] = state.phy2log()[better]
        best_t[todo[better]] = t[better]
        fails[todo[better]] = 0
        fails[todo[~better]] += 1
    return best


def _layer_times(phy2log: np.ndarray, loads: np.ndarray, table: CurveTable, s: int) -> np.ndarray:
    state = SearchState(loads, table, phy2log, s)
    return state.layer_times()
