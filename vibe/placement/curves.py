"""Per-GPU performance curves: how long one expert takes on one GPU for n tokens.

Role in the data flow: the agent measures ``t_g(n)`` on each GPU (or the operator falls back to a scaled
reference curve), and everything in ``vibe.placement`` prices a placement through these curves.

The curve model (the cost model of ARCHITECTURE.md, made precise):

* ``t_g(0) = 0``: a slot whose expert gets no tokens costs nothing.
* ``0 < n <= tokens[0]``: flat at ``seconds[0]`` (below the first measured point the kernel is bound by
  streaming the expert's weights, not by n).
* between measured points: linear interpolation. The points are validated non-decreasing, so the curve
  is monotone; the H100 data is flat up to ~256 tokens and linear after, and a hard ``max(floor, c*n)``
  would be off by up to 23 % near the knee, hence interpolation rather than a two-parameter fit.
* past the last point: linear extrapolation with the last segment's slope (which must be positive, or a
  hot expert would look free).

``CurveTable`` puts all GPUs of a fleet on one shared token grid (the union of their points) so one
vectorised lookup prices any array of (GPU, tokens) pairs. Resampling a piecewise-linear curve at a
superset of its own breakpoints (flat below its first point, on its extrapolation line above its last)
represents it exactly, so the table is not an approximation.

The H100 reference data (``data/h100_expert_ffn.json``) and its provenance live next to this module;
``reference_curve`` serves it, scaled to another expert shape when asked.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

from vibe.placement.errors import PlacementError

#: Bytes per weight for the dtypes an expert may be served in.
DTYPE_BYTES = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0}

#: Fixed per-call overhead (kernel launches, synchronisation) kept unscaled when a measured curve is scaled
#: to another expert shape. 10 µs is what makes the DeepSeek-V3 curve, scaled, best match the Qwen3-235B
#: and Mixtral curves measured on the same H100 (max error 17 %, mean 8 %; 37 % without it).
SCALING_OVERHEAD_S = 10e-6


#: Token counts a curve's points may have: an expert gets at most a step's tokens (prefill chunks are
#: thousands; the agent measures up to 8192). A point at 2^62 tokens is not a measurement, and it
#: flattens the interpolation over every real load into the first point's time.
MAX_CURVE_TOKENS = 1 << 20

#: Seconds one expert's FFN can plausibly take on one GPU, for any token count and shape: values outside
#: are not a slow or a fast GPU but a corrupt profile or a unit mistake (ns or ms written as seconds).
PLAUSIBLE_SECONDS = (1e-12, 1e4)


@dataclass(frozen=True, eq=False)
class GPUCurve:
    """One GPU of an expert-parallel group and its measured expert time curve.

    Attributes:
        id: unique name of the GPU in the fleet (e.g. ``"node-a/0"``).
        node: the Kubernetes node it sits on.
        tokens: [K] float64, strictly increasing token counts > 0, K >= 2.
        seconds: [K] float64, non-decreasing seconds to run ONE expert over ``tokens[k]`` tokens, > 0;
            the last segment must rise.
        uuid: the GPU's UUID when known (written to placement.json), else "".
    """

    id: str
    node: str
    tokens: np.ndarray
    seconds: np.ndarray
    uuid: str = ""

    def __post_init__(self) -> None:
        tokens = as_vector(self.tokens, f"GPU {self.id!r}: tokens")
        seconds = as_vector(self.seconds, f"GPU {self.id!r}: seconds")
        where = f"GPU {self.id!r} curve"
        if not isinstance(self.id, str) or not self.id:
            raise PlacementError("InvalidFleet", "every GPU needs a non-empty string id")
        if not isinstance(self.node, str):
            raise PlacementError("InvalidFleet", f"GPU {self.id!r}: node must be a string")
        if tokens.size == 0 or seconds.size == 0:
            raise PlacementError("InvalidCurve", f"{where} is empty")
        if tokens.shape != seconds.shape:
            raise PlacementError(
                "InvalidCurve", f"{where}: {tokens.size} token points but {seconds.size} seconds"
            )
        if tokens.size < 2:
            raise PlacementError("InvalidCurve", f"{where}: needs at least 2 points to extrapolate")
        if not (np.all(np.isfinite(tokens)) and np.all(np.isfinite(seconds))):
            raise PlacementError("InvalidCurve", f"{where} has NaN or infinite values")
        if tokens[0] <= 0 or np.any(np.diff(tokens) <= 0):
            raise PlacementError("InvalidCurve", f"{where}: tokens must be > 0 and strictly increasing")
        if tokens[-1] > MAX_CURVE_TOKENS:
            raise PlacementError(
                "InvalidCurve",
                f"{where}: a point at {tokens[-1]:.6g} tokens is beyond any step ({MAX_CURVE_TOKENS} at "
                "most); the profile is corrupt",
            )
        if seconds[0] <= 0:
            raise PlacementError("InvalidCurve", f"{where}: seconds must be > 0")
        lo, hi = PLAUSIBLE_SECONDS
        if seconds[0] < lo or seconds[-1] > hi:
            bad_s = seconds[0] if seconds[0] < lo else seconds[-1]
            raise PlacementError(
                "InvalidCurve",
                f"{where}: {bad_s:.3g} s for one expert is absurd (an expert FFN takes between "
                f"{lo:g} s and {hi:g} s on any GPU); the profile is corrupt or in the wrong unit",
            )
        bad = np.flatnonzero(np.diff(seconds) < 0)
        if bad.size:
            k = int(bad[0])
            raise PlacementError(
                "InvalidCurve",
                f"{where} is not monotone: {seconds[k]:.6g} s at {tokens[k]:g} tokens but "
                f"{seconds[k + 1]:.6g} s at {tokens[k + 1]:g} tokens",
            )
        if seconds[-1] <= seconds[-2]:
            raise PlacementError(
                "InvalidCurve",
                f"{where}: the last two points must rise (the curve is extrapolated past them)",
            )
        tokens.setflags(write=False)
        seconds.setflags(write=False)
        object.__setattr__(self, "tokens", tokens)
        object.__setattr__(self, "seconds", seconds)

    def __call__(self, n: np.ndarray | float) -> np.ndarray:
        """t_g(n) for an array of token counts (any shape)."""
        return CurveTable((self,))(np.zeros((), dtype=np.int64), n)


@dataclass(frozen=True, eq=False)
class Fleet:
    """The GPUs of one expert-parallel group, in rank order (rank r = ``gpus[r]``)."""

    gpus: tuple[GPUCurve, ...]
    table: CurveTable = field(init=False, repr=False)

    def __post_init__(self) -> None:
        gpus = tuple(self.gpus)
        if not gpus:
            raise PlacementError("InvalidFleet", "the fleet has no GPUs")
        if not all(isinstance(g, GPUCurve) for g in gpus):
            raise PlacementError("InvalidFleet", "fleet entries must be GPUCurve objects")
        ids = [g.id for g in gpus]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise PlacementError("InvalidFleet", f"duplicate GPU id {dup[0]!r} in the fleet")
        object.__setattr__(self, "gpus", gpus)
        object.__setattr__(self, "table", CurveTable(gpus))

    def __len__(self) -> int:
        return len(self.gpus)

    @property
    def ids(self) -> list[str]:
        return [g.id for g in self.gpus]


class CurveTable:
    """All curves of a fleet on one shared token grid, priced in one vectorised lookup.

    Attributes:
        x: [K] float64, the union of all GPUs' token points, strictly increasing, K >= 2.
        y: [G, K] float64, ``y[g, k] = t_g(x[k])``.
        slope: [G, K-1] float64, ``(y[:, k+1] - y[:, k]) / (x[k+1] - x[k])``; the last column is also the
            extrapolation slope past ``x[-1]``.
        floor: [G] float64, ``t_g(n)`` for small n > 0 (``y[:, 0]``): what any non-empty slot costs at least.
    """

    def __init__(self, gpus: tuple[GPUCurve, ...]) -> None:
        x = np.unique(np.concatenate([g.tokens for g in gpus]))
        y = np.empty((len(gpus), x.size))
        for i, g in enumerate(gpus):
            y[i] = _interp_one(g.tokens, g.seconds, x)
        y = np.maximum.accumulate(y, axis=1)  # exact already; guards against rounding in the resampling
        self.x = x
        self.y = y
        self.slope = np.diff(y, axis=1) / np.diff(x)
        self.floor = y[:, 0].copy()
        for a in (self.x, self.y, self.slope, self.floor):
            a.setflags(write=False)

    @property
    def num_gpus(self) -> int:
        return self.y.shape[0]

    def __call__(self, gpu: np.ndarray | int, n: np.ndarray | float) -> np.ndarray:
        """t_g(n) for broadcastable arrays of GPU indices and token counts.

        Args:
            gpu: int array (any shape) of GPU indices into the fleet.
            n: float array of token counts >= 0, broadcastable with ``gpu``.
        Returns:
            float64 array of the broadcast shape: seconds.
        """
        n = np.asarray(n, dtype=np.float64)
        if np.ndim(gpu) == 0:
            return self._one(int(gpu), n)
        j = np.clip(np.searchsorted(self.x, n, side="right") - 1, 0, self.x.size - 2)
        val = self.y[gpu, j] + (np.maximum(n, self.x[0]) - self.x[j]) * self.slope[gpu, j]
        return np.where(n > 0, val, 0.0)

    def all_gpus(self, n: np.ndarray) -> np.ndarray:
        """t_g(n) for every GPU: n of shape [...] gives [G, ...]."""
        n = np.asarray(n, dtype=np.float64)
        flat = n.reshape(-1)
        # The grid is shared, so one search serves every GPU; past x[-1] the last segment extends.
        j = np.clip(np.searchsorted(self.x, flat, side="right") - 1, 0, self.x.size - 2)
        val = self.y[:, j] + (np.maximum(flat, self.x[0]) - self.x[j]) * self.slope[:, j]
        return np.where(flat > 0, val, 0.0).reshape(self.num_gpus, *n.shape)

    def _one(self, g: int, n: np.ndarray) -> np.ndarray:
        """One GPU's curve at any array of n (np.interp in the grid, flat below x[0] as the model says)."""
        val = np.interp(n, self.x, self.y[g])
        hi = n > self.x[-1]
        if hi.any():
            val = np.where(hi, self.y[g, -1] + (n - self.x[-1]) * self.slope[g, -1], val)
        return np.where(n > 0, val, 0.0)

    def inverse(self, tau: np.ndarray) -> np.ndarray:
        """Most tokens one slot can take within a time, per GPU: sup{n : t_g(n) <= tau}.

        Args:
            tau: [...] float64 seconds.
        Returns:
            [G, ...] float64 tokens (0 where ``tau`` is below the GPU's floor; finite, since curves rise).
        """
        tau = np.asarray(tau, dtype=np.float64)
        out = np.empty((self.num_gpus, *tau.shape))
        for g in range(self.num_gpus):
            # k: last grid point with t_g <= tau. On [x[k], x[k+1]] the curve rises past tau (else k would be
            # larger), and past x[-1] it follows the rising extrapolation line through x[-2], x[-1].
            k = np.searchsorted(self.y[g], tau, side="right") - 1
            kc = np.clip(k, 0, self.x.size - 2)
            with np.errstate(divide="ignore", invalid="ignore"):  # only where k < 0, masked below
                val = self.x[kc] + (tau - self.y[g, kc]) / self.slope[g, kc]
            out[g] = np.where(k < 0, 0.0, np.maximum(val, self.x[0]))
        return out


