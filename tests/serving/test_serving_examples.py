"""examples/sglang agrees with itself: the engine flags, the vibe flags and the MoEDeployment's shape."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from serving_helpers import flags

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "sglang"


@pytest.fixture(scope="module")
def lws() -> dict:
    return yaml.safe_load((EXAMPLES / "leaderworkerset.yaml").read_text())


@pytest.fixture(scope="module")
def moed() -> dict:
    return yaml.safe_load((EXAMPLES / "moedeployment.yaml").read_text())


def containers(lws: dict, template: str) -> dict[str, dict]:
    spec = lws["spec"]["leaderWorkerTemplate"][template]["spec"]
    return {c["name"]: c for c in spec.get("initContainers", []) + spec["containers"]}


def test_engine_and_vibe_agree_on_ep_and_slots(lws: dict, moed: dict) -> None:
    leader = containers(lws, "leaderTemplate")
    sg, init, watch = (
        flags(leader["sglang"]["command"]),
        flags(leader["vibe-placement"]["command"]),
        flags(leader["vibe-watch"]["command"]),
    )
    gpus, model = moed["spec"]["gpus"], moed["spec"]["model"]
    ep = int(sg["--tp-size"])
    assert ep == int(sg["--ep-size"]) == int(init["--ep-size"]) == int(watch["--ep-size"]) == gpus["count"]
    redundant = int(sg["--ep-num-redundant-experts"])
    assert redundant == int(init["--redundant-experts"]) == int(watch["--redundant-experts"])
    assert model["experts"] + redundant == gpus["slotsPerGPU"] * gpus["count"]  # SGLang: physical = E + R
    assert int(init["--num-layers"]) - int(init["--first-moe-layer"]) == model["layers"]
    assert sg["--init-expert-location"] == init["--sglang-out"]
    assert "--enable-eplb" not in sg  # SGLang's own rebalancer would undo the placement
    assert sg["--expert-distribution-recorder-mode"] == "stat"
    group = lws["spec"]["leaderWorkerTemplate"]["size"]
    assert group * int(init["--gpus-per-pod"]) == ep
    assert int(leader["sglang"]["resources"]["limits"]["nvidia.com/gpu"]) == int(init["--gpus-per-pod"])


def test_loads_sidecar_writes_what_the_moedeployment_reads(lws: dict, moed: dict) -> None:
    leader = containers(lws, "leaderTemplate")
    loads = flags(leader["vibe-loads"]["command"])
    ref = moed["spec"]["workload"]["configMapRef"]
    assert (loads["--configmap"], loads["--key"]) == (ref["name"], ref["key"])
    env = {e["name"]: e.get("value") for e in leader["sglang"]["env"]}
    assert env["SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR"] == loads["--recorder-dir"]


def test_every_pod_gets_the_placement_from_the_moedeployments_configmap(lws: dict, moed: dict) -> None:
    for template in ("leaderTemplate", "workerTemplate"):
        spec = lws["spec"]["leaderWorkerTemplate"][template]["spec"]
        names = {c["name"] for c in spec["initContainers"]}
        assert "vibe-placement" in names
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["placement"]["configMap"]["name"] == f"{moed['metadata']['name']}-placement"


def test_rbac_covers_the_policy_target(lws: dict) -> None:
    docs = list(yaml.safe_load_all((EXAMPLES / "rbac.yaml").read_text()))
    role = next(d for d in docs if d["kind"] == "Role")
    lws_rule = next(r for r in role["rules"] if "leaderworkersets" in r["resources"])
    assert lws["metadata"]["name"] in lws_rule["resourceNames"] and "patch" in lws_rule["verbs"]


# The Hugging Face architecture (config.json) of each model the examples name.
ARCHITECTURES = {
    "deepseek-ai/DeepSeek-V3": "DeepseekV3ForCausalLM",
    "Qwen/Qwen3-235B-A22B": "Qwen3MoeForCausalLM",
    "mistralai/Mixtral-8x7B-v0.1": "MixtralForCausalLM",
}


@pytest.mark.parametrize("path", [*sorted(EXAMPLES.parent.glob("*.yaml")), EXAMPLES / "moedeployment.yaml"])
def test_examples_ask_sglang_files_only_for_models_sglang_applies_them_to(path: Path) -> None:
    from vibe.engines.sglang import EXPERT_LOCATION_ARCHITECTURES

    for doc in yaml.safe_load_all(path.read_text()):
        if not doc or doc.get("kind") != "MoEDeployment":
            continue
        arch = ARCHITECTURES[doc["spec"]["model"]["name"]]
        if "sglang" in doc["spec"]["output"]["formats"]:
            assert arch in EXPERT_LOCATION_ARCHITECTURES, f"{path.name}: SGLang ignores the file for {arch}"
