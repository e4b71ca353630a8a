"""What the pinned SGLang release does with vibe's placement: which models take it, and how it routes.

Role: the serving side's knowledge of SGLang as a fact table, read from SGLang's source at the version in
``SGLANG_VERSION`` (the same version CI installs, see ``tests/serving/test_serving_sglang_loader.py``).

SGLang applies ``--init-expert-location`` only when the model class serving an architecture implements
``get_model_config_for_expert_location``: ``ModelConfigForExpertLocation.from_model_config``
(``sglang/srt/eplb/expert_location.py``) returns None otherwise, and
``ExpertLocationMetadata.init_by_mapping`` then returns None too, so the engine starts with the trivial
layout and silently ignores the file; its
expert-distribution recorder (``--expert-distribution-recorder-mode``) asserts at start for the same
models. ``EXPERT_LOCATION_ARCHITECTURES`` lists the Hugging Face architectures (``config.json``
``architectures``) whose SGLang model class has the hook, inheritance followed, as
``tests/serving/sglang_source.py`` reads them from the installed source; a test fails when the pinned
SGLang and this list disagree. Mixtral (``MixtralForCausalLM``) is not among them.
"""

from __future__ import annotations

from vibe.serving.errors import ServingError

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


def check_architecture(architecture: str | None) -> None:
    """Refuse an architecture for which SGLang ignores ``--init-expert-location``.

    Args:
        architecture: the model's ``architectures[0]`` from its ``config.json``, or None when unknown
            (then nothing is checked; the caller warns).

    Raises:
        ServingError(UnsupportedArchitecture): SGLang would start with its trivial layout instead.
    """
    if architecture is None or architecture in EXPERT_LOCATION_ARCHITECTURES:
        return
    raise ServingError(
        "UnsupportedArchitecture",
        f"SGLang {SGLANG_VERSION} ignores --init-expert-location for {architecture}: its model class has no"
        " get_model_config_for_expert_location, so the engine would start with its default expert layout"
        " (and its expert-distribution recorder would assert). SGLang takes a placement for"
        f" {len(EXPERT_LOCATION_ARCHITECTURES)} architectures in this release (e.g. DeepseekV3ForCausalLM,"
        " Qwen3MoeForCausalLM); for this model drop --sglang-out and keep the MoEDeployment's"
        " output.formats to vibe and eplb",
    )
