"""A placement must fit the engine as launched: EP size, redundant experts, layers (SGLang, EPLB records)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from serving_helpers import E, G, L, P, phy2log, placement_data, settings

from vibe.engines import ENGINES, EngineError, EngineSettings, eplb, sglang
from vibe.engines.settings import model_layout
from vibe.serving import emit
from vibe.serving.errors import ServingError


def mismatch(fn, *a, match: str) -> None:
    with pytest.raises(EngineError, match=match) as e:
        fn(*a)
    assert e.value.reason in ("PlacementMismatch", "InvalidArgument")


def test_sglang_pads_the_dense_layers_with_the_trivial_map() -> None:
    out = sglang.fit({"physical_to_logical_map": phy2log(), "extra": 1}, settings())
    assert list(out) == ["physical_to_logical_map"]  # SGLang's init_by_mapping(**data) takes only this key
    rows = out["physical_to_logical_map"]
    assert len(rows) == L + 1
    assert rows[0] == [p % E for p in range(P)]
    assert rows[1:] == phy2log()


def test_sglang_rows_already_covering_every_layer_pass_unchanged() -> None:
    full = [[p % E for p in range(P)], *phy2log()]
    assert sglang.fit({"physical_to_logical_map": full}, settings())["physical_to_logical_map"] == full


def test_sglang_without_layer_count_passes_rows_as_they_are(caplog) -> None:
    out = sglang.fit({"physical_to_logical_map": phy2log()}, settings(num_layers=None, first_moe_layer=0))
    assert out["physical_to_logical_map"] == phy2log()
    assert "layer count unknown" in caplog.text


def test_wrong_redundant_experts() -> None:
    mismatch(
        sglang.fit,
        {"physical_to_logical_map": phy2log()},
        settings(redundant_experts=8),
        match=r"12 physical slots .* 8 experts \+ 8 redundant = 16; set --ep-num-redundant-experts 4",
    )


def test_wrong_ep_size() -> None:
    mismatch(sglang.fit, {"physical_to_logical_map": phy2log()}, settings(ep_size=5), match="EP size 5")


def test_wrong_layer_count() -> None:
    mismatch(
        sglang.fit,
        {"physical_to_logical_map": phy2log()},
        settings(num_layers=7),
        match="3 layers",
    )


def test_expert_out_of_range_and_missing_expert() -> None:
    rows = phy2log()
    rows[1][0] = E  # 8 is not an expert when 8 of 12 slots are logical
    mismatch(sglang.fit, {"physical_to_logical_map": rows}, settings(), match="layer 2 names expert 8")
    rows = phy2log()
    rows[0] = [0] * P
    mismatch(sglang.fit, {"physical_to_logical_map": rows}, settings(), match="without a slot")


def test_ragged_and_non_integer_maps() -> None:
    rows = phy2log()
    rows[2] = rows[2][:-1]
    mismatch(sglang.fit, {"physical_to_logical_map": rows}, settings(), match="row 2 has 11")
    mismatch(sglang.fit, {"physical_to_logical_map": [[0.5] * P]}, settings(), match="non-integer")
    mismatch(sglang.fit, {"nope": 1}, settings(), match="no physical_to_logical_map")


def test_deepseek_v3_shape() -> None:
    """58 MoE layers x (256 + 32) slots on EP 32 -> 61 rows, 9 slots per rank (SGLang's p // 9)."""
    experts, redundant, ep = 256, 32, 32
    rows = [[p % experts for p in range(experts + redundant)] for _ in range(58)]
    s = EngineSettings(ep, redundant, num_experts=experts, num_layers=61, first_moe_layer=3)
    out = sglang.fit({"physical_to_logical_map": rows}, s)["physical_to_logical_map"]
    assert len(out) == 61 and all(len(r) == 288 for r in out)
    mismatch(
        sglang.fit,
        {"physical_to_logical_map": rows},
        EngineSettings(64, 32, 256),
        match="64",
    )


def test_model_layout_from_a_deepseek_config(tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"num_hidden_layers": 61, "n_routed_experts": 256, "first_k_dense_replace": 3}))
    assert model_layout(cfg) == {"num_layers": 61, "num_experts": 256, "first_moe_layer": 3}
    cfg.write_text(json.dumps({"text_config": {"num_hidden_layers": 94, "num_experts": 128}}))
    assert model_layout(cfg) == {"num_layers": 94, "num_experts": 128, "first_moe_layer": 0}
    cfg.write_text(json.dumps({"num_hidden_layers": 48, "num_experts": 128, "decoder_sparse_step": 2}))
    with pytest.raises(EngineError, match="interleave"):
        model_layout(cfg)
    with pytest.raises(EngineError, match="cannot read"):
        model_layout(tmp_path / "missing.json")


def test_eplb_tensors_are_checked() -> None:
    doc = json.loads(placement_data()[ENGINES["eplb"].key])
    assert eplb.fit(doc, settings()) == doc
    bad = dict(doc, logcnt=[[1] * E for _ in range(L)])
    mismatch(eplb.fit, bad, settings(), match="logcnt disagrees")
    bad = dict(doc, log2phy=[row[:-1] for row in doc["log2phy"]])
    mismatch(eplb.fit, bad, settings(), match="log2phy layer 0")
    mismatch(eplb.fit, doc, settings(num_layers=9), match="8 MoE layers")


def test_gpu_count_must_be_the_ep_size() -> None:
    data = placement_data(gpus=G + 1)
    with pytest.raises(ServingError, match=f"{G + 1} GPUs but the engine's EP size is {G}"):
        emit.prepare(data, settings(), ["sglang"])


def test_prepare_names_the_missing_format() -> None:
    data = placement_data()
    del data[ENGINES["sglang"].key]
    with pytest.raises(ServingError, match=r"add 'sglang' to the MoEDeployment's spec\.output\.formats") as e:
        emit.prepare(data, settings(), ["sglang"])
    assert e.value.reason == "MissingPlacement"


def test_settings_are_validated() -> None:
    with pytest.raises(EngineError):
        EngineSettings(0)
    with pytest.raises(EngineError):
        EngineSettings(4, num_layers=3, first_moe_layer=3)


def test_sglang_fit_refuses_architectures_without_the_hook() -> None:
    doc = {"physical_to_logical_map": phy2log()}
    for arch in ("DeepseekV3ForCausalLM", "Qwen3MoeForCausalLM", "Qwen2MoeForCausalLM", None):
        assert sglang.fit(doc, settings(architecture=arch))["physical_to_logical_map"]
    assert "MixtralForCausalLM" not in sglang.EXPERT_LOCATION_ARCHITECTURES
    with pytest.raises(EngineError) as e:
        sglang.fit(doc, settings(architecture="MixtralForCausalLM"))
    assert e.value.reason == "UnsupportedArchitecture" and "MixtralForCausalLM" in e.value.message