def _interp_one(tokens: np.ndarray, seconds: np.ndarray, n: np.ndarray) -> np.ndarray:
    """One curve at points n > 0 (flat below its first point, linear past its last)."""
    val = np.interp(n, tokens, seconds)
    last_slope = (seconds[-1] - seconds[-2]) / (tokens[-1] - tokens[-2])
    return np.where(n > tokens[-1], seconds[-1] + (n - tokens[-1]) * last_slope, val)


def as_vector(values: Any, what: str) -> np.ndarray:
    """[K] float64 from a list of numbers (JSON numbers, not strings or booleans), or ``InvalidCurve``."""
    arr = numbers_array(values)
    if arr is None:
        raise PlacementError("InvalidCurve", f"{what} must be a list of numbers")
    if arr.ndim != 1:
        raise PlacementError("InvalidCurve", f"{what} must be a flat list of numbers")
    return arr


def numbers_array(values: Any) -> np.ndarray | None:
    """A float64 array of ``values`` if they are all numbers (ints or floats, any nesting), else None.

    Stricter than ``np.array(values, dtype=float)``, which would also take ``"1.5"`` and ``True``.
    """
    try:
        arr = np.array(values)
    except (TypeError, ValueError):  # ragged nesting
        return None
    if arr.dtype.kind == "O":  # e.g. ints beyond int64, or things that are not numbers at all
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in arr.ravel()):
            return None
    elif arr.dtype.kind not in "iuf" or _has_bool(values):
        return None
    try:
        return arr.astype(np.float64)
    except (TypeError, ValueError, OverflowError):
        return None


