"""Format ``sglang``: SGLang's ``--init-expert-location`` file, its fit check, and its recorder's dumps.

What the pinned SGLang release (``SGLANG_VERSION``) does with it, read from its source
(``python/sglang/srt/eplb/expert_location.py`` in sgl-project/sglang; CI feeds ``fit``'s output through
that loader, ``tests/serving/test_serving_sglang_loader.py``):

* ``--init-expert-location FILE.json`` is read with ``json.loads`` and, when it has the key
  ``physical_to_logical_map``, passed as ``ExpertLocationMetadata.init_by_mapping(model_config, **data,
  moe_ep_rank=...)`` -- so the file holds *that one key only* (any other key is a TypeError);
* the map is ``[num_layers, num_physical_experts]`` where ``num_layers`` is the model's
  ``num_hidden_layers`` (61 for DeepSeek-V3, dense layers included) and ``num_physical_experts =
  n_routed_experts + --ep-num-redundant-experts``, which must divide by the EP size (``_init_common``);
  physical slot p lives on EP rank ``p // (num_physical_experts / ep_size)``. A vibe placement covers
  the MoE layers only: ``fit`` prepends the first ``first_k_dense_replace`` rows with the trivial map
  (SGLang never reads them);
* it applies the file only when the model class serving an architecture implements
  ``get_model_config_for_expert_location`` (``ModelConfigForExpertLocation.from_model_config`` returns
  None otherwise and the engine silently starts with its trivial layout; its expert-distribution
  recorder asserts for the same models). ``EXPERT_LOCATION_ARCHITECTURES`` lists the Hugging Face
  architectures whose SGLang model class has the hook, inheritance followed, as
  ``tests/serving/sglang_source.py`` reads them from the installed source; a test fails when the pinned
  SGLang and this list disagree. Mixtral (``MixtralForCausalLM``) is not among them;
* its expert-distribution recorder (``--expert-distribution-recorder-mode stat``,
  ``python/sglang/srt/eplb/expert_distribution.py``) dumps ``logical_count`` ``[passes, num_layers,
  experts]`` with ``torch.save`` (``read_dump``; ``vibe.serving.loads`` drives it over HTTP);
* its static dispatch (``--ep-dispatch-algorithm static``) does not split an expert's tokens evenly
  over the replicas: ``DISPATCH`` names the split ``vibe.placement.dispatch`` prices for it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vibe.engines import torchfile
from vibe.engines._common import check_rows, check_slots, dump, int_matrix, permute_rows
from vibe.engines.errors import EngineError
from vibe.engines.loads import Loads, to_loads
from vibe.engines.settings import EngineSettings
from vibe.placement import Placement, read_placement

if TYPE_CHECKING:
    from vibe.placement import Fleet, Result

log = logging.getLogger(__name__)

NAME = "sglang"
KEY = "sglang-expert-location.json"
#: How SGLang splits an expert's tokens over its replicas once a placement file is given (DeepEP's
#: default ``--ep-dispatch-algorithm static``): ``vibe.placement.dispatch`` prices it.
#: The load ConfigMap's ``vibe.dev/loads-source`` for loads read from its recorder.
LOADS_SOURCE = "sglang-expert-distribution-recorder"
DISPATCH = "sglang-static"
#: Whether the engine can take vibe's per-slot replica weights (the ``weighted`` replica split): no.
#: ``topk_ids_logical_to_physical`` in ``sglang/srt/eplb/expert_location_dispatch.py`` picks a replica
#: per (token, k): ``static`` from a fixed per-rank map, ``dynamic``/``fake`` uniformly at random
#: (``randint % num_valid``: even in expectation); ``lp`` (LPLB, upstream PR 24515) solves a linear
#: program per step on that step's token counts for its own per-replica probabilities (``log2phy_prob``),
#: which it does not read from a file and which do not know GPU speed. None reads weights from a
#: placement file.
REPLICA_WEIGHTS = False
DISPATCH_SOURCE = (
    "sglang/srt/eplb/expert_location_dispatch.py: topk_ids_logical_to_physical "
    "(static: per-rank map; dynamic/fake: uniform random replica; lp: per-step LP probabilities)"
)

#: The SGLang release whose source the facts here come from (CI installs exactly this wheel).
SGLANG_VERSION = "0.5.23"

#: Architectures whose SGLang model class implements ``get_model_config_for_expert_location``.
EXPERT_LOCATION_ARCHITECTURES: frozenset[str] = frozenset(
    {
        "BailingMoEForCausalLM",
        "BailingMoeForCausalLM",
        "BailingMoeV2ForCausalLM",
        "BailingMoeV2_5ForCausalLM",
        "BailingMoeV3ForCausalLM",
        "BailingMoeV3VLForConditionalGeneration",
        "DeepseekV2ForCausalLM",
        "DeepseekV32ForCausalLM",
        "DeepseekV3ForCausalLM",
        "DeepseekV3ForCausalLMNextN",
        "DeepseekV4ForCausalLM",
        "DeepseekV4ForCausalLMNextN",
        "Dots3NoteForCausalLM",
        "Dots3NoteForCausalLMNextN",
        "DotsVLMForCausalLM",
        "ExaoneMoEForCausalLM",
        "ExaoneMoEForCausalLMMTP",
        "ExaoneMoeForCausalLM",
        "Glm4MoeForCausalLM",
        "Glm4MoeForCausalLMNextN",
        "Glm4MoeLiteForCausalLM",
        "Glm4MoeLiteForCausalLMNextN",
        "Glm5NextForConditionalGeneration",
        "Glm5NextForConditionalGenerationNextN",
        "GlmMoeDsaForCausalLM",
        "GlmMoeDsaForCausalLMNextN",
        "GptOssForCausalLM",
        "InternS1ProForConditionalGeneration",
        "InternS2PreviewForConditionalGeneration",
        "K2HorizonForCausalLM",
        "KimiK25ForConditionalGeneration",
        "LLaDA2MoeModelLM",
        "LongcatFlashForCausalLM",
        "LongcatFlashForCausalLMNextN",
        "MellumForCausalLM",
        "MiMoV2FlashForCausalLM",
        "MiMoV2ForCausalLM",
        "MiMoV2MTP",
        "MindSporeForCausalLM",
        "MiniMaxM2ForCausalLM",
        "MiniMaxM3SparseForCausalLM",
        "MiniMaxM3SparseForConditionalGeneration",
        "MistralLarge3ForCausalLM",
        "MistralLarge3ForCausalLMEagle",
        "NemotronHForCausalLM",
        "NemotronHForCausalLMMTP",
        "NemotronHPuzzleForCausalLM",
        "NemotronH_Nano_Omni_Reasoning_V3",
        "NemotronH_Nano_VL_V2",
        "NemotronH_Omni_Reasoning_V3",
        "Qwen2MoeForCausalLM",
        "Qwen3MoeForCausalLM",
        "Qwen3MoeForCausalLMMTP",
        "Qwen3NextForCausalLM",
        "Qwen3NextForCausalLMMTP",
        "Qwen3VLMoeForConditionalGeneration",
        "Qwen3_5ForCausalLMMTP",
        "Qwen3_5MoeForCausalLM",
        "Qwen3_5MoeForConditionalGeneration",
        "Qwen4ExpForCausalLMMTP",
        "Qwen4ExpForConditionalGeneration",
        "SDARMoeForCausalLM",
        "SarvamMLAForCausalLM",
        "SarvamMoEForCausalLM",
        "Step3VLForConditionalGeneration",
        "Step3p5ForCausalLM",
        "Step3p5MTP",
        "Step3p7ForConditionalGeneration",
        "TransformersMoEEmbeddingModel",
        "TransformersMoEForCausalLM",
        "TransformersMoEForSequenceClassification",
        "TransformersMultiModalMoEEmbeddingModel",
        "TransformersMultiModalMoEForCausalLM",
        "TransformersMultiModalMoEForSequenceClassification",
        "XllmForCausalLM",
    }
)


def write(result: Result, fleet: Fleet, baseline: Result | None = None) -> bytes:
    """``{"physical_to_logical_map": [[...] per MoE layer]}``: the one key SGLang's loader accepts."""
    return dump({"physical_to_logical_map": result.placement.phy2log.tolist()})


