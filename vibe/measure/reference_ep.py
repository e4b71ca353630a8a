"""A reference expert-parallel MoE layer that executes a placement the way a serving engine does.

Role: the consumer of vibe's output that runs it for real. Everything else in vibe prices placements with
the cost model; this module loads the placement from the mounted ``<name>-placement`` ConfigMap through
the same reader as ``vibe serving init`` (``emit.run_init``: one kubelet snapshot, content hash checked,
generation ordered, fitted to the engine's EP size and redundant experts, the engine file written and then
read back, as an engine reads it), then runs real tokens through it over ``torch.distributed``:

1. router: each rank's T tokens pick ``top_k`` distinct experts, sampled (seeded) with probabilities
   proportional to the layer's load profile, with softmax combine weights;
2. replica choice, as engines dispatch to redundant experts: the j-th assignment of expert e on rank r
   goes to replica ``(j + r) mod logcnt[e]`` of e (slots ascending, EPLB's ``log2phy``), so an expert's
   tokens split evenly over its replicas, as the cost model assumes (``load_e / r_e`` per slot). With
   replica weights (the ``weighted`` replica split, ``load_placement(..., replica_split="weighted")``
   reads them from the ``vibe`` key, ``ServingPlacement.replica_weights``), an expert whose shares differ
   is split by cumulative shares instead: of the rank's n assignments of e, the j-th goes to the replica
   whose cumulative-share interval ``[W - w, W)`` holds ``((j + 1/2) / n + r / G) mod 1``, so replica i
   takes ``n * w_i`` of them within one per rank and step (deterministic; the ``r / G`` phase spreads
   the rounding over ranks); an expert with equal shares keeps the rule above;
3. dispatch: ``all_to_all_single`` of split sizes, tokens and local slot ids to the slots' ranks
   (physical slot p lives on rank ``p // S``, SGLang's and EPLB's convention);
4. experts: each rank runs its S slots as ONE grouped GEMM (``torch._grouped_mm``, bf16 on sm90+) for
   gate/up, SwiGLU, ONE grouped GEMM for down; elsewhere (CPU, older GPUs) a loop over slots;
5. combine: ``all_to_all_single`` back, then the weighted sum over each token's k experts.

Weights are deterministic per (seed, layer, logical expert), so every replica of an expert is identical
and a placement can never change the layer's function: ``dense_reference`` computes the same outputs in
one process without any placement, which the CPU tests compare against (gloo, 4 ranks).

Timing (``run_rank`` with ``timed=True``): CUDA events per rank per layer around dispatch, expert compute
and combine, over ``steps`` steps after ``warmup``; what serving sees per layer is the slowest rank.

Tensor shapes: L layers, E logical experts, G ranks (EP size), S slots per rank, P = G * S physical slots,
T tokens per rank, k = top_k, H hidden size, I expert intermediate size.

``torch`` is imported inside the functions: ``vibe serving`` commands that do not run this stay light.
NVLink multicast stays off in every process (``NO_MULTICAST``): see the device notes in DESIGN.md.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vibe import contract
from vibe.engines import ENGINES, EngineSettings
from vibe.placement import Placement
from vibe.serving import emit
from vibe.serving.errors import ServingError
from vibe.serving.snapshot import read_snapshot

if TYPE_CHECKING:
    import torch

#: Set in every process that may touch NCCL, PyTorch symmetric memory or NVSHMEM: NVLink multicast off.
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def no_multicast(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with NVLink multicast forced off."""
    out = dict(os.environ if env is None else env)
    out.update(NO_MULTICAST)
    return out


# -- the placement, read as a serving pod reads it ------------------------------------------------------


