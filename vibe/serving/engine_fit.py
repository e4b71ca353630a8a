"""Check a placement against an engine's settings and shape it into the engine's own file.

The operator already wrote the engine formats into the ConfigMap (``vibe.placement``'s writers:
``sglang-expert-location.json``, ``eplb.json``); this module does not write them again. It answers the
question only the serving pod can answer: *does this placement fit the engine as launched?* An engine
started with a placement of the wrong shape either refuses to start deep inside its model loader or,
worse, starts and routes tokens to the wrong experts. So every mismatch fails here, before the engine
starts, with one line naming both numbers.

SGLang (``python/sglang/srt/eplb/expert_location.py`` in sgl-project/sglang):

* ``--init-expert-location FILE.json`` is read with ``json.loads`` and, when it has the key
  ``physical_to_logical_map``, passed as ``ExpertLocationMetadata.init_by_mapping(model_config, **data,
  moe_ep_rank=...)`` -- so the file must hold *that one key only* (any other key is a TypeError); CI
  feeds ``fit_sglang``'s output through that loader of the pinned SGLang;
* it is applied only for architectures whose model class has ``get_model_config_for_expert_location``
  (``vibe.serving.sglang``): for others SGLang ignores the file, so ``fit_sglang`` refuses them;
* the map is ``[num_layers, num_physical_experts]`` where ``num_layers`` is the model's
  ``num_hidden_layers`` (61 for DeepSeek-V3, dense layers included: the model's
  ``get_model_config_for_expert_location``) and ``num_physical_experts = n_routed_experts +
  --ep-num-redundant-experts``, which must divide by the EP size (``_init_common`` asserts it);
* physical slot p lives on EP rank ``p // (num_physical_experts / ep_size)``.

A vibe placement covers only the MoE layers (``spec.model.layers``, 58 for DeepSeek-V3). When the engine
counts dense layers too, ``fit_sglang`` prepends the first ``first_k_dense_replace`` rows with the
trivial map (SGLang never reads them: those layers have no routed experts).

DeepSeek EPLB tensors (``eplb.json``): ``phy2log [L, P]``, ``log2phy [L, E, R]`` (-1 padded), ``logcnt
[L, E]``, over MoE layers only, as ``rebalance_experts`` returns them; ``fit_eplb`` checks the shapes
against the same settings and can save them as a torch ``.pt`` for engines that load tensors.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vibe.serving.errors import ServingError
from vibe.serving.sglang import SGLANG_VERSION, check_architecture

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineSettings:
    """The engine's expert-parallel settings, as launched.

    Attributes:
        ep_size: expert-parallel size (SGLang: ``--ep-size``; equals ``--tp-size`` with DeepEP).
        redundant_experts: SGLang's ``--ep-num-redundant-experts`` (physical slots beyond one per expert).
        num_experts: logical routed experts (``n_routed_experts``), or None when unknown.
        num_layers: rows the engine expects (SGLang: ``num_hidden_layers``), or None when unknown.
        first_moe_layer: dense layers before the first MoE layer (``first_k_dense_replace``).
        architecture: the model's Hugging Face architecture (``config.json`` ``architectures[0]``), or
            None when unknown.
    """

    ep_size: int
    redundant_experts: int = 0
    num_experts: int | None = None
    num_layers: int | None = None
    first_moe_layer: int = 0
    architecture: str | None = None

    def __post_init__(self) -> None:
        if self.ep_size < 1:
            raise ServingError("InvalidArgument", f"EP size must be >= 1, got {self.ep_size}")
        if self.redundant_experts < 0:
            raise ServingError(
                "InvalidArgument", f"redundant experts must be >= 0, got {self.redundant_experts}"
            )
        if self.first_moe_layer < 0:
            raise ServingError("InvalidArgument", f"first MoE layer must be >= 0, got {self.first_moe_layer}")
        if self.num_layers is not None and self.num_layers <= self.first_moe_layer:
            raise ServingError(
                "InvalidArgument",
                f"engine has {self.num_layers} layers but the first MoE layer is {self.first_moe_layer}",
            )


def model_layout(config_path: str | Path) -> dict[str, Any]:
    """Layers, experts and first MoE layer from a Hugging Face ``config.json``.

    Returns:
        ``{"num_layers", "num_experts", "first_moe_layer"}``, plus ``"architecture"`` (str) when the
        config names one.

    Raises:
        ServingError(InvalidArgument): unreadable config, or a layout with MoE layers interleaved with
            dense ones (``moe_layer_freq`` > 1, ``mlp_only_layers``), which a leading pad cannot express.
    """
    try:
        cfg = json.loads(Path(config_path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ServingError("InvalidArgument", f"cannot read model config {config_path}: {e}") from None
    archs = cfg.get("architectures")
    architecture = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None
    if isinstance(cfg.get("text_config"), dict):  # multimodal wrappers keep the LM's config inside
        cfg = cfg["text_config"]
    layers = cfg.get("num_hidden_layers")
    experts = cfg.get("n_routed_experts", cfg.get("num_experts", cfg.get("num_local_experts")))
    if not isinstance(layers, int) or not isinstance(experts, int):
        raise ServingError(
            "InvalidArgument",
            f"{config_path}: needs integer num_hidden_layers and n_routed_experts/num_experts",
        )
    if (
        cfg.get("moe_layer_freq", 1) != 1
        or cfg.get("decoder_sparse_step", 1) != 1
        or cfg.get("mlp_only_layers")
    ):
        raise ServingError(
            "InvalidArgument",
            f"{config_path}: MoE layers interleave with dense ones; pass --num-layers/--first-moe-layer"
            " only if the placement already covers every engine layer",
        )
    layout: dict[str, Any] = {
        "num_layers": layers,
        "num_experts": experts,
        "first_moe_layer": int(cfg.get("first_k_dense_replace", 0)),
    }
    if architecture is not None:
        layout["architecture"] = architecture
    return layout


def _int_matrix(value: Any, name: str, where: str) -> list[list[int]]:
    if not isinstance(value, list) or not value or not all(isinstance(r, list) and r for r in value):
        raise ServingError("PlacementMismatch", f"{where}: {name} must be a non-empty [layers][slots] list")
    width = len(value[0])
    for i, row in enumerate(value):
        if len(row) != width:
            raise ServingError(
                "PlacementMismatch", f"{where}: {name} row {i} has {len(row)} entries, row 0 {width}"
            )
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in row):
            raise ServingError("PlacementMismatch", f"{where}: {name} row {i} holds a non-integer")
    return value


def _check_slots(physical: int, settings: EngineSettings, where: str) -> int:
    """Check the physical slot count against the engine; return the number of logical experts."""
    logical = physical - settings.redundant_experts
    if settings.num_experts is not None and physical != settings.num_experts + settings.redundant_experts:
        raise ServingError(
            "PlacementMismatch",
            f"{where}: placement has {physical} physical slots per layer but the engine has"
            f" {settings.num_experts} experts + {settings.redundant_experts} redundant ="
            f" {settings.num_experts + settings.redundant_experts}; set --ep-num-redundant-experts"
            f" {physical - settings.num_experts} or re-place with slotsPerGPU*count ="
            f" {settings.num_experts + settings.redundant_experts}",
        )
    if logical < 1:
        raise ServingError(
            "PlacementMismatch",
            f"{where}: {physical} physical slots cannot hold {settings.redundant_experts} redundant experts",
        )
    if physical % settings.ep_size:
        raise ServingError(
            "PlacementMismatch",
            f"{where}: {physical} physical slots do not split over EP size {settings.ep_size}"
            f" (placement is for another GPU count)",
        )
    return logical


def _check_rows(rows: list[list[int]], logical: int, where: str, first_layer: int = 0) -> None:
    for i, row in enumerate(rows):
        bad = [x for x in row if x < 0 or x >= logical]
        if bad:
            raise ServingError(
                "PlacementMismatch",
                f"{where}: layer {i + first_layer} names expert {bad[0]}, outside 0..{logical - 1}",
            )
        missing = set(range(logical)).difference(row)
        if missing:
            raise ServingError(
                "PlacementMismatch",
                f"{where}: layer {i + first_layer} leaves expert {min(missing)} without a slot",
            )


def fit_sglang(doc: Any, settings: EngineSettings, where: str = "sglang-expert-location.json") -> dict:
    """The ``--init-expert-location`` document for this engine, or a clear error.

    Args:
        doc: the parsed ``sglang-expert-location.json`` (``{"physical_to_logical_map": [[...]]}``; other
            keys are dropped, SGLang would reject them).
        settings: the engine as launched.

    Returns:
        ``{"physical_to_logical_map": [num_layers][num_physical]}``, padded with trivial dense-layer rows
        when the placement covers MoE layers only.
    """
    if settings.architecture is None:
        log.warning(
            "%s: model architecture unknown (no --model-config/--architecture): SGLang %s applies the"
            " file only for models with an expert-location hook (vibe.serving.sglang)",
            where,
            SGLANG_VERSION,
        )
    check_architecture(settings.architecture)
    if not isinstance(doc, dict) or "physical_to_logical_map" not in doc:
        raise ServingError("PlacementMismatch", f"{where}: no physical_to_logical_map")
    rows = _int_matrix(doc["physical_to_logical_map"], "physical_to_logical_map", where)
    physical = len(rows[0])
    logical = _check_slots(physical, settings, where)
    if settings.num_layers is None:
        log.warning(
            "%s: engine layer count unknown (no --model-config/--num-layers); passing %d rows as they are",
            where,
            len(rows),
        )
        _check_rows(rows, logical, where)
        return {"physical_to_logical_map": rows}
    moe_layers = settings.num_layers - settings.first_moe_layer
    if len(rows) == settings.num_layers:
        pad: list[list[int]] = []
        _check_rows(rows[settings.first_moe_layer :], logical, where, settings.first_moe_layer)
    elif len(rows) == moe_layers:
        _check_rows(rows, logical, where, settings.first_moe_layer)
        trivial = [p % logical for p in range(physical)]
        pad = [list(trivial) for _ in range(settings.first_moe_layer)]
    else:
        raise ServingError(
            "PlacementMismatch",
            f"{where}: placement has {len(rows)} layers but the engine has {settings.num_layers}"
            f" ({moe_layers} MoE layers after {settings.first_moe_layer} dense ones)",
        )
    return {"physical_to_logical_map": pad + rows}


def fit_eplb(doc: Any, settings: EngineSettings, where: str = "eplb.json") -> dict:
    """Check DeepSeek-EPLB-shaped tensors (``phy2log``, ``log2phy``, ``logcnt``) against the engine.

    Returns:
        The three arrays (as lists), unchanged; MoE layers only, as EPLB produces them.
    """
    if not isinstance(doc, dict) or "phy2log" not in doc:
        raise ServingError("PlacementMismatch", f"{where}: no phy2log")
    phy2log = _int_matrix(doc["phy2log"], "phy2log", where)
    layers, physical = len(phy2log), len(phy2log[0])
    logical = _check_slots(physical, settings, where)
    _check_rows(phy2log, logical, where)
    moe_layers = None if settings.num_layers is None else settings.num_layers - settings.first_moe_layer
    if moe_layers is not None and layers != moe_layers:
        raise ServingError(
            "PlacementMismatch",
            f"{where}: phy2log has {layers} layers but the engine has {moe_layers} MoE layers",
        )
    out: dict[str, Any] = {"phy2log": phy2log}
    if "logcnt" in doc:
        logcnt = _int_matrix(doc["logcnt"], "logcnt", where)
        if len(logcnt) != layers or len(logcnt[0]) != logical:
            raise ServingError(
                "PlacementMismatch",
                f"{where}: logcnt is {len(logcnt)}x{len(logcnt[0])}, expected {layers}x{logical}",
            )
        for i, (cnt, row) in enumerate(zip(logcnt, phy2log, strict=True)):
            if any(cnt[e] != row.count(e) for e in range(logical)):
                raise ServingError(
                    "PlacementMismatch", f"{where}: logcnt disagrees with phy2log in layer {i}"
                )
        out["logcnt"] = logcnt
    if "log2phy" in doc:
        log2phy = doc["log2phy"]
        if not isinstance(log2phy, list) or len(log2phy) != layers:
            raise ServingError("PlacementMismatch", f"{where}: log2phy must have {layers} layers")
        for i, (per_layer, row) in enumerate(zip(log2phy, phy2log, strict=True)):
            if not isinstance(per_layer, list) or len(per_layer) != logical:
                raise ServingError(
                    "PlacementMismatch", f"{where}: log2phy layer {i} must list {logical} experts"
                )
            for e, slots in enumerate(per_layer):
                real = sorted(s for s in slots if s != -1)
                if real != [p for p, x in enumerate(row) if x == e]:
                    raise ServingError(
                        "PlacementMismatch",
                        f"{where}: log2phy disagrees with phy2log (layer {i}, expert {e})",
                    )
        out["log2phy"] = log2phy
    return out


def check_gpu_count(placement_doc: Any, settings: EngineSettings, where: str = "placement.json") -> None:
    """If the canonical placement lists its GPUs, their number must be the engine's EP size."""
    if isinstance(placement_doc, dict) and isinstance(placement_doc.get("gpus"), list):
        n = len(placement_doc["gpus"])
        if n != settings.ep_size:
            raise ServingError(
                "PlacementMismatch",
                f"{where}: placement is for {n} GPUs but the engine's EP size is {settings.ep_size}",
            )
