"""Sampled routing: the steps a deployment really runs, so that a placement can be priced by their
expected time instead of by mean loads.

Role: the input of the *expected* objective (``cost.evaluate(..., routing=...)``, ``solve(...,
routing=...)``). Mean loads hide what decides a decode step: with a batch of B tokens routed top-k over
E experts, many cold experts receive no token at all in a given step, and a slot with no tokens costs
nothing (``t_g(0) = 0``), while the mean-load model charges every slot at least its floor. This module
draws, per kind of step, R routings of the deployment's loads (seeded, deterministic) and records the
tokens each expert receives in each; ``cost.py`` turns them into per-slot tokens as the engine splits
replicas (``dispatch.sampled_slot_tokens``) and prices them with each GPU's curve.

**The step mix.** A deployment runs several kinds of steps: decode batches of B tokens, prefill chunks of
C tokens, mixed ones. ``StepMix`` lists them as (tokens per step, weight); tokens are what one MoE layer
routes in one step across the whole expert-parallel group, before top-k (as ``tokensPerStep``); a weight
is the fraction of *steps* of that kind (normalised to sum 1). The objective is the mean step time over
the mix, so each kind counts in proportion to the time it takes, i.e. its share of serving time.

**The routing model.** Every token picks exactly ``top_k`` distinct experts (top-k without replacement),
and expert e is among a token's picks with probability ``pi_e = top_k * share_e`` (``share`` = the load
profile's row, normalised), so each expert's expected tokens are exactly its mean load. That is
systematic sampling with unequal probabilities (Madow's): the experts are laid out in a random order as
arcs of lengths ``pi_e`` around a circle of circumference 1, wound ``top_k`` times; a token draws one
uniform point and picks the experts whose arcs cover it (k of them, all distinct since ``pi_e <= 1``).
Tokens are independent given the order, which is drawn afresh per (sample, layer). The tokens an expert
receives in a step are then the uniform points falling in its arc: one multinomial draw over the cells
the arcs' endpoints cut the circle into, O(E) per (sample, layer) whatever the batch size. Shares above
``1 / top_k`` (an expert no token can pick twice) are clipped to 1.

Shapes: L layers, E experts, K kinds of steps, R samples per kind, N = K * R samples in all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from vibe.placement.errors import PlacementError

#: Routing samples per kind of step by default, and the most allowed. The expected objective's solve time
#: grows linearly with the samples (benchmarks/results/placement.md); 16 per kind keeps the sampling error
#: of a decode step's predicted time within about 1 % on the DeepSeek-V3 benchmark.
DEFAULT_SAMPLES = 16
MAX_SAMPLES = 256

#: Most kinds of steps in a mix, and the most tokens one step may route (per MoE layer, before top-k).
MAX_KINDS = 16
MAX_STEP_TOKENS = 1 << 24

#: How a step's tokens for one expert split over its replicas (the engine's *dispatch*, the name
#: ``cost.evaluate`` and the engine records use): ``round-robin`` (TensorRT-LLM, vLLM: the expert's tokens
#: dealt over its replicas in turn, integers, from a random first replica), ``even`` (fractional
#: ``c / r``: DeepSeek's EPLB model), ``sglang-static`` (SGLang's static dispatch: each replica takes a
#: fixed share). See ``dispatch.sampled_slot_tokens``.
DispatchName = Literal["round-robin", "even", "sglang-static"]
DISPATCHES: tuple[str, ...] = get_args(DispatchName)  # dispatch.DISPATCH, the default first


@dataclass(frozen=True)
class StepMix:
    """The kinds of steps a deployment runs.

    Attributes:
        tokens: [K] tokens one MoE layer routes per step of each kind (before top-k), each >= 1.
        weights: [K] fraction of steps of each kind, > 0, summing to 1.
    """

    tokens: tuple[int, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        tokens, weights = tuple(self.tokens), tuple(self.weights)
        if not tokens or len(tokens) != len(weights):
            raise PlacementError("InvalidLoads", "a step mix needs one or more (tokens, weight) entries")
        if len(tokens) > MAX_KINDS:
            raise PlacementError("InvalidLoads", f"a step mix has at most {MAX_KINDS} kinds of steps")
        for t in tokens:
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 1 <= t <= MAX_STEP_TOKENS:
                raise PlacementError(
                    "InvalidLoads", f"step tokens must be integers in 1..{MAX_STEP_TOKENS}, not {t!r}"
                )
        if len(set(tokens)) != len(tokens):
            raise PlacementError("InvalidLoads", "a step mix lists each token count once")
        for w in weights:
            if isinstance(w, bool) or not isinstance(w, (int, float, np.number)) or not 0 < float(w) < 1e9:
                raise PlacementError("InvalidLoads", f"step weights must be positive numbers, not {w!r}")
        total = float(sum(float(w) for w in weights))
        object.__setattr__(self, "tokens", tuple(int(t) for t in tokens))
        object.__setattr__(self, "weights", tuple(float(w) / total for w in weights))

    @classmethod
    def one(cls, tokens: int) -> StepMix:
        """Every step routes ``tokens`` tokens (what a single ``tokensPerStep`` means)."""
        return cls((int(tokens),), (1.0,))

    @classmethod
    def parse(cls, text: str) -> StepMix:
        """From ``"64:0.7,2048:0.3"`` (tokens:weight, comma-separated; a bare ``"4096"`` is weight 1)."""
        tokens: list[int] = []
        weights: list[float] = []
        for part in str(text).split(","):
            m = re.fullmatch(r"\s*(\d+)\s*(?::\s*([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)\s*)?", part)
            if not m:
                raise PlacementError(
                    "InvalidLoads", f"step mix entry {part.strip()!r} is not TOKENS or TOKENS:WEIGHT"
                )
            tokens.append(int(m.group(1)))
            weights.append(float(m.group(2)) if m.group(2) is not None else 1.0)
        return cls(tuple(tokens), tuple(weights))

    @classmethod
    def from_entries(cls, entries: Any) -> StepMix:
        """From the CRD's ``[{tokens: 64, weight: 0.7}, ...]`` (weight defaults to 1)."""
        if not isinstance(entries, (list, tuple)):
            raise PlacementError("InvalidLoads", "a step mix is a list of {tokens, weight} entries")
        tokens, weights = [], []
        for entry in entries:
            if not isinstance(entry, dict) or "tokens" not in entry:
                raise PlacementError("InvalidLoads", "every step mix entry needs 'tokens'")
            tokens.append(entry["tokens"])
            weights.append(entry.get("weight", 1.0))
        return cls(tuple(tokens), tuple(weights))

    def as_json(self) -> list[dict[str, float]]:
        return [{"tokens": t, "weight": round(w, 6)} for t, w in zip(self.tokens, self.weights, strict=True)]

    def __str__(self) -> str:
        return ",".join(f"{t}:{w:.4g}" for t, w in zip(self.tokens, self.weights, strict=True))