@dataclass(frozen=True)
class ServingPlacement:
    """The slot -> expert map an engine runs with, and which placement it is.

    Attributes:
        phy2log: [L, P] int64, the logical expert in each physical slot.
        num_experts: E.
        ep_size: G.
        generation: the placement generation (None if the ConfigMap carried none).
        data_hash: content hash of the whole snapshot it came from.
        document: which document it was read from (``eplb``, ``sglang`` or ``vibe``).
        replica_weights: None (the even split) or [L, P] float64 each slot's share of its expert's
            tokens (``vibe.placement.Placement.weights``).
    """

    phy2log: np.ndarray
    num_experts: int
    ep_size: int
    generation: int | None
    data_hash: str
    document: str
    replica_weights: np.ndarray | None = None

    @property
    def num_layers(self) -> int:
        return int(self.phy2log.shape[0])

    @property
    def slots_per_rank(self) -> int:
        return int(self.phy2log.shape[1]) // self.ep_size

    def log2phy(self) -> tuple[np.ndarray, np.ndarray]:
        """([L, E, X] slots of each expert ascending, -1 padded; [L, E] replica counts): EPLB's tables."""
        pl = Placement(self.phy2log, self.slots_per_rank, self.num_experts)
        return pl.log2phy(), pl.logcnt()

    def cumulative_shares(self) -> tuple[np.ndarray, np.ndarray] | None:
        """([L, E, X] each replica's upper cumulative share in ``log2phy`` order, padded with 2.0; [L, E]
        whether the expert's shares differ), or None without replica weights."""
        if self.replica_weights is None:
            return None
        pl = Placement(self.phy2log, self.slots_per_rank, self.num_experts, self.replica_weights)
        assert pl.weights is not None
        log2phy = pl.log2phy()
        w = np.where(
            log2phy >= 0, np.take_along_axis(pl.weights[:, None, :], np.maximum(log2phy, 0), axis=2), 0.0
        )
        cum = np.cumsum(w, axis=2)
        cnt = pl.logcnt()
        x = np.arange(log2phy.shape[2])[None, None, :]
        cum = np.where(x == cnt[:, :, None] - 1, 1.0, np.where(log2phy >= 0, np.minimum(cum, 1.0), 2.0))
        even = 1.0 / cnt[:, :, None]
        unequal = np.asarray((np.where(log2phy >= 0, np.abs(w - even), 0.0) > 1e-12).any(axis=2))
        return cum, unequal


def load_placement(
    mount: str | os.PathLike[str],
    *,
    ep_size: int,
    num_experts: int,
    slots_per_rank: int,
    work_dir: str | os.PathLike[str],
    document: str = "eplb",
    num_layers: int | None = None,
    expect_generation: int | None = None,
    wait_seconds: float = 0.0,
    replica_split: str = "even",
) -> ServingPlacement:
    """Read the mounted placement exactly as ``vibe serving init`` does, then the engine file it wrote.

    ``replica_split="weighted"`` also reads the replica weights from the ``vibe`` key of the same
    snapshot (its content hash checked with the rest) and refuses a placement without them, or whose
    slots differ from the engine file's. ``document="vibe"`` reads the ``vibe`` key alone (what the
    operator writes for the weighted split, whose only format it is), weights and all, checked the same
    way (one snapshot, its hash, the generation; EP size, slots and experts).

    The engine is launched with ``num_experts`` experts and ``ep_size * slots_per_rank`` physical slots
    (SGLang: ``--ep-num-redundant-experts = P - E``); ``emit.run_init`` refuses anything else (a
    missing expert, another EP size, a hash that does not match, a generation other than expected).

    Raises:
        ServingError: whatever the init container would fail with, before any step runs.
    """
    if document == "vibe":
        return _vibe_placement(
            mount, ep_size, num_experts, slots_per_rank, num_layers, expect_generation, wait_seconds
        )
    if document not in ("eplb", "sglang"):
        raise ServingError("InvalidArgument", f"document must be eplb, sglang or vibe, got {document!r}")
    settings = EngineSettings(
        ep_size=ep_size,
        redundant_experts=ep_size * slots_per_rank - num_experts,
        num_experts=num_experts,
        num_layers=num_layers,
    )
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    out = work / ("eplb.json" if document == "eplb" else "expert-location.json")
    applied = emit.run_init(
        str(mount),
        settings,
        {document: out},
        state_dir=str(work),
        expect_generation=expect_generation,
        wait_seconds=wait_seconds,
    )
    doc = json.loads(out.read_text(encoding="utf-8"))  # what the engine reads at start
    rows = np.asarray(
        doc["phy2log"] if document == "eplb" else doc["physical_to_logical_map"], dtype=np.int64
    )
    weights = None
    if replica_split == "weighted":
        weights = _replica_weights(Path(mount), rows, slots_per_rank, num_experts, applied.data_hash)
    elif replica_split != "even":
        raise ServingError(
            "InvalidArgument", f"replica_split must be even or weighted, got {replica_split!r}"
        )
    return ServingPlacement(
        rows, num_experts, ep_size, applied.generation, applied.data_hash, document, weights
    )


