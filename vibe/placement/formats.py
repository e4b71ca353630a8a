"""Writing placements: our canonical placement.json, SGLang's expert-location file and EPLB's arrays.

Role: the operator writes these bytes into the ``<name>-placement`` ConfigMap and the CLI into files;
serving pods read them. Bytes are deterministic for the same inputs: sorted keys, compact separators,
floats rounded to 9 significant digits, no timestamps and no solve times, a trailing newline; so a
content hash tells whether anything changed.

* ``placement.json`` (canonical): GPUs in rank order (id, node, uuid), per layer ``physicalToLogical``
  (slot s of rank r at index r*S+s), ``logicalToPhysical`` (each expert's slots, ascending),
  ``logicalCount``, the layer's predicted and lower-bound seconds and per-GPU seconds; totals under
  ``predicted``, and the baseline it was compared with, if any.
* SGLang ``--init-expert-location`` file: ``{"physical_to_logical_map": [[...]]}`` only: SGLang passes
  the file's keys as keyword arguments, so any extra key would be rejected.
* DeepSeek EPLB: ``phy2log`` [L, P], ``log2phy`` [L, E, P-E+1] padded with -1, ``logcnt`` [L, E].
"""

from __future__ import annotations

import json
from typing import Any, Literal, get_args

from vibe.api import API_VERSION, KEY_EPLB, KEY_PLACEMENT, KEY_SGLANG
from vibe.placement.curves import Fleet
from vibe.placement.engine import Result
from vibe.placement.errors import PlacementError

KIND = "ExpertPlacement"


def _num(x: float) -> float:
    """A float rounded to 9 significant digits (stable text across platforms' last-bit noise)."""
    return float(f"{float(x):.9g}")


def _dump(obj: Any) -> bytes:
    return (json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n").encode()


def to_placement_json(result: Result, fleet: Fleet, *, baseline: Result | None = None) -> bytes:
    """The canonical placement document (see the module docstring)."""
    pl = result.placement
    if pl.num_gpus != len(fleet):
        raise PlacementError(
            "ShapeMismatch", f"the placement spans {pl.num_gpus} GPUs, the fleet {len(fleet)}"
        )
    log2phy = pl.log2phy()
    logcnt = pl.logcnt()
    layers = []
    for layer in range(pl.num_layers):
        layers.append(
            {
                "layer": layer,
                "physicalToLogical": pl.phy2log[layer].tolist(),
                "logicalToPhysical": [
                    row[: int(c)].tolist() for row, c in zip(log2phy[layer], logcnt[layer], strict=True)
                ],
                "logicalCount": logcnt[layer].tolist(),
                "predictedSeconds": _num(result.layer_times_s[layer]),
                "lowerBoundSeconds": _num(result.layer_bounds_s[layer]),
                "gpuSeconds": [_num(v) for v in result.gpu_times_s[layer]],
            }
        )
    doc: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "policy": result.policy,
        "numLayers": pl.num_layers,
        "numLogicalExperts": pl.num_experts,
        "numGPUs": pl.num_gpus,
        "slotsPerGPU": pl.slots_per_gpu,
        "numPhysicalExperts": pl.num_slots,
        "gpus": [
            {"rank": r, "id": g.id, "node": g.node, **({"uuid": g.uuid} if g.uuid else {})}
            for r, g in enumerate(fleet.gpus)
        ],
        "layers": layers,
        "predicted": {
            "stepTimeSeconds": _num(result.step_time_s),
            "imbalance": _num(result.imbalance),
            "lowerBoundSeconds": _num(result.lower_bound_s),
            "gapToBound": _num(result.gap),
            "moves": int(result.moves),
            "movedExperts": int(result.moved_experts),
            "converged": bool(result.converged),
        },
    }
    if baseline is not None:
        doc["baseline"] = {
            "policy": baseline.policy,
            "stepTimeSeconds": _num(baseline.step_time_s),
            "imbalance": _num(baseline.imbalance),
            "gain": _num(baseline.step_time_s / result.step_time_s - 1.0) if result.step_time_s > 0 else 0.0,
        }
    return _dump(doc)


def to_sglang(result: Result) -> bytes:
    """SGLang's ``--init-expert-location`` JSON: ``{"physical_to_logical_map": [[...] per layer]}``."""
    return _dump({"physical_to_logical_map": result.placement.phy2log.tolist()})


def to_eplb(result: Result) -> bytes:
    """DeepSeek EPLB's arrays: ``phy2log`` [L, P], ``log2phy`` [L, E, P-E+1] (-1 pads), ``logcnt`` [L, E]."""
    pl = result.placement
    return _dump(
        {"phy2log": pl.phy2log.tolist(), "log2phy": pl.log2phy().tolist(), "logcnt": pl.logcnt().tolist()}
    )


#: The name of an output format (``vibe plan --format``).
FormatName = Literal["placement", "sglang", "eplb"]

#: Output format -> the file name (and placement ConfigMap key) it is written under.
FORMATS = {"placement": KEY_PLACEMENT, "sglang": KEY_SGLANG, "eplb": KEY_EPLB}
assert tuple(FORMATS) == get_args(FormatName), "FORMATS and FormatName must name the same formats"


def render(fmt: str, result: Result, fleet: Fleet, *, baseline: Result | None = None) -> bytes:
    """Bytes of one format by name (``placement``, ``sglang``, ``eplb``)."""
    if fmt == "placement":
        return to_placement_json(result, fleet, baseline=baseline)
    if fmt == "sglang":
        return to_sglang(result)
    if fmt == "eplb":
        return to_eplb(result)
    raise PlacementError("UnknownFormat", f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
