"""The torch benchmark: seconds to run ONE expert's FFN over n tokens, measured on one device.

Role in the data flow: produces the curves of a GPUProfile (``CurveResult``), the canary's spot checks
and the numbers in ``benchmarks/results/``. The same functions run on a CUDA GPU and, for tests and CI,
on the CPU with a tiny shape; only the clock (CUDA events vs ``perf_counter``) and the pre-heat differ.

What is timed is the expert FFN as a serving engine runs it (SGLang/vLLM MoE layer, one expert):

* bf16/fp16: ``h = x @ W13ᵀ`` (gate and up fused into one [2I, H] GEMM), ``a = silu(h[:, :I]) * h[:, I:]``,
  ``y = a @ W2ᵀ``.
* fp8 (e4m3, GPUs with fp8 tensor cores), as an engine pays it where the GPU has a fused fp8 grouped
  GEMM (``torch._scaled_grouped_mm``: Hopper, torch >= 2.8): weights quantised once with row-wise
  (per output channel) scales, the tokens arrive already quantised with row-wise (per token) scales (as
  DeepEP's fp8 dispatch delivers them), both GEMMs run as ONE grouped fp8 GEMM each with bf16 output,
  and the SiLU x mul output is re-quantised per token before the down GEMM (a few small torch kernels
  that an engine fuses into its activation kernel). An engine runs all of a rank's experts in one
  grouped GEMM, so these fixed costs are shared; the benchmark does the same: each call runs
  ``FP8_GROUP`` experts over n tokens each, and a point is the call's time / ``FP8_GROUP`` (timed one
  expert per call, the grouped kernel's setup and the re-quantisation made fp8 cost 2.3x bf16 at one
  token on an H200: benchmarks/results/gpu-h200-2026-12-01/first-attempt/). bf16 stays one expert per
  call: on an H200 one grouped bf16 GEMM of a rank's experts took 0.94-1.10x the sum of these.
  Elsewhere (no such kernel: Ada, older torch, the CPU) fp8 falls back to the old path, with a note in
  the result: per-tensor dynamic activation scales computed per call (amax, scale, cast) and
  ``torch._scaled_mm``; that pays four small kernels per GEMM, which on an H100 made fp8 slower than
  bf16 (benchmarks/results/gpu-h100-*/README.md): an upper bound on what a fused fp8 engine takes.
  ``CurveResult.kernel`` says which path a curve was measured with.

Measured the way the cost model needs it (ARCHITECTURE.md, "The cost model"; the measured H100 clock ramp):

* random data, never zeros (zeros are cheaper: the power draw, hence the clock under the cap, differs);
* several distinct experts cycled call after call, enough that their weights are several times the L2
  cache, so every call streams its weights from HBM as in serving;
* a pre-heat that runs a large bf16 GEMM (the heaviest power load there is) until the SM clock settles
  under the power cap (on an H100 the cap bites within ~0.4 s and the clock falls from 1980 to
  ~1500 MHz), then a short re-heat of the same GEMM right before every point (``reheat_s``): the power
  controller moves the clock every ~0.1 s, so a point timed right after it runs at the capped clock a
  serving GPU lives at, instead of boosting back up while a small-n point idles the power budget;
* each call bracketed by CUDA events; the re-heat (or, without one, a ``_sleep`` kernel) holds the GPU
  while the CPU queues every call of the point, so the CPU's launch latency never shows as GPU time
  (measured on an H100: an fp8 call costs the CPU ~200 µs and the GPU 60-90 µs; a bf16 call 70 µs and
  46-50 µs: without the hold both time the CPU); warm-up calls run apart and synchronised, since a
  first call at a new n can stall the CPU for milliseconds; the point's time is the median of >= 20
  calls;
* NVML telemetry read before and after every point; if the clock-event reasons changed (a thermal
  slowdown began, the power cap let go), the point is retried (``max_retries`` times, then kept and
  flagged);
* a co-tenant (another process on the same GPU: a noisy neighbour, a time-sliced tenant) does not make
  kernels slower, it makes them wait: the GPU runs one context at a time in slices of milliseconds, so
  most of a point's 25 short calls run whole inside the agent's slice and the median never sees the
  neighbour (measured on an H200 with a neighbour at 90 % duty: the layer's step 4.3x slower, the
  median curve within 4 %: benchmarks/results/ep-layer-h200-2026-12-01/). Serving loses most at its
  syncs: each time its queue drains the neighbour takes the GPU and the next layer waits for the
  neighbour's kernel or slice. So after the median each point runs that serving loop itself
  (``window_mode="loop"``, the default): one MoE layer's ``loop_layer_experts`` calls replayed as one
  CUDA graph (as SGLang and vLLM run decode steps; ``layer_graph``), then a sync, repeated for
  ``loop_s`` in ``loop_parts`` parts, and compares each iteration's wall time with what it takes on an
  idle GPU: the smaller of the graph's own GPU time (its replays timed like the median) and the calls'
  medians, plus ``loop_graph_overhead_s`` (``idle_iteration_s``; without a GPU graph, the eager loop's
  CPU-paced estimate). Over ``loop_threshold`` in the whole window and in at least ``loop_min_parts``
  parts (one hiccup cannot flag a point), the point is reported at median x that factor and flagged
  ``shared`` (``contention``). Measured on an H100 beside four co-tenants (a 90 % and a 50 % GEMM
  neighbour, a flat-out device copy, short bursts) against a serving loop of the same layer in the same
  process (``benchmarks/agent_cotenant.py``; benchmarks/results/agent-cotenant-h100-2026-12-07/): the
  published slowdown was within 20 % of the loop's at 106 of 108 points (ratios 0.73-1.62; the window
  below: 0.28-1.23), and no point of 195 on the idle GPU was flagged (the window below: 1 of 84).
  ``window_mode="chunks"`` keeps the earlier check: a window of back-to-back calls at least
  ``window_s`` long (in chunks that fit CUDA's launch queue, each behind a hold) bracketed by events;
  over the median by more than ``shared_threshold`` it is reported at the window's time. It sees about
  half of what a serving loop loses (x1.7-2.0 where the loop saw x3.5-3.9) and costs less (a default
  profile 17.8 s vs 21.4-22.1 s with the loop, H100).

``torch`` is imported inside the functions, so the package imports without it.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

from vibe.agent.shapes import TOKEN_GRID, ExpertShape
from vibe.agent.telemetry import BENIGN_REASONS, NoTelemetry, Sample, TelemetrySource

if TYPE_CHECKING:  # torch is imported where it runs (the package imports without it)
    from typing import TypeAlias

    from torch import Tensor
    from torch import device as Device

    #: What an expert call takes: [n, hidden] activations, or (fused fp8) quantised rows, their scales,
    #: the group's row offsets and n.
    CallInput: TypeAlias = Tensor | tuple[Tensor, Tensor, Tensor, int]

#: Largest finite value of float8 e4m3 (the scale maps a tensor's amax onto it).
FP8_MAX = 448.0

#: progress(event, info): "preheat", "shape", "point", "skip", "done" (for the CLI's progress bar).
Progress = Callable[[str, dict[str, Any]], None]

#: Experts per fused fp8 call (a rank holds 8-36 experts; a point is the call's time / FP8_GROUP).
FP8_GROUP = 8

#: The kernels a curve can be measured with (``CurveResult.kernel``).
KERNEL_BF16 = "matmul"
KERNEL_FP8_GROUPED = f"fp8 _scaled_grouped_mm, row-wise scales, {FP8_GROUP} experts per call"
KERNEL_FP8_UNFUSED = "fp8 _scaled_mm, per-tensor scales quantised per call"


@dataclass
class BenchConfig:
    """How carefully to measure (defaults: a full H100 profile of 6 curves x 14 points in ~20-40 s)."""

    tokens: tuple[int, ...] = TOKEN_GRID
    repeats: int = 25  # timed calls per point; the point is their median
    warmup: int = 3  # untimed calls per point (first-call allocations, GEMM heuristics)
    min_experts: int = 4  # distinct experts cycled per point, at least
    l2_multiple: float = 4.0  # ... and at least this many times the L2 cache in weights
    max_weight_fraction: float = 0.3  # of free device memory, at most, for one shape's weights
    preheat_min_s: float = 1.0  # pre-heat at least this long on a GPU
    preheat_max_s: float = 10.0  # and at most this long
    preheat_window_s: float = 0.5  # settled: mean SM clock of the last two windows within tolerance
    preheat_tolerance: float = 0.02
    reheat_s: float = 0.05  # heater GEMMs before every point (GPU only; 0 = none)
    heater_size: int = 8192  # the heater multiplies two [size, size] bf16 matrices
    max_retries: int = 2  # per point, when clock-event reasons changed during it
    window_s: float = 0.02  # contention window per point on a GPU (0 = none): several time slices
    window_max_calls: int = 2000  # calls in a window, at most
    window_chunk_calls: int = 96  # calls queued behind one hold (CUDA's launch queue holds ~1,000 kernels)
    shared_threshold: float = 0.10  # window over median beyond which the GPU is shared (idle H200: <= 1.09)
    # The serving-loop window (``window_mode="loop"``; module docstring), instead of the one above:
    window_mode: str = "loop"  # "loop" (the serving loop, module doc) or "chunks" (the window above)
    loop_s: float = 0.1  # serving loop per point: a few neighbour periods
    loop_parts: int = 4  # ... timed in this many parts
    loop_layer_experts: int = 8  # expert calls between two syncs (one MoE layer of a decode step)
    loop_max_iters: int = 1000  # loop iterations in a window, at most
    loop_tail: float = 0.4  # GPU time left after the last launch returns (CPU-bound loop), in calls
    loop_overhead_s: float = 25e-6  # launch and sync latency per iteration on an idle GPU
    loop_threshold: float = 0.15  # loop over its idle estimate beyond which the GPU is shared
    loop_min_parts: int = 2  # ... in at least this many parts (and over the whole window)
    loop_graph: bool = True  # replay the layer's calls as one CUDA graph (as engines run decode steps)
    loop_graph_repeats: int = 9  # replays timed for the graph's own GPU time (their median)
    loop_graph_overhead_s: float = 0.0  # launch and sync per replayed iteration (idle H100: -23..+15 µs)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.min_experts < 1:
            raise ValueError("repeats and min_experts must be >= 1")
        if list(self.tokens) != sorted(set(self.tokens)) or not self.tokens or self.tokens[0] < 1:
            raise ValueError("tokens must be strictly increasing positive ints")
        if self.loop_parts < 1 or self.loop_layer_experts < 1 or self.loop_min_parts < 1:
            raise ValueError("loop_parts, loop_layer_experts and loop_min_parts must be >= 1")
        if self.window_mode not in ("chunks", "loop"):
            raise ValueError("window_mode must be 'chunks' or 'loop'")


@dataclass
class PointResult:
    """One (shape, tokens) point: statistics over ``repeats`` timed calls."""

    tokens: int
    seconds: float  # median, or the contention window's time when the GPU is shared (``shared``)
    cv: float  # coefficient of variation of the calls
    min_s: float
    max_s: float
    retries: int = 0
    unsettled: bool = False  # reasons still changed on the last try
    reasons_before: list[str] = field(default_factory=list)
    reasons_after: list[str] = field(default_factory=list)
    sm_clock_hz: int | None = None  # after the point
    median_s: float | None = None  # median of the calls (= seconds unless shared)
    window_s: float | None = None  # seconds per expert over the contention window (GPU only)
    window_factors: list[float] = field(default_factory=list)  # loop mode: each part's time over its idle
    shared: bool = False  # the window was slower than the median (idle loop): ``seconds`` is the window's


def contended_seconds(median_s: float, window_s: float | None, threshold: float) -> tuple[float, bool]:
    """The point's time and whether the GPU was shared: the window's time per call when it exceeds the
    median by more than ``threshold`` (a co-tenant took slices of the window), else the median."""
    if window_s is not None and window_s > median_s * (1.0 + threshold):
        return window_s, True
    return median_s, False


#: One serving-loop iteration: (wall seconds from the first launch to the sync's return, seconds the CPU
#: took to launch the calls, when the CPU began each call after the first, in seconds from the first).
LoopIteration = tuple[float, float, Sequence[float]]


def serving_loop(
    call: Callable[[int], Any], per_sync: int, seconds: float, max_iters: int, sync: Callable[[], Any]
) -> list[LoopIteration]:
    """Run ``per_sync`` calls then ``sync()``, repeated for ``seconds`` (at least 3, at most ``max_iters``
    iterations): what one MoE layer of a decode step does, paced by the CPU as in serving."""
    out: list[LoopIteration] = []
    k = 0
    clock = time.perf_counter
    stop = clock() + seconds
    while len(out) < max_iters:
        t0 = clock()
        starts = []
        for j in range(per_sync):
            if j:
                starts.append(clock() - t0)
            call(k)
            k += 1
        t1 = clock()
        sync()
        t2 = clock()
        out.append((t2 - t0, t1 - t0, starts))
        if t2 >= stop and len(out) >= 3:
            break
    return out


def idle_iteration_s(
    launch_s: float,
    call_s: float,
    per_sync: int,
    tail: float,
    overhead_s: float,
    starts: Sequence[float] = (),
) -> float:
    """An iteration's wall time on an idle GPU: the GPU runs each call once the CPU has begun it and the
    call before it is done, so the calls end at the latest of (a call's start + the GPU time of it and
    every call after it) and (the CPU's last launch + the last call's ``tail``); plus the launch and sync
    latency. ``starts``: when the CPU began each call after the first (none: evenly enough not to matter)."""
    end = max(per_sync * call_s, launch_s + tail * call_s)
    for k, t in enumerate(starts, 1):
        end = max(end, t + (per_sync - k) * call_s)
    return end + overhead_s


def loop_factor(
    iters: Sequence[LoopIteration], call_s: float, per_sync: int, tail: float, overhead_s: float
) -> float:
    """Wall time of the iterations over their idle estimate (1.0: what an idle GPU gives)."""
    idle = sum(idle_iteration_s(it[1], call_s, per_sync, tail, overhead_s, it[2]) for it in iters)
    return sum(it[0] for it in iters) / idle if idle > 0 else 1.0


def contention(
    parts: Sequence[Sequence[LoopIteration]],
    call_s: float,
    per_sync: int,
    cfg: BenchConfig,
) -> tuple[float, list[float], bool]:
    """(the window's factor, each part's factor, shared): shared when the whole window and at least
    ``loop_min_parts`` parts (all of them, if fewer) ran more than ``loop_threshold`` over their idle
    estimate. The factor is the whole window's (a co-tenant's busy and idle phases both count, as they
    do for serving); one slow part (a hiccup of the host) never flags a point."""
    args = (call_s, per_sync, cfg.loop_tail, cfg.loop_overhead_s)
    each = [loop_factor(p, *args) for p in parts if p]
    whole = loop_factor([it for p in parts for it in p], *args)
    limit = 1.0 + cfg.loop_threshold
    slow = sum(f > limit for f in each)
    shared = bool(each) and whole > limit and slow >= min(cfg.loop_min_parts, len(each))
    return whole, each, shared


@dataclass
class CurveResult:
    """One shape's curve on one device; ``skipped`` says why a shape was not measured (e.g. no fp8)."""

    shape: ExpertShape
    points: list[PointResult] = field(default_factory=list)
    experts: int = 0  # distinct experts cycled
    skipped: str = ""
    padded_rows: int = 0  # fp8 GEMMs that needed M padded to 16 rows (counts, for the record)
    kernel: str = ""  # what ran: KERNEL_BF16, KERNEL_FP8_GROUPED or KERNEL_FP8_UNFUSED

    @property
    def tokens(self) -> list[int]:
        return [p.tokens for p in self.points]

    @property
    def seconds(self) -> list[float]:
        return [p.seconds for p in self.points]

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = {
            "name": self.shape.name,
            "hiddenSize": self.shape.hidden_size,
            "intermediateSize": self.shape.intermediate_size,
            "dtype": self.shape.dtype,
        }
        return d


