"""TensorRT-LLM (format ``trtllm``): each rule of its load balancer, tested against the upstream code it
restates, and its statistics read from files laid out exactly as its writer lays them out.

``tensorrt-llm`` has no wheel that installs on a machine without a GPU (``pip download --no-deps
--only-binary=:all: tensorrt-llm`` finds none for this platform), so its validation cannot be imported
here. Each test names the upstream file, symbol and commit (NVIDIA/TensorRT-LLM; ``trtllm.UPSTREAM``) of
the rule it checks; the rule is restated in the test from that source, so a change of vibe's check
against the same rule fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from vibe.engines import ENGINES, EngineError, EngineSettings, trtllm
from vibe.placement import solve
from vibe.placement.synthetic import h100_fleet, skewed_loads

# DeepSeek-V3's layout: 61 decoder layers, the first 3 dense, 256 routed experts, top-8.
DSV3 = {"num_layers": 61, "first_moe_layer": 3, "num_experts": 256}


def settings(ep: int = 32, slots: int = 288, **kw) -> EngineSettings:
    base = {**DSV3, "ep_size": ep, "redundant_experts": slots - DSV3["num_experts"]}
    return EngineSettings(**{**base, **kw})


def dsv3_doc(slots: int = 288, layers: int = 58, experts: int = 256) -> dict:
    """A load-balancer document keyed by MoE-layer ordinal, as the operator's ConfigMap holds it."""
    row = [p % experts for p in range(slots)]
    return {"num_slots": slots, "initial_global_assignments": {i: list(row) for i in range(layers)}}


def refused(doc: dict, s: EngineSettings, *words: str) -> str:
    with pytest.raises(EngineError) as e:
        trtllm.fit(doc, s)
    assert e.value.reason == "PlacementMismatch"
    for w in words:
        assert w in e.value.message, e.value.message
    return e.value.message


# ---------------------------------------------------------------- the file the engine reads


def test_the_file_is_what_validate_load_balancer_reads() -> None:
    """llm_args.py ``TorchLlmArgs.validate_load_balancer`` (fcd3f316): ``yaml.safe_load`` of the path, then
    ``MoeLoadBalancerConfig(**doc)``, a ``StrictBaseModel`` (extra fields forbidden) of ``num_slots``,
    ``initial_global_assignments: Dict[int, List[int]]`` and ``layer_updates_per_iter``."""
    loads = skewed_loads(4, 16, mean_tokens=100, seed=1)
    fleet = h100_fleet(4, seed=1)
    r = solve(loads, fleet, 5, "vibe", time_budget_s=0.1)
    doc = yaml.safe_load(trtllm.write(r, fleet, None))
    assert (
        set(doc)
        == set(trtllm.CONFIG_KEYS)
        == {"num_slots", "initial_global_assignments", "layer_updates_per_iter"}
    )
    assert doc["num_slots"] == 20 and doc["layer_updates_per_iter"] == 0
    assert all(type(k) is int for k in doc["initial_global_assignments"])  # integer keys, not "0"
    assert [doc["initial_global_assignments"][i] for i in range(4)] == r.placement.phy2log.tolist()
    refused({**dsv3_doc(), "max_num_tokens": 1}, settings(), "refuses the keys ['max_num_tokens']")


def test_slots_are_rank_major() -> None:
    """generate_eplb_config.py (76a646e9): slot j of a layer is on rank ``j // (num_slots / ep_size)`` --
    the ranks' local slot lists concatenated; ``MoeLoadBalancerConfig.slot_start = ep_rank *
    num_local_slots`` (llm_args.py, fcd3f316). vibe's ``phy2log`` is rank-major too: kept as is."""
    loads = skewed_loads(2, 8, mean_tokens=100, seed=2)
    fleet = h100_fleet(4, seed=2)
    r = solve(loads, fleet, 3, "vibe", time_budget_s=0.1)
    table = yaml.safe_load(trtllm.write(r, fleet, None))["initial_global_assignments"]
    for layer, row in table.items():
        for rank in range(4):
            assert (
                row[rank * 3 : rank * 3 + 3] == r.placement.phy2log[layer, rank * 3 : rank * 3 + 3].tolist()
            )