def _has_bool(values: Any) -> bool:
    """Whether a (rectangular, already converted) nesting of lists holds a JSON boolean anywhere."""
    if isinstance(values, bool):
        return True
    if isinstance(values, np.ndarray):
        return values.dtype.kind == "b"
    if not isinstance(values, (list, tuple)):
        return False
    if values and isinstance(values[0], (list, tuple, np.ndarray)):
        return any(_has_bool(v) for v in values)
    return any(v.__class__ is bool or v.__class__ is np.bool_ for v in values)


# --------------------------------------------------------------------------------------------------
# Reference data and synthetic curves


@functools.cache
def _reference_data() -> dict[str, Any]:
    text = resources.files("vibe.placement").joinpath("data/h100_expert_ffn.json").read_text()
    return json.loads(text)


def reference_shapes() -> dict[str, tuple[int, int, str]]:
    """The expert shapes measured on the reference H100: name -> (hidden, intermediate, dtype)."""
    steady = _reference_data()["steady"]
    return {k: (v["hiddenSize"], v["intermediateSize"], v["dtype"]) for k, v in sorted(steady.items())}


def reference_curve(
    hidden_size: int = 7168, intermediate_size: int = 2048, dtype: str = "bf16"
) -> tuple[np.ndarray, np.ndarray]:
    """The measured H100 curve for an expert shape, scaled from the nearest measured shape if needed.

    The defaults are DeepSeek-V3's expert (7168 x 2048), measured directly. Measured shapes are returned
    as measured (steady state, at the power cap; see the data file's provenance). Any other shape is
    scaled from the measured shape with the closest weight count: an expert's weight bytes and FLOPs per
    token both grow with ``hidden * intermediate * bytes_per_weight`` (bf16 -> fp8 halves both on an H100),
    so the time above a fixed launch overhead scales by that ratio (``scale_curve``).

    Returns:
        tokens: [K] float64 token counts; seconds: [K] float64 seconds for one expert.
    """
    if dtype not in DTYPE_BYTES:
        raise PlacementError("InvalidCurve", f"unknown dtype {dtype!r} (one of {', '.join(DTYPE_BYTES)})")
    if hidden_size <= 0 or intermediate_size <= 0:
        raise PlacementError("InvalidCurve", "hidden and intermediate sizes must be positive")
    steady = _reference_data()["steady"]
    want = hidden_size * intermediate_size * DTYPE_BYTES[dtype]

    def size(v: dict[str, Any]) -> float:
        return float(v["hiddenSize"] * v["intermediateSize"] * DTYPE_BYTES[v["dtype"]])

    name = min(sorted(steady), key=lambda k: (abs(np.log(size(steady[k]) / want)), k))
    ref = steady[name]
    tokens = np.array(ref["tokens"], dtype=np.float64)
    seconds = np.array(ref["seconds"], dtype=np.float64)
    if (ref["hiddenSize"], ref["intermediateSize"], ref["dtype"]) == (hidden_size, intermediate_size, dtype):
        return tokens, seconds
    return tokens, scale_curve(
        seconds,
        from_shape=(ref["hiddenSize"], ref["intermediateSize"], ref["dtype"]),
        to_shape=(hidden_size, intermediate_size, dtype),
    )