@dataclass
class BenchResult:
    """A full profile of one device."""

    device: str  # "cuda:0" / "cpu"
    device_name: str
    nvml_index: int | None
    started: float  # wall clock
    duration_s: float = 0.0
    preheat: dict[str, Any] = field(default_factory=dict)
    curves: list[CurveResult] = field(default_factory=list)
    telemetry_before: dict[str, Any] = field(default_factory=dict)
    telemetry_after: dict[str, Any] = field(default_factory=dict)
    sm_clock_hz: int | None = None  # median SM clock over the points (the drift detector's baseline)
    mem_clock_hz: int | None = None
    power_limit_w: float | None = None
    torch_version: str = ""
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["curves"] = [c.as_dict() for c in self.curves]
        return d


# -- the expert FFN as served -----------------------------------------------------------------------


class ExpertBank:
    """``experts`` distinct random experts of one shape on one device, and the FFN that runs them.

    ``fp8_kernel`` (fp8 shapes only): ``KERNEL_FP8_GROUPED`` or ``KERNEL_FP8_UNFUSED``; None picks the
    grouped kernel where ``fused_fp8_supported`` says it runs on ``device``.
    """

    def __init__(
        self,
        torch: ModuleType,
        shape: ExpertShape,
        device: Device,
        experts: int,
        max_tokens: int,
        seed: int,
        fp8_kernel: str | None = None,
        pad16: bool | None = None,
    ):
        self.torch = torch
        self.shape = shape
        self.device = device
        h, i = shape.hidden_size, shape.intermediate_size
        gen = torch.Generator(device=device).manual_seed(seed)
        act_dtype = torch.float16 if shape.dtype == "fp16" else torch.bfloat16
        self.act_dtype = act_dtype

        def rand(*size: int, std: float) -> Tensor:
            return torch.randn(*size, generator=gen, device=device, dtype=torch.float32).mul_(std)

        # Weights scaled like a trained layer (std 1/sqrt(fan_in)); activations ~N(0, 1).
        self.x = rand(max_tokens, h, std=1.0).to(act_dtype)
        self.fp8 = shape.dtype == "fp8"
        if self.fp8 and fp8_kernel is None:
            fp8_kernel = KERNEL_FP8_UNFUSED if fused_fp8_supported(torch, device) else KERNEL_FP8_GROUPED
        self.kernel = (fp8_kernel or KERNEL_FP8_UNFUSED) if self.fp8 else KERNEL_BF16
        self.grouped = self.kernel == KERNEL_FP8_GROUPED
        self.pad16 = False
        self.per_call = FP8_GROUP if self.grouped else 1  # experts one call runs
        if self.grouped:
            experts = -(-max(experts, FP8_GROUP) // FP8_GROUP) * FP8_GROUP
        self.distinct = experts
        self.w13: list[Tensor] = []
        self.w2: list[Tensor] = []
        self.s13: list[Tensor] = []
        self.s2: list[Tensor] = []
        for _ in range(experts):
            w13 = rand(2 * i, h, std=h**-0.5)
            w2 = rand(h, i, std=i**-0.5)
            if self.fp8:
                # Grouped: [N, K] row-wise quantised, scales [N] float32 (stacked below).
                quantize = _quantize_rows if self.grouped else _quantize
                q13, s13 = quantize(torch, w13)
                q2, s2 = quantize(torch, w2)
                self.w13.append(q13)
                self.w2.append(q2)
                self.s13.append(s13)
                self.s2.append(s2)
            else:
                self.w13.append(w13.to(act_dtype))
                self.w2.append(w2.to(act_dtype))
            del w13, w2
        if self.grouped:
            # One [E, K, N] column-major operand per GEMM (the [E, N, K] stack, transposed) and its [E, N]
            # scales; a group is a slice of FP8_GROUP experts.
            self.w13 = [torch.stack(self.w13).transpose(-2, -1)]
            self.w2 = [torch.stack(self.w2).transpose(-2, -1)]
            self.s13 = [torch.stack(self.s13)]
            self.s2 = [torch.stack(self.s2)]
            # The tokens arrive quantised (fp8 dispatch), so quantising x is not timed.
            rows = FP8_GROUP * (max_tokens + 15)
            self.xq, self.xs = _quantize_rows(torch, rand(rows, h, std=1.0).to(act_dtype))
            self.pad16 = _fused_fp8_probe(torch, str(device))[1] if pad16 is None else pad16
        self.padded = 0
        self._pad_small = False

    def __len__(self) -> int:
        """Distinct calls to cycle (experts; fused fp8: groups of FP8_GROUP experts)."""
        return self.distinct // self.per_call

    def inputs(self, n: int) -> CallInput:
        """What ``__call__`` takes for n tokens (made here, outside any timed call)."""
        if self.grouped:
            m = -(-n // 16) * 16 if self.pad16 else n  # padded rows are computed and dropped
            if m != n:
                self.padded += 1
            ends = [m * (k + 1) for k in range(FP8_GROUP)]
            offs = self.torch.tensor(ends, dtype=self.torch.int32, device=self.device)
            return (self.xq[: ends[-1]], self.xs[: ends[-1]], offs, n)
        return self.x[:n]

    def __call__(self, e: int, x: CallInput) -> Tensor:
        """Run expert ``e`` over ``inputs(n)``; returns [n, hidden] in the activation dtype.

        Fused fp8: runs experts ``e * FP8_GROUP ..`` (FP8_GROUP of them) over n tokens each and returns
        [FP8_GROUP, n, hidden].
        """
        torch = self.torch
        i = self.shape.intermediate_size
        if self.grouped:
            xq, xs, offs, n = cast("tuple[Tensor, Tensor, Tensor, int]", x)
            sl = slice(e * FP8_GROUP, (e + 1) * FP8_GROUP)
            h = self._gmm8(xq, xs, self.w13[0][sl], self.s13[0][sl], offs)
            a = torch.nn.functional.silu(h[:, :i]) * h[:, i:]
            aq, as_ = _quantize_rows(torch, a)
            y = self._gmm8(aq, as_, self.w2[0][sl], self.s2[0][sl], offs)
            return y.view(FP8_GROUP, -1, y.shape[-1])[:, :n]
        x = cast("Tensor", x)
        if not self.fp8:
            h = torch.matmul(x, self.w13[e].t())
            a = torch.nn.functional.silu(h[:, :i]) * h[:, i:]
            return torch.matmul(a, self.w2[e].t())
        h = self._mm8(x, self.w13[e], self.s13[e])
        a = torch.nn.functional.silu(h[:, :i]) * h[:, i:]
        return self._mm8(a, self.w2[e], self.s2[e])

    def _gmm8(self, xq: Tensor, xs: Tensor, wq: Tensor, ws: Tensor, offs: Tensor) -> Tensor:
        """One fused fp8 grouped GEMM: [g*n, k] fp8 x [g, k, m] fp8 (group ends ``offs``) -> [g*n, m] bf16."""
        return self.torch._scaled_grouped_mm(
            xq, wq, scale_a=xs, scale_b=ws, offs=offs, out_dtype=self.torch.bfloat16
        )

    def _mm8(self, x: Tensor, wq: Tensor, ws: Tensor) -> Tensor:
        """fp8 GEMM with dynamic per-tensor activation quantisation: [n, k] x [m, k]ᵀ -> [n, m] bf16."""
        torch = self.torch
        xq, xs = _quantize(torch, x)
        n = xq.shape[0]
        if self._pad_small and n % 16:
            # Some cuBLASLt builds want M % 16 == 0 for fp8; serving kernels pad the same way.
            xq = torch.nn.functional.pad(xq.view(torch.uint8), (0, 0, 0, 16 - n % 16)).view(xq.dtype)
            self.padded += 1
            return torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws, out_dtype=torch.bfloat16)[:n]
        try:
            return torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws, out_dtype=torch.bfloat16)
        except RuntimeError:
            if n % 16 == 0 or self._pad_small:
                raise
            self._pad_small = True
            return self._mm8(x, wq, ws)