def test_layer_updates_per_iter_above_zero_is_never_emitted_nor_accepted() -> None:
    """moe_load_balancer.py ``maybe_create_moe_load_balancer`` (000a01de): ``layer_updates_per_iter > 0``
    runs the engine's online balancer, which would move the experts away from vibe's placement."""
    refused({**dsv3_doc(), "layer_updates_per_iter": 2}, settings(), "layer_updates_per_iter is 2", "needs 0")
    out = trtllm.fit({**dsv3_doc(), "layer_updates_per_iter": 0}, settings())
    assert out["layer_updates_per_iter"] == 0
    written = yaml.safe_load(trtllm.files(out, Path("/lb.yaml"), settings())[Path("/lb.yaml")])
    assert written["layer_updates_per_iter"] == 0


# ---------------------------------------------------------------- the checks, one per upstream rule


def test_num_slots_divisible_by_ep_size() -> None:
    """llm_args.py ``MoeLoadBalancerConfig.setup`` (fcd3f316): ``num_slots % ep_size != 0`` -> ValueError."""
    refused(dsv3_doc(slots=288), settings(ep=30, slots=288), "num_slots 288", "ep_size 30")
    assert trtllm.fit(dsv3_doc(slots=288), settings(ep=36, slots=288))["num_slots"] == 288


def test_every_moe_layer_present_keyed_past_the_dense_layers() -> None:
    """llm_args.py ``get_layer_initial_global_assignments`` (fcd3f316): a layer index not in the map ->
    KeyError at start. The keys are decoder layer indices: DeepSeek-V3's MoE layers are 3..60."""
    out = trtllm.fit(dsv3_doc(), settings())["initial_global_assignments"]
    assert list(out) == list(range(3, 61))
    msg = refused(dsv3_doc(layers=57), settings(), "57 layers", "58 MoE layers", "3..60", "KeyError")
    assert "first missing: 60" in msg
    already = {
        "num_slots": 288,
        "initial_global_assignments": {i + 3: r for i, r in dsv3_doc()["initial_global_assignments"].items()},
    }
    assert list(trtllm.fit(already, settings())["initial_global_assignments"]) == list(range(3, 61))


def test_each_layer_lists_num_slots_experts() -> None:
    """llm_args.py ``get_layer_initial_global_assignments`` (fcd3f316): ``len(assignments) != num_slots``
    -> ValueError; fused_moe_wide_ep.py ``WideEPMoE.__init__`` (99bca892) asserts it too."""
    doc = dsv3_doc()
    doc["initial_global_assignments"][5] = doc["initial_global_assignments"][5][:-1]
    refused(doc, settings(), "layer 5 lists 287 slots but num_slots is 288")


def test_num_slots_at_least_num_experts() -> None:
    """fused_moe_wide_ep.py ``WideEPMoE.__init__`` (99bca892): ``assert num_slots >= num_experts``."""
    refused(dsv3_doc(slots=224), settings(ep=32, slots=256), "224 physical slots", "256 experts")


def test_every_expert_in_every_layer_and_nothing_else() -> None:
    """fused_moe_wide_ep.py ``WideEPMoE.__init__`` (99bca892):
    ``assert set(loaded_initial_global_assignments) == set(range(self.num_experts))``."""
    doc = dsv3_doc()
    doc["initial_global_assignments"][7] = [0] * 288
    refused(doc, settings(), "layer 10 leaves expert 1 without a slot")  # MoE layer 7 is decoder layer 10
    doc = dsv3_doc()
    doc["initial_global_assignments"][0] = [p % 256 for p in range(287)] + [256]
    refused(doc, settings(), "names expert 256, outside 0..255")


