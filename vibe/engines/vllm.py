"""Format ``vllm``: the map vLLM's EPLB applies live, through vibe's EPLB policy plugin, and its load window.

vLLM (the release in ``VLLM_VERSIONS``; CI runs its EPLB code path, ``tests/serving/
test_serving_vllm_plugin.py``) has no flag to load a placement. Its EPLB (``--enable-eplb``) asks the
policy registered in ``vllm.distributed.eplb.policy.EPLB_POLICIES`` for ``physical_to_logical_map
[num_moe_layers, num_physical_experts]`` at each rebalance (``EplbState.rearrange``) and moves the expert
weights itself; ``vibe.serving.vllm_plugin`` is that policy (``vibe.serving.vllm_eplb`` decides). Facts
from vLLM 0.33.0's source:

* the map covers the MoE layers only (``EplbState.add_model``: ``model.num_moe_layers`` rows), and
  ``num_physical_experts = n_routed_experts + --eplb-config num_redundant_experts``; physical slot p lives
  on EP rank ``p // (num_physical_experts / ep_size)`` (``FusedMoE``'s linear expert layout);
* an expert's tokens go to its replicas by a hash of the token index modulo the replica count
  (``fused_moe/router/base_router.py``, ``_eplb_map_and_record_i32_kernel``): an even split;
* the load window ``rebalance_experts`` receives is ``[num_moe_layers, num_logical_experts]`` token
  counts summed over ``--eplb-config window_size`` steps and all-reduced over the EP ranks; the plugin
  writes it (``window_document``) and ``loads`` reads it back as tokens per step.

The ConfigMap key (``KEY``) holds ``{"physical_to_logical_map": [[...]]}`` exactly as ``rebalance_experts``
returns it; the plugin reads it (else ``placement.json``, else ``eplb.json``) from the mounted ConfigMap.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vibe.engines._common import check_rows, check_slots, dump, int_matrix, permute_rows
from vibe.engines.errors import EngineError
from vibe.engines.loads import Loads, to_loads
from vibe.engines.settings import EngineSettings
from vibe.placement import Placement, read_placement

if TYPE_CHECKING:
    from vibe.placement import Fleet, Result

NAME = "vllm"
KEY = "vllm-eplb.json"
DISPATCH = "even"
#: No per-slot weights: ``eplb_map_to_physical_and_record`` (``vllm/model_executor/layers/fused_moe/``,
#: the router's ``_apply_eplb_mapping``) maps each (token, k) to replica ``position % replica_count`` of
#: ``logical_to_physical_map``: an even split, with no input for weights.
REPLICA_WEIGHTS = False
DISPATCH_SOURCE = (
    "vllm/model_executor/layers/fused_moe: eplb_map_to_physical_and_record "
    "(replica = flat position % logical_replica_count)"
)
#: The vLLM releases whose EPLB code path the plugin is tested against (CI installs the first:
#: ``hack/vllm-requirements.txt``); the plugin refuses others at start.
VLLM_VERSIONS: tuple[str, ...] = ("0.33.0",)
#: The load ConfigMap's ``vibe.dev/loads-source`` for loads from vLLM's EPLB window.
LOADS_SOURCE = "vllm-eplb-window"
#: vLLM 0.33.0's ``EPLBConfig.window_size`` default.
DEFAULT_WINDOW_SIZE = 1000
MAP = "physical_to_logical_map"


def write(result: Result, fleet: Fleet, baseline: Result | None = None) -> bytes:
    """``{"physical_to_logical_map": [L][P]}`` over the MoE layers, slots rank-major."""
    return dump({MAP: result.placement.phy2log.tolist()})


def parse(text: str) -> Any:
    """The document from the ConfigMap key's text (``ValueError`` when it is not JSON)."""
    return json.loads(text)


def read(doc: Any, *, slots_per_gpu: int | None, num_experts: int | None) -> Placement:
    """The placement a vLLM map holds."""
    return read_placement(doc, slots_per_gpu=slots_per_gpu, num_experts=num_experts)