def _quantize(torch: ModuleType, t: Tensor) -> tuple[Tensor, Tensor]:
    """Per-tensor dynamic fp8 e4m3 quantisation: (t / s).to(fp8), s = amax / 448 (float32 scalar tensor).

    Four small kernels (amax as an inf-norm reduction, scale, divide, cast); serving engines fuse this
    into one, a few µs less per GEMM at small n.
    """
    amax = torch.linalg.vector_norm(t, ord=float("inf"), dtype=torch.float32)
    scale = (amax / FP8_MAX).clamp_(min=1e-12)
    return (t / scale).to(torch.float8_e4m3fn), scale


def _quantize_rows(torch: ModuleType, t: Tensor) -> tuple[Tensor, Tensor]:
    """Row-wise fp8 e4m3 quantisation of [R, C]: ([R, C] fp8, [R] float32 scales, amax / 448 per row)."""
    amax = t.abs().amax(dim=1).float()
    scale = (amax / FP8_MAX).clamp_(min=1e-12)
    return (t / scale[:, None]).to(torch.float8_e4m3fn), scale


@functools.cache
def _fused_fp8_probe(torch: ModuleType, device: str) -> tuple[str, bool]:
    """(why not, or "" when it runs; whether token counts must be padded to a multiple of 16)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return f"no fused fp8 grouped GEMM on {dev.type}", False
    if not hasattr(torch, "_scaled_grouped_mm"):
        return f"torch {torch.__version__} has no _scaled_grouped_mm", False
    cc = torch.cuda.get_device_capability(dev)
    if cc < (9, 0):
        return f"compute capability {cc[0]}.{cc[1]}: torch's fused fp8 grouped GEMM needs 9.0+", False
    shape = ExpertShape(64, 32, "fp8")
    why = ""
    for pad in (False, True):  # ragged token counts first; else padded to 16 rows, as engines pad
        try:
            bank = ExpertBank(torch, shape, dev, 1, 16, 0, fp8_kernel=KERNEL_FP8_GROUPED, pad16=pad)
            for n in (16, 1):
                bank(0, bank.inputs(n))
            torch.cuda.synchronize(dev)
            return "", pad
        except Exception as e:  # a torch or GPU without the kernel for these shapes
            why = f"fp8 grouped GEMM failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return why, False


def fused_fp8_supported(torch: ModuleType, device: Device) -> str:
    """ "" when the fused fp8 grouped GEMM (``torch._scaled_grouped_mm``) runs on ``device``, else why not."""
    return _fused_fp8_probe(torch, str(device))[0]


def fp8_supported(torch: ModuleType, device: Device) -> str:
    """ "" when fp8 GEMMs run on ``device``, else why not."""
    if not hasattr(torch, "float8_e4m3fn") or not hasattr(torch, "_scaled_mm"):
        return f"torch {torch.__version__} has no float8_e4m3fn/_scaled_mm"
    if device.type == "cuda":
        cc = torch.cuda.get_device_capability(device)
        if cc < (8, 9):
            return f"compute capability {cc[0]}.{cc[1]} has no fp8 tensor cores (needs 8.9+)"
    try:
        shape = ExpertShape(32, 32, "fp8")
        if fused_fp8_supported(torch, device):  # "" = the fused kernel runs: fp8 does
            bank = ExpertBank(
                torch, shape, device, experts=1, max_tokens=16, seed=0, fp8_kernel=KERNEL_FP8_UNFUSED
            )
            bank(0, bank.inputs(16))
            bank(0, bank.inputs(1))
    except Exception as e:  # an old torch or cuBLAS without fp8 for this GPU
        return f"fp8 GEMM failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return ""


# -- timing -----------------------------------------------------------------------------------------


class Timer:
    """Times a sequence of calls on a device: CUDA events on a GPU, ``perf_counter`` on the CPU."""

    def __init__(self, torch: ModuleType, device: Device):
        self.torch = torch
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def hold(self, seconds: float) -> None:
        """Queue a spin kernel that keeps the GPU busy at least ``seconds`` (at most 2 GHz; >= 2 ms)."""
        if self.cuda:
            self.torch.cuda._sleep(int(max(seconds, 0.002) * 2e9))

    def time_calls(
        self, fn: Callable[[int], Any], count: int, lead: Callable[[], Any] | None = None
    ) -> list[float]:
        """Seconds of each of ``count`` calls ``fn(k)``, run back to back.

        On a GPU, ``lead`` (the heater, or ``hold``) or else a ~2 ms ``_sleep`` kernel is queued first, so
        the GPU is busy while the CPU queues the calls and never waits for a launch between them.
        """
        torch = self.torch
        if not self.cuda:
            out = []
            for k in range(count):
                t0 = time.perf_counter()
                fn(k)
                out.append(time.perf_counter() - t0)
            return out
        with torch.cuda.device(self.device):
            events = [
                (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                for _ in range(count)
            ]
            if lead is not None:
                lead()
            else:
                torch.cuda._sleep(3_000_000)
            for k, (start, end) in enumerate(events):
                start.record()
                fn(k)
                end.record()
            torch.cuda.synchronize(self.device)
            return [start.elapsed_time(end) / 1e3 for start, end in events]

    def time_window(self, fn: Callable[[int], Any], count: int, lead: Callable[[], Any]) -> float:
        """Seconds from the start of the first to the end of the last of ``count`` calls queued back to
        back behind ``lead`` (GPU only): the GPU never waits for the CPU inside the window, so any gap
        in it is time the GPU gave another context."""
        torch = self.torch
        with torch.cuda.device(self.device):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            lead()
            start.record()
            for k in range(count):
                fn(k)
            end.record()
            torch.cuda.synchronize(self.device)
            return float(start.elapsed_time(end)) / 1e3


class Heater:
    """A big bf16 GEMM loop that draws the GPU's full power (the pre-heat and the per-point re-heat)."""

    def __init__(self, torch: ModuleType, device: Device, size: int, seed: int = 0) -> None:
        self.torch = torch
        gen = torch.Generator(device=device).manual_seed(seed + 1)
        self.a = torch.randn(size, size, generator=gen, device=device, dtype=torch.bfloat16)
        self.b = torch.randn(size, size, generator=gen, device=device, dtype=torch.bfloat16)
        self.c = torch.empty(size, size, device=device, dtype=torch.bfloat16)
        self.seconds_per_iter = 0.0  # measured at the end of the pre-heat

    def run(self, iters: int) -> None:
        """Queue ``iters`` GEMMs (asynchronous)."""
        for _ in range(iters):
            self.torch.matmul(self.a, self.b, out=self.c)

    def iters_for(self, seconds: float) -> int:
        return max(1, round(seconds / self.seconds_per_iter)) if self.seconds_per_iter > 0 else 1

    def calibrate(self, timer: Timer, iters: int = 5) -> float:
        times = timer.time_calls(lambda _k: self.run(1), iters)
        self.seconds_per_iter = statistics.median(times)
        return self.seconds_per_iter


