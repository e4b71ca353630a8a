"""Format ``vibe``: vibe's own ``placement.json``, the canonical record of a placement.

GPUs in rank order (id, node, uuid), per layer ``physicalToLogical`` (slot s of rank r at index r*S+s),
``logicalToPhysical`` (each expert's slots, ascending), ``logicalCount``, the layer's predicted and
lower-bound seconds and per-GPU seconds; totals under ``predicted``, and the baseline it was compared
with, if any. No engine reads it: serving pods use it to check the GPU count and to follow GPUs to
engine ranks (``vibe serving init --follow-gpus``), and people and tools read the figures.

The weighted replica split (``vibe plan --replica-split weighted``, ``spec.placement.replicaSplit``) adds,
compatibly (old readers ignore unknown keys; ``formatVersion`` 1.1 says it is there): ``replicaSplit:
weighted`` at the top and per layer ``replicaWeights``, the share of its expert's tokens each physical slot
serves (an expert's shares sum to 1). A dispatch that can take weights (vibe's own,
``vibe.measure.reference_ep``) reads them from here; a document without them is the even split.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from vibe.api import API_VERSION
from vibe.engines._common import dump, num
from vibe.placement import Placement, read_placement

if TYPE_CHECKING:
    from vibe.placement import Fleet, Result

NAME = "vibe"
KEY = "placement.json"
KIND = "ExpertPlacement"
#: The document's ``formatVersion`` when it carries replica weights (keys added, none changed; a document
#: without the key is 1.0, what every reader before it read).
FORMAT_VERSION_WEIGHTED = "1.1"
#: The document carries replica weights; vibe's own dispatch (``vibe.measure.reference_ep``) runs them.
REPLICA_WEIGHTS = True
DISPATCH_SOURCE = "vibe.measure.reference_ep: EPLayerStack.forward (cumulative shares per rank)"


def write(result: Result, fleet: Fleet, baseline: Result | None = None) -> bytes:
    """The canonical placement document (see the module docstring)."""
    from vibe.placement import PlacementError

    pl = result.placement
    if pl.num_gpus != len(fleet):
        raise PlacementError(
            "ShapeMismatch", f"the placement spans {pl.num_gpus} GPUs, the fleet {len(fleet)}"
        )
    log2phy = pl.log2phy()
    logcnt = pl.logcnt()
    layers = []
    for layer in range(pl.num_layers):
        entry: dict[str, Any] = {
            "layer": layer,
            "physicalToLogical": pl.phy2log[layer].tolist(),
            "logicalToPhysical": [
                row[: int(c)].tolist() for row, c in zip(log2phy[layer], logcnt[layer], strict=True)
            ],
            "logicalCount": logcnt[layer].tolist(),
            "predictedSeconds": num(result.layer_times_s[layer]),
            "lowerBoundSeconds": num(result.layer_bounds_s[layer]),
            "gpuSeconds": [num(v) for v in result.gpu_times_s[layer]],
        }
        if pl.weights is not None:
            entry["replicaWeights"] = [round(float(v), 9) for v in pl.weights[layer]]
        layers.append(entry)
    doc: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        **(
            {"formatVersion": FORMAT_VERSION_WEIGHTED, "replicaSplit": "weighted"}
            if pl.weights is not None
            else {}
        ),
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
            "stepTimeSeconds": num(result.step_time_s),
            "imbalance": num(result.imbalance),
            "lowerBoundSeconds": num(result.lower_bound_s),
            "gapToBound": num(result.gap),
            "moves": int(result.moves),
            "movedExperts": int(result.moved_experts),
            "converged": bool(result.converged),
        },
    }
    if baseline is not None:
        doc["baseline"] = {
            "policy": baseline.policy,
            "stepTimeSeconds": num(baseline.step_time_s),
            "imbalance": num(baseline.imbalance),
            "gain": num(baseline.step_time_s / result.step_time_s - 1.0) if result.step_time_s > 0 else 0.0,
        }
    return dump(doc)


def parse(text: str) -> Any:
    """The document from the ConfigMap key's text (``ValueError`` when it is not JSON)."""
    return json.loads(text)


def read(doc: Any, *, slots_per_gpu: int | None, num_experts: int | None) -> Placement:
    """The placement a ``placement.json`` document holds."""
    return read_placement(doc, slots_per_gpu=slots_per_gpu, num_experts=num_experts)
