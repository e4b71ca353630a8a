"""The engine as launched: its expert-parallel settings, and the model layout read from ``config.json``.

Role: the launch parameters every engine's fit check compares a placement against (``vibe serving init
--ep-size ... --model-config``). Pure: no engine is imported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vibe.engines.errors import EngineError


@dataclass(frozen=True)
class EngineSettings:
    """The engine's expert-parallel settings, as launched.

    Attributes:
        ep_size: expert-parallel size (SGLang ``--ep-size``, TensorRT-LLM ``--ep_size``).
        redundant_experts: physical slots beyond one per expert (SGLang ``--ep-num-redundant-experts``;
            TensorRT-LLM ``num_slots - num_experts``).
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
            raise EngineError("InvalidArgument", f"EP size must be >= 1, got {self.ep_size}")
        if self.redundant_experts < 0:
            raise EngineError(
                "InvalidArgument", f"redundant experts must be >= 0, got {self.redundant_experts}"
            )
        if self.first_moe_layer < 0:
            raise EngineError("InvalidArgument", f"first MoE layer must be >= 0, got {self.first_moe_layer}")
        if self.num_layers is not None and self.num_layers <= self.first_moe_layer:
            raise EngineError(
                "InvalidArgument",
                f"engine has {self.num_layers} layers but the first MoE layer is {self.first_moe_layer}",
            )


def model_layout(config_path: str | Path) -> dict[str, Any]:
    """Layers, experts and first MoE layer from a Hugging Face ``config.json``.

    Returns:
        ``{"num_layers", "num_experts", "first_moe_layer"}``, plus ``"architecture"`` (str) when the
        config names one.

    Raises:
        EngineError(InvalidArgument): unreadable config, or a layout with MoE layers interleaved with
            dense ones (``moe_layer_freq`` > 1, ``mlp_only_layers``), which a leading pad cannot express.
    """
    try:
        cfg = json.loads(Path(config_path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise EngineError("InvalidArgument", f"cannot read model config {config_path}: {e}") from None
    archs = cfg.get("architectures")
    architecture = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None
    if isinstance(cfg.get("text_config"), dict):  # multimodal wrappers keep the LM's config inside
        cfg = cfg["text_config"]
    layers = cfg.get("num_hidden_layers")
    experts = cfg.get("n_routed_experts", cfg.get("num_experts", cfg.get("num_local_experts")))
    if not isinstance(layers, int) or not isinstance(experts, int):
        raise EngineError(
            "InvalidArgument",
            f"{config_path}: needs integer num_hidden_layers and n_routed_experts/num_experts",
        )
    if (
        cfg.get("moe_layer_freq", 1) != 1
        or cfg.get("decoder_sparse_step", 1) != 1
        or cfg.get("mlp_only_layers")
    ):
        raise EngineError(
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