def parse(text: str) -> Any:
    """The document from the ConfigMap key's text (``ValueError`` when it is not JSON)."""
    return json.loads(text)


def read(doc: Any, *, slots_per_gpu: int | None, num_experts: int | None) -> Placement:
    """The placement an expert-location document holds (MoE-layer rows, as vibe writes them)."""
    return read_placement(doc, slots_per_gpu=slots_per_gpu, num_experts=num_experts)


def check_architecture(architecture: str | None) -> None:
    """Refuse an architecture for which SGLang ignores ``--init-expert-location``.

    Args:
        architecture: the model's ``architectures[0]`` from its ``config.json``, or None when unknown
            (then nothing is checked; the caller warns).

    Raises:
        EngineError(UnsupportedArchitecture): SGLang would start with its trivial layout instead.
    """
    if architecture is None or architecture in EXPERT_LOCATION_ARCHITECTURES:
        return
    raise EngineError(
        "UnsupportedArchitecture",
        f"SGLang {SGLANG_VERSION} ignores --init-expert-location for {architecture}: its model class has no"
        " get_model_config_for_expert_location, so the engine would start with its default expert layout"
        " (and its expert-distribution recorder would assert). SGLang takes a placement for"
        f" {len(EXPERT_LOCATION_ARCHITECTURES)} architectures in this release (e.g. DeepseekV3ForCausalLM,"
        " Qwen3MoeForCausalLM); for this model drop --sglang-out and keep the MoEDeployment's"
        " output.formats to vibe and eplb",
    )