def scale_curve(
    seconds: np.ndarray,
    *,
    from_shape: tuple[int, int, str],
    to_shape: tuple[int, int, str],
    overhead_s: float = SCALING_OVERHEAD_S,
) -> np.ndarray:
    """Scale a measured curve to another expert shape (hidden, intermediate, dtype).

    ``t'(n) = o + (t(n) - o) * r`` with ``r = (h' i' b') / (h i b)``: weight streaming (the flat part) and
    FLOPs (the linear part) both scale with r at a fixed dtype ratio, the launch overhead o does not.
    On the reference H100 this predicts the measured Qwen3-235B and Mixtral curves from DeepSeek-V3's
    within 17 % (mean 8 %): good for a fallback, not for planning against measured GPUs.

    Args:
        seconds: [K] seconds of the measured curve (same token points are kept).
    Returns:
        [K] float64 seconds for the new shape, still non-decreasing.
    """
    (h, i, d), (h2, i2, d2) = from_shape, to_shape
    ratio = (h2 * i2 * DTYPE_BYTES[d2]) / (h * i * DTYPE_BYTES[d])
    seconds = np.asarray(seconds, dtype=np.float64)
    o = min(overhead_s, float(seconds[0]) * 0.5)
    return o + (seconds - o) * ratio


def roofline_curve(
    floor_s: float,
    seconds_per_token: float,
    *,
    sharpness: float = 4.0,
    max_tokens: int = 16384,
) -> tuple[np.ndarray, np.ndarray]:
    """A smooth roofline curve, sampled at powers of two, for fleets given by parameters.

    ``t(n) = (floor^p + (c n)^p)^(1/p)``: flat at ``floor_s`` (weight streaming) for small n, linear with
    ``seconds_per_token`` c for large n, with a rounded knee (p = ``sharpness``; a hard max is p -> inf and
    overstates the knee's sharpness: on the H100 data p ~ 4 fits).

    Returns:
        tokens: [K] float64 (1, 2, 4, ..., max_tokens); seconds: [K] float64.
    """
    if not (
        np.isfinite(floor_s) and floor_s > 0 and np.isfinite(seconds_per_token) and seconds_per_token > 0
    ):
        raise PlacementError("InvalidCurve", "roofline floorSeconds and secondsPerToken must be > 0")
    if not (sharpness >= 1):
        raise PlacementError("InvalidCurve", "roofline sharpness must be >= 1")
    tokens = 2.0 ** np.arange(int(np.log2(max(2, max_tokens))) + 1)
    seconds = (floor_s**sharpness + (seconds_per_token * tokens) ** sharpness) ** (1.0 / sharpness)
    return tokens, seconds