def _vibe_placement(
    mount: str | os.PathLike[str],
    ep_size: int,
    num_experts: int,
    slots_per_rank: int,
    num_layers: int | None,
    expect_generation: int | None,
    wait_seconds: float,
) -> ServingPlacement:
    """The placement of the ``vibe`` key (``placement.json``), as ``load_placement(document="vibe")``."""
    from vibe.placement import PlacementError, read_placement

    snap, found = emit.read_volume(str(mount), expect_generation, wait_seconds)
    key = ENGINES["vibe"].key
    if key not in snap.data:
        raise ServingError(
            "MissingPlacement", f"the placement ConfigMap has no {key}: keep 'vibe' in formats"
        )
    try:
        pl = read_placement(json.loads(snap.data[key]), slots_per_gpu=slots_per_rank, num_experts=num_experts)
    except (ValueError, PlacementError) as err:
        raise ServingError("PlacementMismatch", f"{key}: {err}") from None
    if pl.num_experts != num_experts:
        raise ServingError(
            "PlacementMismatch", f"{key} places {pl.num_experts} experts; the layer runs {num_experts}"
        )
    if pl.num_gpus != ep_size or (num_layers is not None and pl.num_layers != num_layers):
        raise ServingError(
            "PlacementMismatch",
            f"{key} is for {pl.num_gpus} GPUs x {pl.num_layers} layers; the layer runs EP {ep_size}"
            + (f" x {num_layers} layers" if num_layers is not None else ""),
        )
    return ServingPlacement(
        pl.phy2log,
        num_experts,
        ep_size,
        found.generation,
        contract.content_hash(snap.data),
        "vibe",
        None if pl.weights is None else np.asarray(pl.weights),
    )


def _replica_weights(
    mount: Path, rows: np.ndarray, slots_per_rank: int, num_experts: int, data_hash: str
) -> np.ndarray:
    """[L, P] the replica weights of the ``vibe`` key of the snapshot of ``data_hash`` (or ServingError)."""
    from vibe.placement import PlacementError, read_placement

    key = ENGINES["vibe"].key
    snapshot = read_snapshot(mount).data
    if contract.content_hash(snapshot) != data_hash:
        raise ServingError(
            "UnreadableVolume", "the placement changed while its replica weights were read: retry"
        )
    if key not in snapshot:
        raise ServingError(
            "MissingPlacement", f"the weighted replica split needs the {key} key (output format vibe)"
        )
    try:
        pl = read_placement(json.loads(snapshot[key]), slots_per_gpu=slots_per_rank, num_experts=num_experts)
    except (ValueError, PlacementError) as err:
        raise ServingError("UnreadableVolume", f"{key}: {err}") from None
    if pl.weights is None:
        raise ServingError(
            "MissingPlacement", f"{key} carries no replica weights: plan with the weighted replica split"
        )
    if pl.phy2log.shape != rows.shape or not np.array_equal(pl.phy2log, rows):
        raise ServingError("PlacementMismatch", f"{key}'s slots differ from the engine file's")
    return np.asarray(pl.weights)


# -- the model: shapes, deterministic weights and inputs, the router -------------------------------------


@dataclass(frozen=True)
class LayerShape:
    """The MoE layer's shape and numerics.

    Attributes:
        hidden: H. intermediate: I (per expert). top_k: k experts per token.
        dtype: ``bf16`` (GPU timing) or ``fp32`` (the correctness check).
        seed: seeds weights, inputs and routing.
    """

    hidden: int
    intermediate: int
    top_k: int
    dtype: str = "bf16"
    seed: int = 0

    def torch_dtype(self) -> torch.dtype:
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.dtype]