def _reasons(s: Sample) -> frozenset[str]:
    return frozenset(s.reasons) - BENIGN_REASONS


def measure_point(
    bank: ExpertBank,
    timer: Timer,
    n: int,
    cfg: BenchConfig,
    telemetry: TelemetrySource,
    nvml_index: int | None,
    heater: Heater | None = None,
    hold: bool = True,
    loop_log: list[dict[str, Any]] | None = None,
) -> PointResult:
    """Time ``cfg.repeats`` calls over n tokens cycling the bank's experts; retry on a clock-event change.

    ``hold=False`` (the canary, on a GPU that serves) queues nothing ahead of the calls and runs no
    serving loop. ``loop_log`` (benchmarks) receives the serving loop's raw iterations.
    """
    x = bank.inputs(n)
    times, cpu, before, after, attempt, changed = _timed_calls(
        bank, timer, x, cfg, telemetry, nvml_index, heater, hold
    )
    median = statistics.median(times)
    window = None
    factors: list[float] = []
    seconds, shared = median, False
    if timer.cuda and hold and cfg.window_mode == "loop" and cfg.loop_s > 0 and median > 0:
        factor, factors, shared = _loop_contention(bank, timer, x, cfg, median, loop_log)
        window = median * max(factor, 1.0)
        if shared:
            seconds = window
    elif timer.cuda and hold and cfg.window_s > 0 and median > 0:
        window = _window_seconds(bank, timer, x, cfg, median, cpu, heater)
        seconds, shared = contended_seconds(median, window, cfg.shared_threshold)
    mean = statistics.fmean(times)
    return PointResult(
        tokens=n,
        seconds=seconds,
        cv=(statistics.pstdev(times) / mean) if mean > 0 else 0.0,
        min_s=min(times),
        max_s=max(times),
        retries=attempt,
        unsettled=changed,
        reasons_before=before.reasons,
        reasons_after=after.reasons,
        sm_clock_hz=after.sm_clock_hz,
        median_s=median,
        window_s=window,
        window_factors=[round(f, 4) for f in factors],
        shared=shared,
    )