def test_at_most_1024_experts() -> None:
    """moeLoadBalanceKernels.cu ``moeComputeRouteDevice`` (004d78b0): the route kernels are instantiated for
    at most 1024 experts (``moeComputeRouteKernel<1024, ...>``)."""
    experts = 1040
    doc = {"num_slots": experts, "initial_global_assignments": {0: list(range(experts))}}
    s = EngineSettings(ep_size=8, num_experts=experts, num_layers=1)
    refused(doc, s, "1040 experts", "at most 1024")
    ok = {"num_slots": 1024, "initial_global_assignments": {0: list(range(1024))}}
    assert trtllm.fit(ok, EngineSettings(ep_size=8, num_experts=1024, num_layers=1))["num_slots"] == 1024


def test_an_architecture_without_a_load_balancer_is_warned(caplog) -> None:
    """moe_load_balancer.py ``maybe_create_moe_load_balancer`` (000a01de): the balancer is built only for
    ``moe_model_arch_list``; otherwise the file is ignored. Newer releases list more: a warning, not a
    refusal."""
    assert {"DeepseekV3ForCausalLM", "Qwen3MoeForCausalLM"} <= trtllm.LOAD_BALANCER_ARCHITECTURES
    trtllm.fit(dsv3_doc(), settings(architecture="DeepseekV3ForCausalLM"))
    assert "ignore the file" not in caplog.text
    trtllm.fit(dsv3_doc(), settings(architecture="SomeNewMoeForCausalLM"))
    assert "SomeNewMoeForCausalLM" in caplog.text and "ignore the file" in caplog.text


# ---------------------------------------------------------------- how it routes: an even split


def test_round_robin_over_replicas_is_an_even_split() -> None:
    """moeLoadBalanceKernels.cu ``moeComputeRouteKernel`` (004d78b0): a token's replica is ``key %
    replicaCount`` with ``key`` its running index among the block's tokens of that expert (+ the EP rank
    with attention DP). Replayed here for a block: each replica gets the same share, +-1 token -- the
    ``even`` split vibe prices TensorRT-LLM with."""
    for tokens, replicas, rank in ((1000, 3, 0), (999, 4, 5), (7, 2, 1)):
        served = np.bincount([(i + rank) % replicas for i in range(tokens)], minlength=replicas)
        assert served.max() - served.min() <= 1 and served.sum() == tokens
    assert ENGINES["trtllm"].dispatch == "even"


# ---------------------------------------------------------------- vibe serving init's files


def test_init_writes_the_load_balancer_and_the_engine_args(tmp_path: Path) -> None:
    out = trtllm.fit(dsv3_doc(), settings())
    files = trtllm.files(out, tmp_path / "moe_load_balancer.yaml", settings())
    lb = yaml.safe_load(files[tmp_path / "moe_load_balancer.yaml"])
    assert lb["num_slots"] == 288 and sorted(lb["initial_global_assignments"]) == list(range(3, 61))
    args = yaml.safe_load(files[tmp_path / "moe_load_balancer-extra-engine-args.yaml"])
    # llm_args.py MoeConfig (fcd3f316): backend Literal includes "WIDEEP"; load_balancer may be a path
    assert args == {
        "moe_config": {"backend": "WIDEEP", "load_balancer": str(tmp_path / "moe_load_balancer.yaml")}
    }


# ---------------------------------------------------------------- statistics -> loads


def write_statistics(
    path: Path, counts: dict[int, dict[tuple[int, int], np.ndarray]], width: int, top_k: int
) -> None:
    """Lay files out as ``ExpertStatistic._set_iter`` (expert_statistic.py, 0fccc5b9) does at iteration
    ``stop``: rank 0 ``json.dump``s ``{"num_experts": expert_count, "num_experts_per_token": k}`` (the
    ``expert_count`` is ``self.num_slots`` -- the slot count once a load balancer is active) and every
    rank ``safetensors.torch.save_file``s ``{"<iter>_<layer>": int64 bincount(minlength=expert_count)}``
    as ``rank<R>.safetensors``. Written here with safetensors' numpy API: the same file format."""
    from safetensors.numpy import save_file

    path.mkdir(parents=True, exist_ok=True)
    with open(path / "meta_info.json", "w") as f:
        json.dump({"num_experts": width, "num_experts_per_token": top_k}, f)
    for rank, records in counts.items():
        tensors = {f"{it}_{layer}": c.astype(np.int64) for (it, layer), c in records.items()}
        assert all(c.shape == (width,) for c in tensors.values())
        save_file(tensors, str(path / f"rank{rank}.safetensors"))