def _seed(*parts: int) -> int:
    """A 63-bit seed from small integers (stable across processes and platforms)."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (int(p) & 0xFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h


_WEIGHT, _INPUT, _ROUTE = 1, 2, 3


def expert_weights(
    shape: LayerShape, layer: int, expert: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(w13 [2I, H], w2 [H, I]) of one logical expert, the same on every rank that holds it.

    Drawn N(0, 1/fan_in) as the agent's benchmark draws them, in fp32 on ``device`` from a generator
    seeded by (seed, layer, expert), then cast to the layer's dtype.
    """
    import torch

    gen = torch.Generator(device=device).manual_seed(_seed(_WEIGHT, shape.seed, layer, expert))
    h, i = shape.hidden, shape.intermediate
    w13 = torch.randn(2 * i, h, generator=gen, device=device, dtype=torch.float32).mul_(h**-0.5)
    w2 = torch.randn(h, i, generator=gen, device=device, dtype=torch.float32).mul_(i**-0.5)
    return w13.to(shape.torch_dtype()), w2.to(shape.torch_dtype())


def layer_input(
    shape: LayerShape, layer: int, rank: int, tokens: int, device: torch.device | str
) -> torch.Tensor:
    """[T, H] rank ``rank``'s tokens entering layer ``layer`` (N(0, 1), seeded)."""
    import torch

    gen = torch.Generator(device=device).manual_seed(_seed(_INPUT, shape.seed, layer, rank))
    x = torch.randn(tokens, shape.hidden, generator=gen, device=device, dtype=torch.float32)
    return x.to(shape.torch_dtype())


def route(
    probs: np.ndarray, shape: LayerShape, layer: int, rank: int, step: int, tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [T, k] int64, weights [T, k] fp32) on the CPU: k distinct experts per token, sampled.

    Each token draws ``top_k`` experts without replacement with probabilities ``probs`` (the layer's
    load profile, normalised), from a CPU generator seeded by (seed, layer, rank, step): the same on
    every machine, so the dense reference sees the same routing. Combine weights: softmax of N(0, 1).
    """
    import torch

    gen = torch.Generator().manual_seed(_seed(_ROUTE, shape.seed, layer, rank, step))
    p = torch.as_tensor(probs, dtype=torch.float64)
    ids = torch.multinomial(p.expand(tokens, p.numel()), shape.top_k, replacement=False, generator=gen)
    weights = torch.softmax(torch.randn(tokens, shape.top_k, generator=gen), dim=-1)
    return ids, weights


def profile(loads: np.ndarray) -> np.ndarray:
    """[L, E] routing probabilities from [L, E] loads (tokens per expert per step); a flat row if none."""
    arr = np.asarray(loads, dtype=np.float64)
    sums = arr.sum(axis=1, keepdims=True)
    flat = np.full_like(arr, 1.0 / arr.shape[1])
    return np.where(sums > 0, arr / np.where(sums > 0, sums, 1.0), flat)


def tokens_per_rank(loads: np.ndarray, top_k: int, ep_size: int) -> int:
    """T such that G ranks x T tokens x k experts route as many tokens per step as the loads say."""
    per_step = float(np.asarray(loads, dtype=np.float64).sum(axis=1).mean())
    return max(1, round(per_step / top_k / ep_size))


# -- the layer ----------------------------------------------------------------------------------------------


def grouped_mm_usable(device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether ``torch._grouped_mm`` runs here: a CUDA device of compute capability >= 9.0, bf16."""
    import torch

    if not hasattr(torch, "_grouped_mm") or getattr(device, "type", str(device)) != "cuda":
        return False
    return torch.cuda.get_device_capability(device) >= (9, 0) and dtype == torch.bfloat16


@dataclass
class Phases:
    """One rank's timed layer: milliseconds of dispatch, expert compute and combine."""

    dispatch: list[float] = field(default_factory=list)
    compute: list[float] = field(default_factory=list)
    combine: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)