@dataclass(frozen=True, eq=False)
class Routing:
    """Sampled routings of every kind of step in a mix: the expected objective's input.

    Attributes:
        counts: [N, L, E] int64 tokens each expert receives in each sampled step.
        weights: [N] float64 each sample's weight in the mean step time (its kind's weight / R), sum 1.
        kind: [N] int64 the kind (index into ``mix``) of each sample.
        offsets: [N, L, E] int64 a random non-negative integer per (sample, layer, expert): with
            ``round-robin`` the replica (in slot order) that gets the expert's first token is
            ``offsets % replicas``.
        mean_loads: [K, L, E] float64 each kind's mean loads (``share * tokens * top_k``): what the
            mean-load evaluator prices.
        mix, top_k, dispatch, samples, seed: how it was drawn.
    """

    counts: np.ndarray
    weights: np.ndarray
    kind: np.ndarray
    offsets: np.ndarray
    mean_loads: np.ndarray
    mix: StepMix
    top_k: int
    dispatch: str
    samples: int
    seed: int

    @property
    def shape(self) -> tuple[int, int]:
        """(L, E)."""
        return (int(self.counts.shape[1]), int(self.counts.shape[2]))

    def mean_loads_of_mix(self) -> np.ndarray:
        """[L, E] mean loads of the mix (each kind's mean loads weighted by its share of steps)."""
        return np.asarray(np.tensordot(np.asarray(self.mix.weights), self.mean_loads, axes=1))

    def describe(self) -> dict[str, Any]:
        """What a result's ``info`` says about its objective (JSON-serialisable)."""
        return {
            "objective": "expected",
            "stepMix": self.mix.as_json(),
            "topK": self.top_k,
            "dispatch": self.dispatch,
            "samplesPerKind": self.samples,
            "seed": self.seed,
        }


