"""Engine statistics -> vibe's loads: tokens per forward step, per MoE layer and expert.

Role: what every engine's loads reader ends in (``Engine.loads``): ``to_loads`` normalises a count
(``[passes, layers, experts]`` or ``[layers, experts]``) to tokens per step over the MoE layers only --
sum over passes / number of passes that recorded anything (a pass with no tokens is an idle DP step or
an unfilled buffer row, neither of which is load), then drop the dense layers -- and ``loads_document``
gives the bytes of the load ConfigMap (``{"loads": [[...]]}``) the MoEDeployment reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from vibe.engines.errors import EngineError


@dataclass(frozen=True)
class Loads:
    """Tokens per forward step, per MoE layer and expert.

    Attributes:
        loads: [moe_layers, experts] float64.
        passes: forward passes the counts were divided by (None: raw counts, divided by nothing).
        dropped_layers: leading layers dropped as dense.
    """

    loads: np.ndarray
    passes: int | None
    dropped_layers: int


def to_loads(
    count: np.ndarray,
    steps: int | None = None,
    first_moe_layer: int | None = None,
    moe_layers: int | None = None,
) -> Loads:
    """Normalise a ``logical_count`` to tokens per step over the MoE layers.

    Args:
        count: ``[passes, layers, experts]`` or ``[layers, experts]``.
        steps: forward passes to divide by; default: the passes that recorded any token (3-D input),
            or none (2-D input: the counts stay raw totals).
        first_moe_layer: drop this many leading layers (``first_k_dense_replace``);
        moe_layers: or keep this many trailing layers; with neither, leading all-zero layers are dropped.
    """
    if steps is not None and steps < 1:
        raise EngineError("InvalidArgument", f"--steps must be >= 1, got {steps}")
    if count.ndim == 3:
        active = int(np.count_nonzero(count.reshape(count.shape[0], -1).sum(axis=1)))
        if active == 0:
            raise EngineError(
                "InvalidDump", "the dump recorded no forward pass with tokens (was the engine idle?)"
            )
        total = count.sum(axis=0)
        passes: int | None = steps or active
    else:
        total = count
        passes = steps
    layers = total.shape[0]
    if first_moe_layer is not None and moe_layers is not None:
        raise EngineError("InvalidArgument", "give --first-moe-layer or --moe-layers, not both")
    if first_moe_layer is not None:
        drop = first_moe_layer
    elif moe_layers is not None:
        drop = layers - moe_layers
    else:
        per_layer = total.sum(axis=1)
        nonzero = np.flatnonzero(per_layer)
        if nonzero.size == 0:
            raise EngineError("InvalidDump", "every layer of the dump is zero")
        drop = int(nonzero[0])
    if drop < 0 or drop >= layers:
        raise EngineError(
            "InvalidArgument", f"the dump has {layers} layers; cannot drop {drop} leading dense layers"
        )
    moe = total[drop:]
    empty = np.flatnonzero(moe.sum(axis=1) == 0)
    if empty.size:
        raise EngineError(
            "InvalidDump",
            f"MoE layer {int(empty[0]) + drop} of the dump has no tokens; is the dense-layer count right?",
        )
    return Loads(moe / (passes or 1), passes, drop)


def loads_document(loads: Loads, decimals: int = 3) -> str:
    """``{"loads": [[...]]}``, deterministic bytes (sorted keys, fixed rounding)."""
    rows = [[round(float(x), decimals) for x in row] for row in loads.loads]
    return json.dumps({"loads": rows}, sort_keys=True, separators=(",", ":"))