class EPLayerStack:
    """One rank's slots of every layer of a placement, and the expert-parallel forward pass.

    Args:
        placement: the placement the engine was started with.
        shape: layer shape and numerics.
        rank: this process's EP rank; the process group must be initialised (any backend).
        device: where this rank's experts and tokens live.
        grouped: use ``torch._grouped_mm`` (None: where ``grouped_mm_usable``).
    """

    def __init__(
        self,
        placement: ServingPlacement,
        shape: LayerShape,
        rank: int,
        device: torch.device | str,
        grouped: bool | None = None,
    ) -> None:
        import torch

        self.placement, self.shape, self.rank, self.device = placement, shape, rank, device
        self.world = placement.ep_size
        self.slots = placement.slots_per_rank
        dtype = shape.torch_dtype()
        self.grouped = grouped_mm_usable(device, dtype) if grouped is None else grouped
        log2phy, cnt = placement.log2phy()
        self.log2phy = torch.as_tensor(log2phy, device=device)
        self.logcnt = torch.as_tensor(cnt, device=device)
        shares = placement.cumulative_shares()
        self.cum_shares = None if shares is None else torch.as_tensor(shares[0], device=device)
        self.unequal = None if shares is None else torch.as_tensor(shares[1], device=device)
        self.w13: list[torch.Tensor] = []  # per layer [S, 2I, H]
        self.w2: list[torch.Tensor] = []  # per layer [S, H, I]
        mine = placement.phy2log[:, rank * self.slots : (rank + 1) * self.slots]
        for layer in range(placement.num_layers):
            pairs = [expert_weights(shape, layer, int(e), device) for e in mine[layer]]
            self.w13.append(torch.stack([a for a, _ in pairs]))
            self.w2.append(torch.stack([b for _, b in pairs]))
            del pairs

    def experts(self, layer: int, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """[N, H] -> [N, H]: SwiGLU FFN of each local slot over its rows of ``x`` (grouped by slot)."""
        import torch
        import torch.nn.functional as F

        i = self.shape.intermediate
        if self.grouped:
            offs = torch.cumsum(counts, 0).to(torch.int32)
            h = torch._grouped_mm(x, self.w13[layer].transpose(1, 2), offs=offs)
            a = F.silu(h[:, :i]) * h[:, i:]
            return torch._grouped_mm(a, self.w2[layer].transpose(1, 2), offs=offs)
        out = torch.empty_like(x)
        start = 0
        for s, n in enumerate(counts.tolist()):
            if n:
                h = x[start : start + n] @ self.w13[layer][s].t()
                a = F.silu(h[:, :i]) * h[:, i:]
                out[start : start + n] = a @ self.w2[layer][s].t()
            start += n
        return out

    def forward(
        self,
        layer: int,
        x: torch.Tensor,
        ids: torch.Tensor,
        weights: torch.Tensor,
        marks: list[Any] | None = None,
    ) -> torch.Tensor:
        """The layer on this rank's tokens: x [T, H], ids [T, k], weights [T, k] -> [T, H].

        ``marks``: four CUDA events (or None) recorded before dispatch, after dispatch, after the
        experts and after combine. Returns the output; ``self.last_counts`` holds [S] tokens per slot.
        """
        import torch
        import torch.distributed as dist

        t, k = ids.shape
        dev = x.device
        if marks:
            marks[0].record()
        flat = ids.reshape(-1)
        # occurrence j of each expert among this rank's assignments -> replica (j + rank) mod count
        order = torch.argsort(flat, stable=True)
        sorted_e = flat[order]
        first = torch.searchsorted(sorted_e, sorted_e, right=False)
        occ = torch.empty_like(flat)
        occ[order] = torch.arange(flat.numel(), device=dev) - first
        rep = (occ + self.rank) % self.logcnt[layer][flat]
        if self.cum_shares is not None and self.unequal is not None:
            # weighted: the j-th of n assignments -> the replica whose [W - w, W) holds (j + 1/2)/n + r/G
            n = torch.bincount(flat, minlength=self.placement.num_experts)[flat]
            u = torch.remainder((occ.double() + 0.5) / n.double() + self.rank / self.world, 1.0)
            by_share = (self.cum_shares[layer][flat] <= u[:, None]).sum(dim=1)
            by_share = torch.minimum(by_share, self.logcnt[layer][flat] - 1)
            rep = torch.where(self.unequal[layer][flat], by_share, rep)
        slot = self.log2phy[layer][flat, rep]
        perm = torch.argsort(slot, stable=True)  # rank-major, then local slot
        slot_sorted = slot[perm]
        send_x = x[perm // k]
        send_local = slot_sorted % self.slots
        send_counts = torch.bincount(slot_sorted // self.slots, minlength=self.world)
        recv_counts = torch.empty_like(send_counts)
        dist.all_to_all_single(recv_counts, send_counts)
        send_splits, recv_splits = send_counts.tolist(), recv_counts.tolist()
        n = sum(recv_splits)
        recv_x = x.new_empty((n, x.shape[1]))
        dist.all_to_all_single(recv_x, send_x, recv_splits, send_splits)
        recv_local = send_local.new_empty(n)
        dist.all_to_all_single(recv_local, send_local, recv_splits, send_splits)
        group = torch.argsort(recv_local, stable=True)
        grouped_x = recv_x[group]
        counts = torch.bincount(recv_local, minlength=self.slots)
        if marks:
            marks[1].record()
        y = self.experts(layer, grouped_x, counts)
        if marks:
            marks[2].record()
        back = torch.empty_like(y)
        back[group] = y
        ret = y.new_empty((t * k, y.shape[1]))
        dist.all_to_all_single(ret, back, send_splits, recv_splits)
        per_assignment = torch.empty_like(ret)
        per_assignment[perm] = ret
        out = (per_assignment.view(t, k, -1).float() * weights.to(dev)[..., None]).sum(1).to(x.dtype)
        if marks:
            marks[3].record()
        self.last_counts = counts
        return out


def dense_reference(
    shape: LayerShape,
    probs: np.ndarray,
    layer: int,
    rank: int,
    step: int,
    tokens: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """[T, H] what rank ``rank``'s tokens should come out as: every expert computed once, no placement."""
    import torch
    import torch.nn.functional as F

    x = layer_input(shape, layer, rank, tokens, device)
    ids, weights = route(probs, shape, layer, rank, step, tokens)
    out = torch.zeros(tokens, shape.hidden, dtype=torch.float32, device=device)
    i = shape.intermediate
    for e in torch.unique(ids).tolist():
        tok, pos = (ids == e).nonzero(as_tuple=True)
        w13, w2 = expert_weights(shape, layer, e, device)
        h = x[tok] @ w13.t()
        y = (F.silu(h[:, :i]) * h[:, i:]) @ w2.t()
        out.index_add_(0, tok.to(device), y.float() * weights[tok, pos].to(device)[:, None])
    return out.to(x.dtype)


# -- one rank of a run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunConfig:
    """What every rank of a run does (picklable: handed to spawned processes).

    Attributes:
        placements: name -> placement, compared in this order.
        loads: [L, E] the layer's load profile (the router samples from it).
        shape: layer shape.
        tokens: T tokens per rank per step.
        backend: ``nccl`` (GPUs, rank r on cuda:r) or ``gloo`` (CPU).
        init_method: the process group's rendezvous (``tcp://127.0.0.1:PORT``).
        steps / warmup: timed steps after warm-up steps (``timed``), or steps checked (``check``).
        timed: CUDA-event timing (needs CUDA).
        check: compare every output with ``dense_reference`` (max abs error per placement).
        grouped: force the grouped GEMM on (True) or off (False); None = where usable.
        out_dir: each rank writes ``rank<r>.json`` here.
    """

    placements: tuple[tuple[str, ServingPlacement], ...]
    loads: np.ndarray
    shape: LayerShape
    tokens: int
    backend: str
    init_method: str
    out_dir: str
    steps: int = 20
    warmup: int = 5
    timed: bool = False
    check: bool = False
    grouped: bool | None = None


def run_rank(rank: int, cfg: RunConfig) -> None:
    """Entry point of one spawned rank: join the group, run each placement, write ``rank<r>.json``."""
    os.environ.update(NO_MULTICAST)
    import torch
    import torch.distributed as dist

    world = cfg.placements[0][1].ep_size
    if cfg.backend == "nccl":
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(1)  # one rank per core at most; several threads per rank only contend
    dist.init_process_group(
        cfg.backend,
        init_method=cfg.init_method,
        rank=rank,
        world_size=world,
        **({"device_id": device} if device.type == "cuda" else {}),  # type: ignore[arg-type]
    )
    probs = profile(cfg.loads)
    result: dict[str, Any] = {"rank": rank, "device": str(device), "placements": {}}
    if device.type == "cuda":
        result["deviceName"] = torch.cuda.get_device_name(device)
    try:
        for name, placement in cfg.placements:
            started = time.perf_counter()
            stack = EPLayerStack(placement, cfg.shape, rank, device, grouped=cfg.grouped)
            inputs = [
                layer_input(cfg.shape, layer, rank, cfg.tokens, device)
                for layer in range(placement.num_layers)
            ]
            entry: dict[str, Any] = {"grouped": stack.grouped, "setupSeconds": 0.0}
            if cfg.check:
                worst = scale = 0.0
                received = np.zeros((placement.num_layers, stack.slots), dtype=np.int64)
                for step in range(cfg.steps):
                    for layer in range(placement.num_layers):
                        ids, w = route(probs[layer], cfg.shape, layer, rank, step, cfg.tokens)
                        out = stack.forward(layer, inputs[layer], ids.to(device), w)
                        ref = dense_reference(cfg.shape, probs[layer], layer, rank, step, cfg.tokens, device)
                        worst = max(worst, float((out.float() - ref.float()).abs().max()))
                        scale = max(scale, float(ref.float().abs().max()))
                        received[layer] += stack.last_counts.cpu().numpy()
                entry["maxAbsError"] = worst
                entry["refMaxAbs"] = scale
                entry["slotTokens"] = received.tolist()  # [L, S] tokens each local slot received
            if cfg.timed:
                entry.update(_timed(stack, cfg, probs, inputs, rank, device))
            entry["setupSeconds"] = time.perf_counter() - started
            result["placements"][name] = entry
            del stack, inputs
            if device.type == "cuda":
                torch.cuda.empty_cache()
            dist.barrier()
    finally:
        Path(cfg.out_dir, f"rank{rank}.json").write_text(json.dumps(result))
        dist.destroy_process_group()


def _timed(
    stack: EPLayerStack,
    cfg: RunConfig,
    probs: np.ndarray,
    inputs: list[torch.Tensor],
    rank: int,
    device: torch.device | str,
) -> dict[str, Any]:
    import torch
    import torch.distributed as dist

    layers = stack.placement.num_layers
    routes = [
        [
            tuple(t.to(device) for t in route(probs[layer], cfg.shape, layer, rank, step, cfg.tokens))
            for layer in range(layers)
        ]
        for step in range(cfg.warmup + cfg.steps)
    ]
    phases = [Phases() for _ in range(layers)]
    counts: list[list[torch.Tensor]] = [[] for _ in range(layers)]
    marks = [[torch.cuda.Event(enable_timing=True) for _ in range(4)] for _ in range(layers)]
    for step in range(cfg.warmup + cfg.steps):
        dist.barrier()
        for layer in range(layers):
            ids, w = routes[step][layer]
            stack.forward(layer, inputs[layer], ids, w, marks=marks[layer])
            if step >= cfg.warmup:
                counts[layer].append(stack.last_counts.clone())
        torch.cuda.synchronize(device)
        if step >= cfg.warmup:
            for layer in range(layers):
                m = marks[layer]
                p = phases[layer]
                p.dispatch.append(m[0].elapsed_time(m[1]))
                p.compute.append(m[1].elapsed_time(m[2]))
                p.combine.append(m[2].elapsed_time(m[3]))
                p.total.append(m[0].elapsed_time(m[3]))
    return {
        "layers": [
            {
                "dispatchMs": p.dispatch,
                "computeMs": p.compute,
                "combineMs": p.combine,
                "totalMs": p.total,
                "slotTokens": [c.tolist() for c in counts[layer]],
            }
            for layer, p in enumerate(phases)
        ]
    }


# -- the whole run, from the parent process --------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(cfg: RunConfig) -> list[dict[str, Any]]:
    """Spawn one process per rank (``torch.multiprocessing``), wait, return each rank's result."""
    import torch.multiprocessing as mp

    os.environ.update(NO_MULTICAST)  # children inherit it
    world = cfg.placements[0][1].ep_size
    if any(p.ep_size != world for _, p in cfg.placements):
        raise ServingError("InvalidArgument", "every placement compared in one run needs the same EP size")
    # gloo on the CPU: fork (the children share the parent's imported torch: a test costs no re-import);
    # CUDA: spawn, since a forked child cannot use a CUDA context of its parent.
    method = "fork" if cfg.backend == "gloo" and "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(run_rank, args=(cfg,), nprocs=world, start_method=method, join=True)
    return [json.loads(Path(cfg.out_dir, f"rank{r}.json").read_text()) for r in range(world)]


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")