def fit(doc: Any, settings: EngineSettings, where: str = KEY) -> dict[str, Any]:
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
            " file only for models with an expert-location hook (vibe.engines.sglang)",
            where,
            SGLANG_VERSION,
        )
    check_architecture(settings.architecture)
    if not isinstance(doc, dict) or "physical_to_logical_map" not in doc:
        raise EngineError("PlacementMismatch", f"{where}: no physical_to_logical_map")
    rows = int_matrix(doc["physical_to_logical_map"], "physical_to_logical_map", where)
    physical = len(rows[0])
    logical = check_slots(physical, settings, where, "--ep-num-redundant-experts")
    if settings.num_layers is None:
        log.warning(
            "%s: engine layer count unknown (no --model-config/--num-layers); passing %d rows as they are",
            where,
            len(rows),
        )
        check_rows(rows, logical, where)
        return {"physical_to_logical_map": rows}
    moe_layers = settings.num_layers - settings.first_moe_layer
    if len(rows) == settings.num_layers:
        pad: list[list[int]] = []
        check_rows(rows[settings.first_moe_layer :], logical, where, settings.first_moe_layer)
    elif len(rows) == moe_layers:
        check_rows(rows, logical, where, settings.first_moe_layer)
        trivial = [p % logical for p in range(physical)]
        pad = [list(trivial) for _ in range(settings.first_moe_layer)]
    else:
        raise EngineError(
            "PlacementMismatch",
            f"{where}: placement has {len(rows)} layers but the engine has {settings.num_layers}"
            f" ({moe_layers} MoE layers after {settings.first_moe_layer} dense ones)",
        )
    return {"physical_to_logical_map": pad + rows}


def width(doc: dict[str, Any]) -> int:
    """Physical slots per layer of a fitted document."""
    return len(doc["physical_to_logical_map"][0])


def permute(doc: dict[str, Any], perm: list[int]) -> dict[str, Any]:
    """Apply ``perm`` to every row of ``physical_to_logical_map`` (dense-layer rows are trivial: kept)."""
    return {"physical_to_logical_map": permute_rows(doc["physical_to_logical_map"], perm)}


def files(doc: dict[str, Any], path: Path, settings: EngineSettings) -> dict[Path, bytes]:
    """The file ``--init-expert-location`` points at: the fitted document as JSON."""
    return {path: json_bytes(doc)}


def json_bytes(doc: Any) -> bytes:
    """A fitted document as the file the engine reads (sorted keys, compact, a trailing newline)."""
    return (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()


def read_dump(path: str | os.PathLike[str]) -> np.ndarray:
    """``logical_count`` from an SGLang dump (``.pt``) or a JSON export.

    ``.pt`` files are read with torch when it is installed, else with ``torchfile`` (no torch needed).

    JSON may be ``{"logical_count": [...]}`` or the bare nested list.

    Returns:
        float64 array, ``[passes, layers, experts]`` or ``[layers, experts]``.
    """
    path = Path(path)
    if path.suffix == ".pt":
        obj = _load_pt(path)
        count = obj.get("logical_count") if isinstance(obj, dict) else obj
        if count is None:
            keys = sorted(obj) if isinstance(obj, dict) else []
            raise EngineError("InvalidDump", f"{path} has no logical_count (keys: {keys})")
        count = count.cpu().numpy() if hasattr(count, "cpu") else count
    else:
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise EngineError("InvalidDump", f"cannot read {path}: {e}") from None
        count = obj.get("logical_count") if isinstance(obj, dict) else obj
        if count is None:
            raise EngineError("InvalidDump", f"{path} has no logical_count (keys: {sorted(obj)})")
    try:
        arr = np.asarray(count, dtype=np.float64)
    except (TypeError, ValueError):
        raise EngineError("InvalidDump", f"{path}: logical_count is not a numeric array") from None
    if arr.ndim not in (2, 3) or 0 in arr.shape:
        raise EngineError("InvalidDump", f"{path}: logical_count has shape {arr.shape}, expected 2 or 3 dims")
    if not np.all(np.isfinite(arr)) or arr.min() < 0:
        raise EngineError("InvalidDump", f"{path}: logical_count holds negative or non-finite counts")
    return arr


def _load_pt(path: Path) -> object:
    try:
        import torch
    except ImportError:
        return torchfile.load(path)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise EngineError("InvalidDump", f"cannot load {path}: {e}") from None


def loads(
    path: Path,
    *,
    steps: int | None = None,
    first_moe_layer: int | None = None,
    moe_layers: int | None = None,
    assignment: Path | None = None,
) -> Loads:
    """Tokens per step per MoE layer and expert from one recorder dump (``.pt``) or its JSON export."""
    if assignment is not None:
        raise EngineError("InvalidArgument", "SGLang's recorder counts logical experts: drop --assignment")
    return to_loads(read_dump(path), steps, first_moe_layer, moe_layers)