def _timed_calls(
    bank: ExpertBank,
    timer: Timer,
    x: Any,
    cfg: BenchConfig,
    telemetry: TelemetrySource,
    nvml_index: int | None,
    heater: Heater | None,
    hold: bool,
) -> tuple[list[float], list[float], Sample, Sample, int, bool]:
    """``cfg.repeats`` timed calls per expert, retried while the clock-event reasons change under them.

    Returns the per-expert seconds, the warm-up's CPU seconds per call, the telemetry samples before and
    after, the retries taken and whether the reasons still changed on the last attempt.
    """
    experts = len(bank)
    for attempt in range(cfg.max_retries + 1):
        # Warm-up apart, synchronised: a first call at a new n can cost the CPU milliseconds (GEMM
        # heuristics, kernel loading); inside the timed batch it would let the GPU catch up with the CPU,
        # and every later call would then time the CPU's launch overhead instead of the kernels. The
        # warm-up also tells how long the CPU needs to queue the timed calls: the hold must outlast it.
        cpu = []
        for k in range(cfg.warmup):
            t0 = time.perf_counter()
            bank(k % experts, x)
            cpu.append(time.perf_counter() - t0)
        timer.sync()
        queue_s = 1.5 * statistics.median(cpu) * cfg.repeats if cpu else 0.0
        lead: Callable[[], Any] | None = None
        if heater is not None and cfg.reheat_s > 0:
            iters = heater.iters_for(max(cfg.reheat_s, queue_s))
            lead = functools.partial(heater.run, iters)
        elif not hold:
            lead = lambda: None  # noqa: E731
        else:
            lead = functools.partial(timer.hold, queue_s)
        before = telemetry.sample(nvml_index) if nvml_index is not None else Sample(time=time.time())
        times = timer.time_calls(lambda k: bank(k % experts, x), cfg.repeats, lead)
        times = [t / bank.per_call for t in times]  # per expert (fused fp8 runs a group per call)
        after = telemetry.sample(nvml_index) if nvml_index is not None else Sample(time=time.time())
        changed = _reasons(before) != _reasons(after)
        if not changed or attempt == cfg.max_retries:
            break
    return times, cpu, before, after, attempt, changed