def test_statistics_per_slot_fold_back_to_experts(tmp_path: Path) -> None:
    """With a load balancer, counts are per slot (``maybe_add_info(self.num_slots, token_selected_slots)``,
    fused_moe_wide_ep.py 99bca892); the assignment in service folds them back to experts. Ranks are summed
    (utils.py ``load_expert_statistic``, 7ce477f3, which skips ``*_raw.safetensors``)."""
    experts, slots, layers, iters = 4, 6, (3, 4), range(100, 103)
    assignment = {3: [0, 1, 2, 3, 0, 1], 4: [3, 2, 1, 0, 3, 3]}
    lb = tmp_path / "lb.yaml"
    lb.write_bytes(trtllm.to_yaml(slots, assignment))
    rng = np.random.default_rng(0)
    per_rank = {
        r: {(it, layer): rng.integers(0, 50, size=slots) for it in iters for layer in layers}
        for r in range(2)
    }
    stats = tmp_path / "expert_statistic"
    write_statistics(stats, per_rank, width=slots, top_k=2)
    (stats / "rank0_raw.safetensors").write_bytes(b"not read")

    got = ENGINES["trtllm"].loads(stats, assignment=lb)  # type: ignore[misc]
    expected = np.zeros((2, experts))
    for j, layer in enumerate(layers):
        for s, e in enumerate(assignment[layer]):
            expected[j, e] += sum(per_rank[r][(it, layer)][s] for r in range(2) for it in iters)
    np.testing.assert_allclose(got.loads, expected / 3)
    assert got.passes == 3 and got.dropped_layers == 3  # keyed by decoder layer: the dense ones never appear


def test_statistics_without_a_load_balancer_are_per_expert(tmp_path: Path) -> None:
    counts = {0: {(5, 0): np.array([1, 2, 3]), (6, 0): np.array([3, 2, 1]), (7, 0): np.zeros(3)}}
    write_statistics(tmp_path / "s", counts, width=3, top_k=1)
    got = trtllm.loads(tmp_path / "s")
    np.testing.assert_allclose(got.loads, [[2.0, 2.0, 2.0]])  # the idle iteration is not a step
    assert got.passes == 2


def test_unreadable_statistics_are_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match=r"meta_info\.json"):
        trtllm.loads(tmp_path)
    write_statistics(tmp_path / "a", {}, width=3, top_k=1)
    from safetensors.numpy import save_file

    save_file({"1_3": np.array([1, 2], dtype=np.int64)}, str(tmp_path / "a" / "rank0.safetensors"))
    with pytest.raises(EngineError, match="expected 3 integer counts"):
        trtllm.loads(tmp_path / "a")
    write_statistics(tmp_path / "b", {0: {(1, 3): np.ones(4), (2, 4): np.ones(4)}}, width=4, top_k=1)
    with pytest.raises(EngineError, match="iteration 1 has no counts for MoE layer 4"):
        trtllm.loads(tmp_path / "b")
    lb = tmp_path / "lb.yaml"
    lb.write_bytes(trtllm.to_yaml(6, {3: [0, 1, 2, 3, 0, 1]}))
    write_statistics(tmp_path / "c", {0: {(1, 3): np.ones(4)}}, width=4, top_k=1)
    with pytest.raises(EngineError, match=r"per 4 slots but .* has num_slots 6"):
        trtllm.loads(tmp_path / "c", assignment=lb)
    with pytest.raises(EngineError, match="drop the layer options"):
        trtllm.loads(tmp_path / "c", first_moe_layer=3)


def test_a_hand_edited_file_cannot_expand() -> None:
    """YAML aliases (a billion-laughs edit of the ConfigMap) are refused before anything expands."""
    bomb = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b]\n"
    with pytest.raises(ValueError, match="aliases are not allowed"):
        trtllm.parse(bomb)
    assert trtllm.parse("num_slots: 4\n") == {"num_slots": 4}