def sample_routing(
    loads: np.ndarray,
    mix: StepMix,
    top_k: int,
    *,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    dispatch: str = "round-robin",
) -> Routing:
    """Draw ``samples`` routings of each kind of step in ``mix`` (see the module docstring).

    Args:
        loads: [L, E] load profile (any scale: only each layer's shares matter); every layer needs load.
        mix: the kinds of steps; top_k: experts each token is routed to.
        samples: R, routings per kind (1..MAX_SAMPLES); seed: the same seed gives the same draws.
        dispatch: how an expert's tokens split over its replicas (``DISPATCHES``).
    Returns:
        Routing with N = len(mix.tokens) * samples samples.
    """
    loads = np.asarray(loads, dtype=np.float64)
    if not isinstance(mix, StepMix):
        raise PlacementError("InvalidLoads", "the step mix must be a vibe.placement.routing.StepMix")
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise PlacementError("InvalidLoads", f"the expected objective needs topK >= 1, not {top_k!r}")
    if loads.ndim != 2 or top_k > loads.shape[1]:
        raise PlacementError("InvalidLoads", f"topK {top_k} exceeds the {loads.shape[-1]} experts")
    if (
        isinstance(samples, bool)
        or not isinstance(samples, (int, np.integer))
        or not 1 <= samples <= MAX_SAMPLES
    ):
        raise PlacementError(
            "InvalidLoads", f"routing samples per kind of step must be in 1..{MAX_SAMPLES}, not {samples!r}"
        )
    if dispatch not in DISPATCHES:
        raise PlacementError(
            "InvalidDispatch", f"unknown dispatch {dispatch!r} (one of {', '.join(DISPATCHES)})"
        )
    sums = loads.sum(axis=1, keepdims=True)
    if not np.all(sums > 0):
        layer = int(np.flatnonzero(sums[:, 0] <= 0)[0])
        raise PlacementError("InvalidLoads", f"layer {layer} has no load to sample routings from")
    shares = loads / sums
    rng = np.random.default_rng([int(seed), 19])
    counts = np.concatenate([sample_counts(shares, top_k, t, samples, rng) for t in mix.tokens])
    offsets = rng.integers(0, 1 << 30, size=counts.shape, dtype=np.int64)
    kind = np.repeat(np.arange(len(mix.tokens)), samples)
    weights = np.repeat(np.asarray(mix.weights) / samples, samples)
    mean = shares[None] * (np.asarray(mix.tokens, dtype=np.float64) * top_k)[:, None, None]
    for a in (counts, offsets, kind, weights, mean):
        a.setflags(write=False)
    return Routing(counts, weights, kind, offsets, mean, mix, int(top_k), dispatch, int(samples), int(seed))


def sample_counts(
    shares: np.ndarray, top_k: int, tokens: int, samples: int, rng: np.random.Generator
) -> np.ndarray:
    """[R, L, E] int64 tokens per expert in ``samples`` steps of ``tokens`` tokens (module docstring).

    Args:
        shares: [L, E] each layer's load shares (rows sum to 1).
    """
    num_layers, e = shares.shape
    pi = np.minimum(shares * top_k, 1.0)  # [L, E] chance that a token picks each expert
    order = np.argsort(rng.random((samples, num_layers, e)), axis=2)  # a random layout per (sample, layer)
    arc = np.take_along_axis(np.broadcast_to(pi, order.shape), order, axis=2)  # [R, L, E] arcs in layout
    end = np.cumsum(arc, axis=2)
    start = np.concatenate([np.zeros((samples, num_layers, 1)), end[:, :, :-1]], axis=2)  # exact joins
    points = np.concatenate([start % 1.0, end % 1.0], axis=2)  # [R, L, 2E] arc endpoints on the circle
    cut = np.argsort(points, axis=2, kind="stable")
    at = np.take_along_axis(points, cut, axis=2)
    width = np.diff(at, axis=2, append=at[:, :, :1] + 1.0)  # cell j: from cut j to cut j+1 (wrapping)
    width = np.maximum(width, 0.0)
    width /= width.sum(axis=2, keepdims=True)
    hits = rng.multinomial(int(tokens), width)  # [R, L, 2E] uniform points (tokens) per cell
    before = np.concatenate(
        [np.zeros((samples, num_layers, 1), dtype=np.int64), np.cumsum(hits, axis=2)], axis=2
    )
    rank = np.empty_like(cut)
    np.put_along_axis(rank, cut, np.arange(2 * e)[None, None, :], axis=2)  # each endpoint's cell
    lo, hi = rank[:, :, :e], rank[:, :, e:]
    got = np.take_along_axis(before, hi, axis=2) - np.take_along_axis(before, lo, axis=2)
    got = np.where(points[:, :, e:] < points[:, :, :e], got + int(tokens), got)  # the arc wraps past 0
    got = np.where(arc >= 1.0, int(tokens), np.where(arc > 0.0, got, 0))
    out = np.empty_like(got)
    np.put_along_axis(out, order, got, axis=2)  # back to expert order
    return out.astype(np.int64)


def routing_from_flags(
    loads: np.ndarray,
    step_mix: str | None,
    top_k: int | None,
    *,
    samples: int = DEFAULT_SAMPLES,
    dispatch: str = "round-robin",
    loads_doc: Any = None,
    tokens_per_step: float | None = None,
    seed: int = 0,
) -> Routing | None:
    """The routing ``vibe plan`` and ``vibe simulate`` optimise for, from their shared flags
    (``--step-mix``, ``--top-k``, ``--samples``, ``--dispatch``): None without ``--step-mix`` (the
    mean-load objective). ``top_k`` falls back to the loads file's ``top_k`` / ``topK``."""
    if step_mix is None:
        return None
    if tokens_per_step is not None:
        raise PlacementError(
            "InvalidLoads",
            "give --step-mix or --tokens-per-step, not both (a bare --step-mix N is one step size)",
        )
    if top_k is None and isinstance(loads_doc, dict):
        top_k = loads_doc.get("top_k", loads_doc.get("topK"))
    if top_k is None:
        raise PlacementError("InvalidLoads", "--step-mix needs --top-k, the experts each token is routed to")
    return sample_routing(
        loads, StepMix.parse(step_mix), top_k, samples=samples, seed=seed, dispatch=dispatch
    )
