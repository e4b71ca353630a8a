"""What one engine step costs: non-expert time from measured curves, expert and communication time
from a per-policy table built with the placement library's one evaluator.

Role: ``engine`` asks for the time of each step it schedules. A step on an expert-parallel group of G
GPUs with data-parallel attention (SGLang's ``--enable-dp-attention``: every GPU runs attention and the
dense parts for its own requests) costs, serially,

    max_g [ non-expert_g(own batch) ] + sum over MoE layers [ max_g expert_g + dispatch + combine ]

or, with two micro-batches (``engine.Group.step_seconds``), the larger of compute and communication.

* non-expert: attention projections, the attention core over the GPU's requests' KV, the router and
  shared expert, the dense layers and the LM head, interpolated from curves measured on an H200
  (``data/h200.json``, made by ``benchmarks/serving_gpu.py``); an H100 scales them (``gpu="h100"``).
  Each GPU is slowed by its own (floor, compute) factors (``slowness_of``, read off its expert curve):
  the GEMMs' floor and decode attention by the first, the rest by the second (``NonExpertCost.ranks``);
* expert: ``vibe.placement.cost.gpu_times_of`` (the one evaluator) on the step's routed token counts,
  which are drawn per step (``ExpertTable``), so each step differs from the average the placement saw;
* dispatch and combine: each GPU sends its tokens' hidden vectors to the GPUs of their experts and
  receives its slots' tokens; a phase takes ``latency + max over GPUs of max(sent, received) bytes /
  bandwidth`` (NVLink inside a node, RDMA across nodes for the off-node share, once per destination
  node in prefill steps: ``CommModel``).

Shapes: L layers, E experts, G GPUs, S slots per GPU, P = G * S, K routing samples, N token-count grid.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from vibe.placement import CurveTable, bincount_rows, gpu_times_of, weighted_gpu_times
from vibe.simulate.constants import value
from vibe.simulate.models import PRESETS, ModelShape


@functools.cache
def measured() -> dict[str, Any]:
    """The committed H200 measurements (non-expert curves and the agent's expert curves)."""
    text = resources.files("vibe.simulate").joinpath("data/h200.json").read_text()
    data: dict[str, Any] = json.loads(text)
    return data


def interp(tokens: np.ndarray, seconds: np.ndarray, n: float) -> float:
    """A measured curve at n > 0: flat below its first point, linear past its last (0 at n <= 0)."""
    if n <= 0:
        return 0.0
    if n > tokens[-1]:
        slope = (seconds[-1] - seconds[-2]) / (tokens[-1] - tokens[-2])
        return float(seconds[-1] + (n - tokens[-1]) * slope)
    return float(np.interp(n, tokens, seconds))


def _curve(d: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(d["tokens"], dtype=np.float64)
    s = np.maximum.accumulate(np.asarray(d["seconds"], dtype=np.float64))  # noise below the knee
    return t, s


def _gqa_decode_bandwidth() -> float:
    """KV bytes per second the measured GQA decode attention reaches (mean over the GQA presets)."""
    bws = []
    for name, m in PRESETS.items():
        if m.attention != "gqa" or name not in measured()["models"]:
            continue
        _a, b, _c = _fit_decode(measured()["models"][name]["attn_decode"])
        if b > 0:
            bws.append(m.kv_elements_per_token_layer() * value("kv_bytes_per_element") / b)
    return float(np.mean(bws))


def _fit_decode(points: list[dict[str, Any]]) -> tuple[float, float, float]:
    """Least squares t = a + b * (B * C) + c * B over the (batch B, context C) points, clipped at 0."""
    x = np.array([[1.0, p["batch"] * p["context"], p["batch"]] for p in points])
    y = np.array([p["seconds"] for p in points])
    coef = np.linalg.lstsq(x, y, rcond=None)[0]
    if coef[2] < 0:  # refit without the per-request term
        coef = np.append(np.linalg.lstsq(x[:, :2], y, rcond=None)[0], 0.0)
    a, b, c = (max(float(v), 0.0) for v in coef)
    return a, b, c


def _fit_prefill(points: list[dict[str, Any]]) -> tuple[float, float]:
    """Least squares t = a + b * pairs, pairs = n * prefix + n^2 / 2 (causal query-key pairs)."""
    x = np.array([[1.0, p["tokens"] * p["prefix"] + p["tokens"] ** 2 / 2] for p in points])
    y = np.array([p["seconds"] for p in points])
    a, b = np.linalg.lstsq(x, y, rcond=None)[0]
    return max(float(a), 0.0), max(float(b), 0.0)


class NonExpertCost:
    """Seconds of one step's non-expert work on one GPU (data-parallel attention, per-rank shares).

    Preset models use their measured curves; another model (a config.json) is priced from the nearest
    preset by its GEMM weights and KV bytes (stated in ``source``).
    """

    def __init__(self, model: ModelShape, gpu: str = "h200") -> None:
        if gpu not in ("h200", "h100"):
            raise ValueError(f"unknown GPU kind {gpu!r} for the non-expert curves (h200 or h100)")
        self.model = model
        data = measured()["models"]
        name = model.name if model.name in data else self._nearest(model)
        ref = PRESETS[name]
        self.source = (
            f"measured on an H200 ({name})"
            if name == model.name
            else (f"scaled from the H200 measurements of {name} by weight bytes and KV bytes")
        )
        d = data[name]
        dt = model.dtype if model.dtype in d["attn_proj"] else "bf16"
        scale_attn = _gemm_scale(model.attention_gemms(), ref.attention_gemms())
        scale_extra = _gemm_scale(model.moe_extra_gemms(), ref.moe_extra_gemms())
        self.proj = _scaled(_curve(d["attn_proj"][dt]), scale_attn)
        extra = d.get("moe_extra", {})
        self.extra = _scaled(_curve(extra.get(dt, extra.get("bf16"))), scale_extra) if extra else None
        dense = d.get("dense_mlp", {})
        self.dense: tuple[np.ndarray, np.ndarray] | None = None
        if model.dense_layers and dense:
            scale_dense = _gemm_scale(model.dense_mlp_gemms(), ref.dense_mlp_gemms())
            self.dense = _scaled(_curve(dense.get(dt, dense["bf16"])), scale_dense)
        self.lm = _scaled(_curve(d["lm_head"]["bf16"]), model.vocab * model.hidden / (ref.vocab * ref.hidden))
        a, b, c = _fit_decode(d["attn_decode"])
        kv_scale = model.kv_elements_per_token_layer() / ref.kv_elements_per_token_layer()
        if ref.attention == "mla":  # priced at the GQA kernels' bandwidth (constants: mla_decode_bytes_per_s)
            self.mla_bandwidth = _gqa_decode_bandwidth()
            a = min(p["seconds"] for p in d["attn_decode"])
            b = ref.kv_elements_per_token_layer() * value("kv_bytes_per_element") / self.mla_bandwidth
            c = 0.0
        else:
            self.mla_bandwidth = 0.0
        self.decode = (a, b * kv_scale, c)
        pa, pb = _fit_prefill(d["attn_prefill"])
        self.prefill = (pa, pb * model.attention_flops_per_pair() / ref.attention_flops_per_pair())
        self.gemm_factor: tuple[np.ndarray, np.ndarray] | None = None
        self.decode_factor = 1.0
        if gpu == "h100":
            self.gemm_factor = _h100_over_h200()
            self.decode_factor = value("h200_over_h100_bandwidth")

    @staticmethod
    def _nearest(model: ModelShape) -> str:
        avail = [n for n in PRESETS if n in measured()["models"]]
        same = [n for n in avail if PRESETS[n].attention == model.attention] or avail
        return min(same, key=lambda n: abs(np.log(PRESETS[n].hidden / model.hidden)))

    def _gemm(self, curve: tuple[np.ndarray, np.ndarray], n: float) -> float:
        t = interp(curve[0], curve[1], n)
        if self.gemm_factor is not None and t > 0:
            t *= float(np.interp(n, self.gemm_factor[0], self.gemm_factor[1]))
        return t

    def step(
        self, n_rank: float, decode_reqs: float, decode_ctx: float, pairs: float, sampled: float
    ) -> float:
        """Non-expert seconds of one step on one typical GPU (``ranks`` for several, each slowed).

        Args:
            n_rank: tokens this GPU runs through the model (prefill chunk tokens + decode tokens).
            decode_reqs, decode_ctx: decoding requests on this GPU and the KV tokens they attend to.
            pairs: causal (query, key) pairs of this GPU's prefill chunks (chunk * prefix + chunk^2 / 2).
            sampled: tokens this GPU samples (LM head): decoding requests + prompts finishing.
        """
        one = np.ones(1)
        out = self.ranks(
            n_rank * one, decode_reqs * one, decode_ctx * one, pairs * one, sampled * one, one, one
        )
        return float(out[0])

    def _gemm_curve(self, parts: list[tuple[float, tuple[np.ndarray, np.ndarray]]]) -> _Gemm:
        """Weighted GEMM curves summed into one (on the union of their token grids, extended to 2^20
        tokens; the H100 factor applied at those points), with the sum of their floors."""
        if not parts:
            return _Gemm(np.array([1.0, 2.0]), np.zeros(2), 0.0)
        grid = np.unique(np.concatenate([c[0] for _, c in parts] + [np.array([float(2**20)])]))
        if self.gemm_factor is not None:
            grid = np.unique(np.concatenate([grid, self.gemm_factor[0]]))
        total = np.zeros_like(grid)
        floor = 0.0
        for w, (t, sec) in parts:
            one = _interp_many(t, sec, grid)
            f0 = 1.0
            if self.gemm_factor is not None:
                one = one * np.interp(grid, self.gemm_factor[0], self.gemm_factor[1])
                f0 = float(np.interp(t[0], self.gemm_factor[0], self.gemm_factor[1]))
            total += w * one
            floor += w * float(sec.min()) * f0
        return _Gemm(grid, np.maximum(total, floor), floor)

    @functools.cached_property
    def _per_token(self) -> _Gemm:
        """The GEMMs every token of a step runs, over all layers: projections, shared expert and router,
        dense MLPs."""
        m = self.model
        parts = [(float(m.layers), self.proj)]
        if self.extra is not None:
            parts.append((float(m.moe_layers), self.extra))
        if self.dense is not None:
            parts.append((float(m.dense_layers), self.dense))
        return self._gemm_curve(parts)

    @functools.cached_property
    def _per_sample(self) -> _Gemm:
        return self._gemm_curve([(1.0, self.lm)])

    def ranks(
        self,
        n: np.ndarray,
        decode_reqs: np.ndarray,
        decode_ctx: np.ndarray,
        pairs: np.ndarray,
        sampled: np.ndarray,
        floor_factor: np.ndarray,
        compute_factor: np.ndarray,
    ) -> np.ndarray:
        """[R] non-expert seconds of one step on each of R GPUs, each from its own batch (``step``'s args,
        as [R] arrays) and its own slowness: ``floor_factor`` [R] slows the memory-bound part (the GEMMs'
        floor, decode attention's KV reads), ``compute_factor`` [R] the compute part (the GEMMs above
        their floor, prefill attention)."""
        m = self.model
        a, b, c = self.decode
        attn = np.where(
            decode_reqs > 0, (a + b * decode_ctx + c * decode_reqs) * self.decode_factor * floor_factor, 0.0
        )
        attn = attn + np.where(pairs > 0, (self.prefill[0] + self.prefill[1] * pairs) * compute_factor, 0.0)
        out: np.ndarray = (
            m.layers * attn
            + self._per_token.seconds(n, floor_factor, compute_factor)
            + self._per_sample.seconds(sampled, floor_factor, compute_factor)
        )
        return out


@dataclass(frozen=True)
class _Gemm:
    """A GEMM time curve (tokens [K], seconds [K], linear past the last point) and its floor."""

    tokens: np.ndarray
    secs: np.ndarray
    floor: float

    def seconds(self, n: np.ndarray, floor_factor: np.ndarray, compute_factor: np.ndarray) -> np.ndarray:
        """[R] seconds at n [R] tokens, the floor slowed by ``floor_factor``, the rest by
        ``compute_factor`` (0 at n <= 0)."""
        t = np.interp(n, self.tokens, self.secs)
        out: np.ndarray = np.where(n > 0, self.floor * floor_factor + (t - self.floor) * compute_factor, 0.0)
        return out


#: (floor factor [R], compute factor [R]) of R GPUs.
Slowness = tuple[np.ndarray, np.ndarray]


def _interp_many(tokens: np.ndarray, seconds: np.ndarray, n: np.ndarray) -> np.ndarray:
    """``interp`` at each of n [R] (0 at n <= 0)."""
    slope = (seconds[-1] - seconds[-2]) / (tokens[-1] - tokens[-2])
    inside = np.interp(n, tokens, seconds)
    out: np.ndarray = np.where(n > tokens[-1], seconds[-1] + (n - tokens[-1]) * slope, inside)
    return np.where(n > 0, out, 0.0)


def slowness_of(fleet_tokens: list[np.ndarray], fleet_seconds: list[np.ndarray]) -> Slowness:
    """Each GPU's (floor, compute) slowdown against the fleet's median GPU, read off its expert curve.

    Floor: the curve's smallest time over the median's; compute: its rise above the floor up to 8192
    tokens over the median's. The non-expert work of a GPU is slowed by the same two factors
    (``NonExpertCost.ranks``): one model of how a GPU is slow for everything it runs.
    """
    n_hi = 8192.0
    floors = np.array([float(s.min()) for s in fleet_seconds])
    rises = np.array(
        [
            float(np.interp(n_hi, t, s)) - float(s.min())
            for t, s in zip(fleet_tokens, fleet_seconds, strict=True)
        ]
    )
    return floors / np.median(floors), rises / np.median(rises)


def _gemm_scale(mine: list[tuple[int, int]], ref: list[tuple[int, int]]) -> float:
    a, b = sum(x * y for x, y in mine), sum(x * y for x, y in ref)
    return a / b if b else 1.0


def _scaled(curve: tuple[np.ndarray, np.ndarray], factor: float) -> tuple[np.ndarray, np.ndarray]:
    return curve[0], curve[1] * factor


@functools.cache
def _h100_over_h200() -> tuple[np.ndarray, np.ndarray]:
    """Per token count, the measured H100 (reference, steady) / H200 DeepSeek-V3 bf16 expert time: how the
    same GEMMs compare on the two GPUs (memory-bound at small n, compute-bound at large n)."""
    from vibe.placement import reference_curve

    h200 = measured()["experts"]["deepseek-v3/bf16"]
    t = np.asarray(h200["tokens"], dtype=np.float64)
    rt, rs = reference_curve(7168, 2048, "bf16")
    return t, np.interp(t, rt, rs) / np.asarray(h200["seconds"])


def h200_expert_curve(model: ModelShape, dtype: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The agent's measured H200 curve for a preset's expert (``vibe agent bench``, 2026-12-01), made
    non-decreasing (a running max, as the placement curves require; the raw points are in the data)."""
    key = f"{model.name}/{dtype or model.dtype}"
    e = measured()["experts"].get(key)
    if e is None:
        raise KeyError(f"no measured H200 expert curve for {key}")
    seconds = np.maximum.accumulate(np.asarray(e["seconds"], dtype=np.float64))
    return np.asarray(e["tokens"], dtype=np.float64), seconds


# -- expert and communication time per step ------------------------------------------------------------


@dataclass(frozen=True)
class CommModel:
    """Dispatch/combine bytes and links of one expert-parallel group, and how the engine sends them.

    ``per_node``: ``"auto"`` (SGLang ``--deepep-mode auto``: prefill steps use DeepEP's normal kernels,
    which send a token once per destination node over RDMA and forward it over NVLink inside the node;
    decode steps use the low-latency kernels, one RDMA copy per token-expert pair), ``"always"`` or
    ``"never"``. ``overlap`` (``"auto"``, ``"on"``, ``"off"``): two micro-batches, one's dispatch/combine
    hidden behind the other's compute (SGLang ``--enable-two-batch-overlap``, DeepEP's hook-based
    overlap); ``Group.step_seconds`` says when each applies.
    """

    hidden: int
    top_k: int
    dispatch_bytes: float  # per hidden element
    combine_bytes: float
    num_gpus: int
    gpus_per_node: int
    nvlink: float  # B/s per GPU
    rdma: float
    latency: float
    per_node: str = "auto"
    overlap: str = "auto"

    def node_dedup(self) -> float:
        """Off-node bytes sent once per destination node / once per token-expert pair (uniform routing).

        Of a token's k picks over N nodes, k (N-1)/N land off its node on average, on
        (N-1) (1 - (1 - 1/N)^k) distinct remote nodes.
        """
        nodes = -(-self.num_gpus // self.gpus_per_node)
        if nodes <= 1:
            return 1.0
        k, n = self.top_k, nodes
        return (n - 1) * (1 - (1 - 1 / n) ** k) / (k * (n - 1) / n)

    def seconds(self, copies: np.ndarray | float, layers: float, extend: bool) -> np.ndarray | float:
        """Seconds of ``layers`` dispatches plus combines whose busiest GPU moves ``copies`` token copies
        in all (a token going to k experts counts k times). ``extend``: a step with prefill tokens."""
        if self.num_gpus <= 1:
            return 0.0 * copies
        off_node = max(self.num_gpus - self.gpus_per_node, 0) / self.num_gpus
        if off_node:
            dedup = self.per_node == "always" or (self.per_node == "auto" and extend)
            if dedup:  # every copy crosses NVLink (forwarded inside the destination node)
                per_byte = max(1.0 / self.nvlink, off_node * self.node_dedup() / self.rdma)
            else:
                per_byte = max((1.0 - off_node) / self.nvlink, off_node / self.rdma)
        else:
            per_byte = 1.0 / self.nvlink
        volume = copies * self.hidden * (self.dispatch_bytes + self.combine_bytes)
        return 2 * self.latency * layers + volume * per_byte


#: Token counts in an ExpertTable's grid (geometric from 1 to the largest step; linear in between).
GRID_POINTS = 28


class ExpertTable:
    """Per policy and fleet state: a step's expert time and token copies moved, by its token count.

    For each token count T of a grid (N points, 1 .. ``max_tokens``) and each of K independent routing
    samples, every MoE layer routes T tokens top-k: expert e gets Binomial(T, k * p_e) tokens (p the
    layer's load shares; replicas split their expert's tokens evenly, as ``gpu_times_of`` prices them, or
    by the placement's replica weights, ``c * w`` per slot),
    and the one evaluator gives each GPU's time. A step then draws a sample k and interpolates in T:

        expert_s[k, j] = sum over MoE layers of max over GPUs of that GPU's expert time
        recv[k, j]     = sum over MoE layers of max over GPUs of the token copies it receives

    ``step`` turns these and the busiest sender's copies into seconds (``CommModel``).
    """

    def __init__(
        self,
        phy2log: np.ndarray,
        slots_per_gpu: int,
        table: CurveTable,
        shares: np.ndarray,
        comm: CommModel,
        *,
        max_tokens: int,
        samples: int,
        seed: int,
        weights: np.ndarray | None = None,
    ) -> None:
        num_layers, p = phy2log.shape
        g = p // slots_per_gpu
        rng = np.random.default_rng(seed)
        grid = np.unique(np.round(np.geomspace(1, max(max_tokens, 2), GRID_POINTS)).astype(np.int64))
        self.grid = grid.astype(np.float64)
        self.comm = comm
        self.num_layers = num_layers
        phy_k = np.tile(phy2log, (samples, 1))  # [K*L, P]
        cnt = bincount_rows(phy_k, shares.shape[1])
        # each slot's share of its expert's tokens: the placement's weights, else even
        share = (
            1.0 / np.take_along_axis(cnt, phy_k, axis=1)
            if weights is None
            else np.tile(weights, (samples, 1))
        )
        q = np.minimum(shares * comm.top_k, 1.0)  # chance a token picks expert e
        self.expert_s = np.empty((samples, grid.size))
        self.recv = np.empty((samples, grid.size))
        for j, t in enumerate(grid):
            counts = rng.binomial(int(t), np.broadcast_to(q, (samples, *q.shape))).reshape(-1, q.shape[1])
            counts = counts.astype(np.float64)
            per_slot = np.take_along_axis(counts, phy_k, axis=1) * share  # [K*L, P]
            if weights is None:
                gt = gpu_times_of(phy_k, counts, table, slots_per_gpu)  # [K*L, G]
            else:
                gt = weighted_gpu_times(phy_k, counts, share, table, slots_per_gpu)
            self.expert_s[:, j] = gt.max(axis=1).reshape(samples, num_layers).sum(axis=1)
            received = per_slot.reshape(-1, g, slots_per_gpu).sum(axis=2).max(axis=1)  # [K*L]
            self.recv[:, j] = received.reshape(samples, num_layers).sum(axis=1)
        self.samples = samples

    def __call__(self, tokens: float, k: int) -> tuple[float, float]:
        """(expert seconds, busiest GPU's received token copies) of a step of ``tokens`` tokens, sample k."""
        if tokens <= 0:
            return 0.0, 0.0
        g = self.grid
        if tokens >= g[-1]:  # past the grid: linear in the tokens (the curves' linear part)
            f = tokens / g[-1]
            return float(self.expert_s[k, -1] * f), float(self.recv[k, -1] * f)
        return float(np.interp(tokens, g, self.expert_s[k])), float(np.interp(tokens, g, self.recv[k]))

    def step(self, tokens: float, max_rank_tokens: float, k: int, extend: bool) -> tuple[float, float]:
        """(expert seconds, dispatch + combine seconds) over the loads' layers, for a step of ``tokens``
        tokens whose busiest GPU sends ``max_rank_tokens`` tokens' k copies, routing sample k."""
        ex, recv = self(tokens, k)
        if tokens <= 0:
            return 0.0, 0.0
        copies = max(recv, max_rank_tokens * self.comm.top_k * self.num_layers)
        return ex, float(self.comm.seconds(copies, self.num_layers, extend))

    def mean(self, tokens: float) -> tuple[float, float]:
        """Mean (expert, dispatch + combine) seconds over the routing samples, GPUs sending evenly."""
        per = tokens / self.comm.num_gpus
        vals = [self.step(tokens, per, k, True) for k in range(self.samples)]
        return float(np.mean([v[0] for v in vals])), float(np.mean([v[1] for v in vals]))