def fit(doc: Any, settings: EngineSettings, where: str = KEY) -> dict[str, Any]:
    """The map for vLLM as launched (MoE layers, ``num_redundant_experts``, EP size), or an error."""
    if not isinstance(doc, dict) or MAP not in doc:
        raise EngineError("PlacementMismatch", f"{where}: no {MAP}")
    rows = int_matrix(doc[MAP], MAP, where)
    logical = check_slots(len(rows[0]), settings, where, "--eplb-config num_redundant_experts")
    check_rows(rows, logical, where)
    if settings.num_layers is not None and len(rows) != settings.num_layers - settings.first_moe_layer:
        raise EngineError(
            "PlacementMismatch",
            f"{where}: the map has {len(rows)} layers but vLLM's model has"
            f" {settings.num_layers - settings.first_moe_layer} MoE layers",
        )
    return {MAP: rows}


def width(doc: dict[str, Any]) -> int:
    """Physical slots per layer of a fitted document."""
    return len(doc[MAP][0])


def permute(doc: dict[str, Any], perm: list[int]) -> dict[str, Any]:
    """Apply ``perm`` to every layer's slots."""
    return {MAP: permute_rows(doc[MAP], perm)}


def files(doc: dict[str, Any], path: Path, settings: EngineSettings) -> dict[Path, bytes]:
    """The fitted map as JSON (the plugin reads the ConfigMap itself; this is for inspection)."""
    return {path: dump(doc)}


def window_document(weight: Any, steps: int) -> str | None:
    """The file the plugin writes for one load window; None for an empty one (vLLM's profile run).

    Args:
        weight: ``[num_moe_layers, num_logical_experts]`` token counts summed over ``steps`` steps.
    """
    counts = np.asarray(weight, dtype=np.float64)
    if counts.ndim != 2 or counts.size == 0 or not np.all(np.isfinite(counts)) or counts.min() < 0:
        raise EngineError("InvalidDump", f"vLLM's load window has shape {counts.shape} or bad counts")
    if steps < 1:
        raise EngineError("InvalidArgument", f"the EPLB window must be >= 1 step, got {steps}")
    if not (counts.sum(axis=1) > 0).all():
        return None
    rows = [[int(x) for x in row] for row in counts.round()]
    return json.dumps({"logical_count": rows, "windowSteps": steps}, sort_keys=True, separators=(",", ":"))


def loads(
    path: Path,
    *,
    steps: int | None = None,
    first_moe_layer: int | None = None,
    moe_layers: int | None = None,
    assignment: Path | None = None,
) -> Loads:
    """Tokens per step per MoE layer and expert from a window file the plugin wrote.

    Args:
        steps: steps to divide by; default: the window's ``windowSteps``.
        first_moe_layer, moe_layers: refused (vLLM's window has MoE layers only).
        assignment: refused (the window is per logical expert already).
    """
    if first_moe_layer is not None or moe_layers is not None or assignment is not None:
        raise EngineError(
            "InvalidArgument",
            "vLLM's EPLB window holds MoE layers and logical experts only: drop the layer/assignment options",
        )
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise EngineError("InvalidDump", f"cannot read {path}: {e}") from None
    if not isinstance(doc, dict) or "logical_count" not in doc:
        raise EngineError("InvalidDump", f"{path}: not a vLLM EPLB window (no logical_count)")
    window = doc.get("windowSteps")
    if steps is None and not (isinstance(window, int) and not isinstance(window, bool) and window >= 1):
        raise EngineError("InvalidDump", f"{path}: windowSteps must be an integer >= 1, got {window!r}")
    try:
        count = np.asarray(doc["logical_count"], dtype=np.float64)
    except (TypeError, ValueError):
        raise EngineError("InvalidDump", f"{path}: logical_count is not a numeric array") from None
    if count.ndim != 2 or count.size == 0 or not np.all(np.isfinite(count)) or count.min() < 0:
        raise EngineError("InvalidDump", f"{path}: logical_count must be [layers][experts] counts >= 0")
    return to_loads(count, steps if steps is not None else int(str(window)), first_moe_layer=0)