def _loop_contention(
    bank: ExpertBank,
    timer: Timer,
    x: Any,
    cfg: BenchConfig,
    median: float,
    loop_log: list[dict[str, Any]] | None,
) -> tuple[float, list[float], bool]:
    """The serving loop (module docstring): calls then a sync, repeated, no hold; the CPU paces it.

    Returns ``contention``'s (factor, per-part factors, shared).
    """
    experts = len(bank)
    per_sync = max(1, cfg.loop_layer_experts // bank.per_call)
    call_s = median * bank.per_call
    overhead_s = cfg.loop_overhead_s
    layer = layer_graph(timer, bank, x, per_sync) if cfg.loop_graph else None
    if layer is not None:
        # One launch per layer: an idle iteration is the graph's GPU time plus a launch and a sync. The
        # graph's time is measured like the calls' median (replays queued back to back behind a hold,
        # timed by events): it runs its kernels without the per-call gaps the median counts (idle H100:
        # a graph of 8 calls took 0.81-0.97 x eight medians), and where a co-tenant lengthens these
        # replays it lengthens the median alike, so the published time (median x factor) still follows
        # the loop.
        # Long replays (over ~1 ms) are time-sliced by a co-tenant where the single calls are not (H100,
        # a 90 % GEMM neighbour: replays x1.6-2.3, calls' median x0.9-1.0), so the idle estimate is
        # the smaller of the two.
        queue = functools.partial(timer.hold, 0.002)
        graph_s = statistics.median(timer.time_calls(lambda k: layer(), cfg.loop_graph_repeats, lead=queue))
        call_s, per_sync, overhead_s = layer_idle_s(graph_s, call_s * per_sync), 1, cfg.loop_graph_overhead_s
    timer.sync()
    parts = [
        serving_loop(
            (lambda k: layer()) if layer is not None else (lambda k: bank(k % experts, x)),
            per_sync,
            cfg.loop_s / cfg.loop_parts,
            max(1, cfg.loop_max_iters // cfg.loop_parts),
            timer.sync,
        )
        for _ in range(cfg.loop_parts)
    ]
    if loop_log is not None:
        loop_log.append(
            {
                "perSync": per_sync,
                "callS": call_s,
                "overheadS": overhead_s,
                "graph": layer is not None,
                "parts": parts,
            }
        )
    return contention(parts, call_s, per_sync, replace(cfg, loop_overhead_s=overhead_s))


def layer_idle_s(graph_s: float, calls_s: float) -> float:
    """A replayed layer's GPU time on an idle GPU: its replays' median where a co-tenant left them whole
    (a graph runs its kernels without the gaps the per-call median counts: idle H100, 0.81-0.97 x the
    calls), the calls' medians summed where it sliced the longer replays (x1.6-2.3 beside a 90 % GEMM
    neighbour while the calls' median stayed within 10 %)."""
    return min(graph_s, calls_s)


def layer_graph(timer: Timer, bank: ExpertBank, x: Any, calls: int) -> Callable[[], Any] | None:
    """One MoE layer's ``calls`` expert calls (cycling the bank) captured as a CUDA graph: its replay, or
    None where there is no GPU or capture fails (the loop then launches each call from the CPU).

    Engines replay decode steps from CUDA graphs (SGLang's and vLLM's graph runners), so a serving step's
    GPU work is queued in one launch; an eager Python loop on a slow host is paced by the CPU instead
    (H100, 2026-12-07: 8 bf16 calls took ~900 µs to launch for ~400 µs of GPU work) and its time then
    measures the host, not the GPU.
    """
    if not timer.cuda:
        return None
    torch = timer.torch
    experts = len(bank)

    def eager() -> None:
        for k in range(calls):
            bank(k % experts, x)

    try:
        with torch.cuda.device(timer.device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up off the capture stream, as torch asks
                eager()
            torch.cuda.current_stream().wait_stream(side)
            timer.sync()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                eager()
            graph.replay()
            timer.sync()
            return graph.replay
    except Exception:  # a kernel that cannot be captured: the eager loop
        timer.sync()
        return None


def _window_seconds(
    bank: ExpertBank,
    timer: Timer,
    x: Any,
    cfg: BenchConfig,
    median: float,
    cpu: list[float],
    heater: Heater | None,
) -> float:
    """Seconds per expert over the contention window (module docstring), timed in chunks.

    Chunks of at most ``window_chunk_calls`` calls: CUDA's launch queue holds ~1,000 kernels, and once
    it is full the CPU issues each call in real time; where that is slower than the GPU runs them (small
    n: ~60 µs of launches against ~40 µs of GPU) an unchunked window timed the CPU (x1.3 on an idle
    H200). Each chunk's lead holds the GPU while the CPU queues it, so no gap inside a chunk is the CPU's.
    """
    experts = len(bank)
    call_s = median * bank.per_call
    total = max(cfg.repeats, min(cfg.window_max_calls, math.ceil(cfg.window_s / call_s)))
    chunk = max(1, min(cfg.window_chunk_calls, total))
    cpu_s = statistics.median(cpu) if cpu else 0.0
    hold_s = 0.002 + 1.5 * chunk * cpu_s
    if heater is not None and cfg.reheat_s > 0:
        wlead = functools.partial(heater.run, heater.iters_for(hold_s))
    else:
        wlead = functools.partial(timer.hold, hold_s)
    spent, calls = 0.0, 0
    while calls < total:
        spent += timer.time_window(lambda k: bank(k % experts, x), chunk, wlead)
        calls += chunk
    return spent / calls / bank.per_call


def experts_for(torch: ModuleType, device: Device, shape: ExpertShape, cfg: BenchConfig) -> int:
    """Distinct experts to cycle: >= min_experts and >= l2_multiple x L2, within the memory budget."""
    per = shape.weight_bytes()
    want = cfg.min_experts
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        l2 = int(getattr(props, "L2_cache_size", 0) or 50 * 2**20)
        want = max(want, math.ceil(cfg.l2_multiple * l2 / per))
        free, _total = torch.cuda.mem_get_info(device)
        cap = int(cfg.max_weight_fraction * free // per)
        if cap < 1:
            return 0
        want = min(want, max(cap, 1))
    return want


# -- pre-heat ---------------------------------------------------------------------------------------


def preheat(
    heater: Heater | None,
    timer: Timer,
    cfg: BenchConfig,
    telemetry: TelemetrySource,
    nvml_index: int | None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the heater until the SM clock settles under the power cap (or ``preheat_max_s``).

    Settled: at least ``preheat_min_s`` elapsed, the clock is held below its maximum (a clock-event
    reason other than GpuIdle is active: SwPowerCap on a healthy GPU), and the mean SM clock of the
    last window is within ``preheat_tolerance`` of the window before (under the cap the clock keeps
    bouncing ±5 %, so single samples never settle). A GPU that never reaches its cap (a high limit)
    settles on stability alone after twice ``preheat_min_s``. On a CPU (no clocks) it runs briefly.
    Returns a summary with the clock trace (seconds since start, MHz, reasons).
    """
    t0 = time.perf_counter()
    trace: list[tuple[float, int, list[str]]] = []
    settled = False
    k = 0
    while heater is not None:
        heater.run(4)
        k += 4
        timer.sync()
        now = time.perf_counter() - t0
        capped = False
        if nvml_index is not None:
            s = telemetry.sample(nvml_index)
            capped = bool(_reasons(s))
            if s.sm_clock_hz:
                trace.append((round(now, 3), s.sm_clock_hz // 1_000_000, s.reasons))
        if progress:
            progress("preheat", {"elapsed": now, "clock_mhz": trace[-1][1] if trace else None})
        stable = now >= cfg.preheat_min_s and _settled([(t, c) for t, c, _ in trace], now, cfg)
        if stable and (capped or now >= 2 * cfg.preheat_min_s):
            settled = True
            break
        if now >= cfg.preheat_max_s or (not trace and now >= cfg.preheat_min_s):
            break
    if heater is not None:
        heater.calibrate(timer)
    last = [c for t, c, _ in trace if t >= trace[-1][0] - cfg.preheat_window_s] if trace else []
    return {
        "seconds": round(time.perf_counter() - t0, 3),
        "settled": settled,
        "heaterIters": k,
        "heaterSecondsPerIter": heater.seconds_per_iter if heater is not None else None,
        "clockMHz": round(statistics.fmean(last)) if last else None,
        "reasons": trace[-1][2] if trace else [],
        "trace": [(t, c) for t, c, _ in trace],
    }


def _settled(trace: list[tuple[float, int]], now: float, cfg: BenchConfig) -> bool:
    w = cfg.preheat_window_s
    last = [c for t, c in trace if t > now - w]
    prev = [c for t, c in trace if now - 2 * w < t <= now - w]
    if len(last) < 2 or len(prev) < 2:
        return False
    a, b = statistics.fmean(last), statistics.fmean(prev)
    return abs(a - b) <= cfg.preheat_tolerance * b


# -- a full profile and a canary ---------------------------------------------------------------------


def resolve_device(torch: ModuleType, device: str | None) -> Device:
    """``cuda:N``, ``cpu`` or None (the first GPU if any, else the CPU)."""
    if device:
        return torch.device(device)
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


def nvml_index_for(torch: ModuleType, device: Device, telemetry: TelemetrySource) -> int | None:
    """The NVML index of a CUDA device (matched by UUID, else by PCI bus id, else by ordinal)."""
    if device.type != "cuda" or not telemetry.available:
        return None
    gpus = telemetry.gpus()
    props = torch.cuda.get_device_properties(device)
    uuid = str(getattr(props, "uuid", "") or "")
    for g in gpus:
        if uuid and g.uuid.lower().removeprefix("gpu-") == uuid.lower().removeprefix("gpu-"):
            return g.index
    bus = getattr(props, "pci_bus_id", None)
    if bus is not None:
        for g in gpus:
            try:
                if int(g.pci_bus_id.split(":")[1], 16) == int(bus):
                    return g.index
            except (IndexError, ValueError):
                pass
    idx = device.index or 0
    return idx if idx < len(gpus) else None


def profile_device(
    shapes: Sequence[ExpertShape],
    *,
    device: str | None = None,
    cfg: BenchConfig | None = None,
    telemetry: TelemetrySource | None = None,
    progress: Progress | None = None,
) -> BenchResult:
    """Benchmark every shape on one device: pre-heat, then each shape's token grid (see module doc)."""
    import torch

    cfg = cfg or BenchConfig()
    telemetry = telemetry or NoTelemetry()
    dev = resolve_device(torch, device)
    timer = Timer(torch, dev)
    nvml_index = nvml_index_for(torch, dev, telemetry)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    t_start = time.perf_counter()
    result = BenchResult(
        device=str(dev),
        device_name=name,
        nvml_index=nvml_index,
        started=time.time(),
        torch_version=torch.__version__,
    )
    if nvml_index is not None:
        result.telemetry_before = telemetry.sample(nvml_index).as_dict()
    torch.manual_seed(cfg.seed)
    no_fp8 = _fp8_check(torch, dev, shapes, result.notes)
    max_tokens = max(cfg.tokens)

    # On a CPU a token heater keeps the code path the same (tests, CI); there is no clock to settle.
    heater = Heater(torch, dev, cfg.heater_size if dev.type == "cuda" else 128, cfg.seed)
    result.preheat = preheat(heater, timer, cfg, telemetry, nvml_index, progress)

    for shape in shapes:
        curve = CurveResult(shape=shape)
        result.curves.append(curve)
        if shape.dtype == "fp8" and no_fp8:
            curve.skipped = no_fp8
            if progress:
                progress("skip", {"shape": shape, "why": no_fp8, "points": len(cfg.tokens)})
            continue
        _measure_curve(curve, torch, dev, timer, cfg, telemetry, nvml_index, heater, max_tokens, progress)

    del heater
    _note_shared(result, cfg)
    if nvml_index is not None:
        _telemetry_after(result, telemetry, nvml_index)
    result.duration_s = round(time.perf_counter() - t_start, 3)
    if progress:
        progress("done", {"result": result})
    return result


def _fp8_check(torch: ModuleType, dev: Device, shapes: Sequence[ExpertShape], notes: list[str]) -> str:
    """Why fp8 cannot be measured here ("" if it can, or no shape is fp8); notes the unfused fallback."""
    no_fp8 = fp8_supported(torch, dev) if any(s.dtype == "fp8" for s in shapes) else ""
    if no_fp8:
        notes.append(f"fp8 skipped: {no_fp8}")
    elif any(s.dtype == "fp8" for s in shapes):
        no_fused = fused_fp8_supported(torch, dev)
        if no_fused:
            notes.append(
                f"fp8 measured unfused (per-call quantisation, _scaled_mm), slower than an engine's fused "
                f"fp8: {no_fused}"
            )
    return no_fp8


def _measure_curve(
    curve: CurveResult,
    torch: ModuleType,
    dev: Device,
    timer: Timer,
    cfg: BenchConfig,
    telemetry: TelemetrySource,
    nvml_index: int | None,
    heater: Heater,
    max_tokens: int,
    progress: Progress | None,
) -> None:
    """Fill ``curve`` with a point per token count of ``cfg.tokens`` (or mark it skipped: no memory)."""
    shape = curve.shape
    bank = _bank(torch, dev, shape, cfg, max_tokens)
    if bank is None:
        curve.skipped = "not enough free device memory for one expert"
        if progress:
            progress("skip", {"shape": shape, "why": curve.skipped, "points": len(cfg.tokens)})
        return
    curve.experts = bank.distinct
    curve.kernel = bank.kernel
    if progress:
        progress("shape", {"shape": shape, "experts": len(bank)})
    for n in cfg.tokens:
        point = measure_point(bank, timer, n, cfg, telemetry, nvml_index, heater)
        curve.points.append(point)
        if progress:
            progress("point", {"shape": shape, "point": point})
    curve.padded_rows = bank.padded
    del bank
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def _note_shared(result: BenchResult, cfg: BenchConfig) -> None:
    """Note the points that ran slower over the contention window than call by call (a shared GPU)."""
    shared = [p for c in result.curves for p in c.points if p.shared]
    if not shared:
        return
    worst = max(p.seconds / (p.median_s or p.seconds) for p in shared)
    total = sum(len(c.points) for c in result.curves)
    result.notes.append(
        f"GPU shared with another context: {len(shared)} of {total} points ran slower over a "
        + (
            f"{cfg.loop_s * 1e3:.0f} ms serving loop (calls, sync) than an idle GPU runs it"
            if cfg.window_mode == "loop"
            else f"{cfg.window_s * 1e3:.0f} ms window than call by call"
        )
        + f" (up to x{worst:.2f}); those points report that time, what a serving process on this GPU gets"
    )


def _telemetry_after(result: BenchResult, telemetry: TelemetrySource, nvml_index: int) -> None:
    """The closing telemetry sample and the clocks and power limit the profile ran at."""
    result.telemetry_after = telemetry.sample(nvml_index).as_dict()
    # The drift baseline: the clock the points ran at (re-heated: the capped clock). Serving at full
    # load runs at it; a lighter load runs faster, which the drift estimate floors at "no drift".
    clocks = [p.sm_clock_hz for c in result.curves for p in c.points if p.sm_clock_hz]
    if clocks:
        result.sm_clock_hz = int(statistics.median(clocks))
    result.mem_clock_hz = result.telemetry_after.get("mem_clock_hz")
    result.power_limit_w = result.telemetry_after.get("power_limit_w")


def _bank(
    torch: ModuleType, dev: Device, shape: ExpertShape, cfg: BenchConfig, max_tokens: int
) -> ExpertBank | None:
    experts = experts_for(torch, dev, shape, cfg)
    if experts < 1:
        return None
    return ExpertBank(torch, shape, dev, experts, max_tokens, cfg.seed)


@dataclass
class CanaryResult:
    """A short spot check of one shape at a few token counts (no pre-heat: it runs on a working GPU)."""

    shape: ExpertShape
    tokens: list[int]
    seconds: list[float]  # median per point
    wall_s: float  # wall time the canary took, allocation included
    gpu_s: float  # device time spent in the timed and warm-up calls (its cost to serving)


def canary(
    shape: ExpertShape,
    *,
    device: str | None = None,
    tokens: Sequence[int] = (1, 256, 2048),
    repeats: int = 10,
    experts: int = 2,
    telemetry: TelemetrySource | None = None,
) -> CanaryResult:
    """Time a few points of one shape with few experts, cheaply (see ``BenchConfig`` for the full run)."""
    import torch

    t0 = time.perf_counter()
    dev = resolve_device(torch, device)
    timer = Timer(torch, dev)
    cfg = BenchConfig(
        tokens=tuple(sorted(tokens)), repeats=repeats, warmup=1, min_experts=experts, max_retries=0
    )
    bank = ExpertBank(torch, shape, dev, experts, max(tokens), cfg.seed)
    points = [
        measure_point(bank, timer, n, cfg, telemetry or NoTelemetry(), None, hold=False) for n in cfg.tokens
    ]
    del bank
    wall = time.perf_counter() - t0
    gpu = sum(p.seconds * (repeats + cfg.warmup) for p in points)
    return CanaryResult(shape, list(cfg.tokens), [p.seconds for p in points], wall, gpu)
