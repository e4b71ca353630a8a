"""The operator against the local control plane: the issue's "done when", one behaviour per test.

One operator process serves the whole module (it watches every namespace); each test gets its own
namespace, fake GPU nodes (kwok) and GPUProfiles, so tests do not see each other's objects.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from typing import Any

import pytest
from operator_builders import deployment_body, profile_body
from operator_harness import Objects, put_fleet

from vibe import api, contract
from vibe.cluster.waiting import wait_for
from vibe.contract import content_hash
from vibe.placement.synthetic import skewed_loads

pytestmark = pytest.mark.cluster


#: The issue's metrics, in base units (seconds, ratios, counters ending in _total).
METRICS = (
    "vibe_placement_predicted_step_seconds",
    "vibe_placement_imbalance_ratio",
    "vibe_placement_gap_to_bound_ratio",
    "vibe_placement_gain_vs_baseline_ratio",
    "vibe_placement_moves_total",
    "vibe_reconcile_duration_seconds",
)


def loads_json(seed: int, layers: int = 4, experts: int = 16, mean: float = 512.0) -> str:
    return json.dumps({"loads": skewed_loads(layers, experts, mean_tokens=mean, seed=seed).tolist()})


@pytest.fixture
def fleet(gpu_nodes: Any, objs: Objects) -> Any:
    """``fleet(nodes, gpus, **profile kwargs) -> (nodeSelector, node names)`` with GPUProfiles written."""
    return functools.partial(put_fleet, gpu_nodes, objs, "op")


def test_create_writes_every_format_and_becomes_ready(objs: Objects, fleet: Any, operator: Any, cluster: Any):
    selector, nodes = fleet(2, 4, slow={1: 1.4})
    objs.put_loads("loads", loads_json(1))
    body = deployment_body(
        "dsv3",
        selector=selector,
        count=8,
        slots=3,
        workload={"configMapRef": {"name": "loads"}},
        output={"formats": ["vibe", "sglang", "eplb"]},
    )
    created = objs.create(body)
    ready = objs.wait_condition("dsv3", "Ready", "True", "Placed")
    assert ready["observedGeneration"] == 1
    assert "placement generation 1 in ConfigMap dsv3-placement" in ready["message"]

    cm = objs.config_map("dsv3-placement")
    assert sorted(cm["data"]) == [
        "eplb.json",
        "placement-meta.json",
        "placement.json",
        "sglang-expert-location.json",
    ]
    ann = cm["metadata"]["annotations"]
    core = {k: v for k, v in cm["data"].items() if k != "placement-meta.json"}
    assert ann[contract.ANNOTATION_CONTENT_HASH] == content_hash(core)
    assert ann[contract.ANNOTATION_PLACEMENT_GENERATION] == "1"
    assert json.loads(cm["data"]["placement-meta.json"]) == {
        "contentHash": content_hash(core),
        "placementGeneration": 1,
        "uid": created["metadata"]["uid"],  # generations count per object identity (issue 20, defect 6)
    }
    assert cm["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "vibe"
    (owner,) = cm["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "MoEDeployment",
        "dsv3",
        created["metadata"]["uid"],
        True,
    )
    sglang = json.loads(cm["data"]["sglang-expert-location.json"])
    assert len(sglang["physical_to_logical_map"]) == 4 and len(sglang["physical_to_logical_map"][0]) == 24

    status = objs.get("dsv3")["status"]
    assert status["placementGeneration"] == 1 and status["observedGeneration"] == 1
    assert status["nodes"] == sorted(nodes) and status["gpus"] == 8
    p = status["predicted"]
    assert p["stepTimeSeconds"] >= p["lowerBoundSeconds"] > 0
    assert p["baseline"]["policy"] == "token-balanced" and p["gainVsBaseline"] >= 0
    assert status["curveSource"] == "measured" and status["loadsSource"].endswith("/loads:loads.json")
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Ready": "True",
        "Degraded": "False",
        "Drifted": "False",
    }
    objs.wait_event("dsv3", "Placed")

    # kubectl get moed shows what a person wants to see
    kubectl = shutil.which("kubectl")
    if kubectl:
        out = subprocess.run(
            [kubectl, "get", "moed", "-n", objs.ns],
            env=cluster.env(),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert re.split(r"\s+", out.splitlines()[0].strip()) == [
            "NAME",
            "POLICY",
            "GPUS",
            "READY",
            "IMBALANCE",
            "GAIN%",
            "PLACEMENT",
            "AGE",
        ]
        assert out.splitlines()[1].split()[:4] == ["dsv3", "vibe", "8", "True"]

    # The same inputs give no write at all: poke it and watch a reconcile end "unchanged".
    rv = cm["metadata"]["resourceVersion"]
    unchanged = 'vibe_reconcile_duration_seconds_count{outcome="unchanged"}'
    before = operator.count(unchanged)
    objs.patch("dsv3", {"metadata": {"annotations": {api.ANNOTATION_RECONCILE_TRIGGER: "1"}}})
    wait_for(lambda: operator.count(unchanged) > before, timeout=30, what="an unchanged reconcile")
    assert objs.config_map("dsv3-placement")["metadata"]["resourceVersion"] == rv
    assert objs.get("dsv3")["metadata"]["generation"] == 1  # the operator never writes spec

    text = operator.metrics()
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    for name in METRICS:
        assert any(line.startswith(name) for line in samples), name
    assert f'vibe_placement_generation{{name="dsv3",namespace="{objs.ns}"}} 1.0' in text


def test_spec_update_makes_a_new_generation(objs: Objects, fleet: Any):
    selector, _ = fleet(2, 4)
    objs.create(deployment_body("m", selector=selector, count=8, slots=3))
    objs.wait_condition("m", "Ready", "True")
    assert "uniform loads" in objs.condition("m", "Ready")["message"]
    objs.patch("m", {"spec": {"gpus": {"slotsPerGPU": 4}}})
    cm = objs.wait_generation("m", 2)
    assert len(json.loads(cm["data"]["sglang-expert-location.json"])["physical_to_logical_map"][0]) == 32
    ready = objs.wait_condition("m", "Ready", "True")
    wait_for(
        lambda: objs.get("m")["status"]["observedGeneration"] == 2, timeout=30, what="observedGeneration 2"
    )
    assert objs.condition("m", "Ready")["observedGeneration"] == 2 and ready["reason"] == "Placed"
    assert objs.get("m")["status"]["placementGeneration"] == 2


def test_load_update_replaces_with_moves(objs: Objects, fleet: Any):
    selector, _ = fleet(2, 4)
    objs.put_loads("loads", loads_json(1))
    objs.create(
        deployment_body(
            "m",
            selector=selector,
            workload={"configMapRef": {"name": "loads"}},
            drift={"minGain": 0.0, "cooldownSeconds": 0},
        )
    )
    objs.wait_condition("m", "Ready", "True")
    objs.put_loads("loads", loads_json(2, mean=2048.0))
    objs.wait_generation("m", 2)
    status = wait_for(
        lambda: (s := objs.get("m")["status"]).get("placementGeneration") == 2 and s,
        timeout=30,
        what="status gen 2",
    )
    last = status["lastReplacement"]
    assert last["reason"] == "Replaced" and last["moves"] > 0 and last["gain"] > 0
    assert "the loads changed" in last["message"]
    assert objs.condition("m", "Drifted")["reason"] == "Replaced"
    objs.wait_event("m", "Replaced")


def test_gpu_drift_past_threshold_replaces_and_touches_only_its_users(objs: Objects, fleet: Any):
    sel_a, nodes_a = fleet(2, 4)
    sel_b, _ = fleet(2, 4)
    objs.put_loads("loads", loads_json(3))
    ref = {"configMapRef": {"name": "loads"}}
    objs.create(
        deployment_body("a", selector=sel_a, workload=ref, drift={"minGain": 0.01, "cooldownSeconds": 0})
    )
    objs.create(
        deployment_body("b", selector=sel_b, workload=ref, drift={"minGain": 0.01, "cooldownSeconds": 0})
    )
    objs.wait_condition("a", "Ready", "True")
    objs.wait_condition("b", "Ready", "True")
    rv_b = objs.config_map("b-placement")["metadata"]["resourceVersion"]

    slow = profile_body(nodes_a[0], gpus=4, slow={0: 3.0})
    objs.patch_profile_spec(nodes_a[0], slow["spec"])
    objs.wait_generation("a", 2, timeout=30)
    last = wait_for(lambda: _replaced(objs, "a"), timeout=30, what="a Replaced")
    assert "GPU profiles changed" in last["message"] and last["moves"] > 0
    objs.wait_event("a", "Replaced")
    assert objs.config_map("b-placement")["metadata"]["resourceVersion"] == rv_b


def test_gpu_drift_below_threshold_only_reports_drifted(objs: Objects, fleet: Any, operator: Any):
    selector, nodes = fleet(2, 4)
    objs.put_loads("loads", loads_json(4))
    objs.create(
        deployment_body(
            "m",
            selector=selector,
            workload={"configMapRef": {"name": "loads"}},
            drift={"minGain": 0.9, "cooldownSeconds": 0},
        )
    )
    objs.wait_condition("m", "Ready", "True")
    rv = objs.config_map("m-placement")["metadata"]["resourceVersion"]
    objs.patch_profile_spec(nodes[1], profile_body(nodes[1], gpus=4, slow={2: 1.5})["spec"])
    drifted = objs.wait_condition("m", "Drifted", "True", "PerformanceDrift")
    assert "GPU profiles changed" in drifted["message"] and "minGain 90.0%" in drifted["message"]
    drift = objs.get("m")["status"]["drift"]
    assert drift["decision"] == "DriftBelowThreshold" and drift["loss"] > 0
    objs.wait_event("m", "DriftBelowThreshold")
    assert objs.config_map("m-placement")["metadata"]["resourceVersion"] == rv
    labels = f'kind="PerformanceDrift",decision="DriftBelowThreshold",name="m",namespace="{objs.ns}"'
    assert operator.count(f"vibe_drift_events_total{{{labels}}}") == 1
    assert objs.condition("m", "Ready")["status"] == "True"


def test_cooldown_defers_the_replacement(objs: Objects, fleet: Any):
    selector, nodes = fleet(2, 4)
    objs.create(deployment_body("m", selector=selector, drift={"minGain": 0.01, "cooldownSeconds": 6}))
    objs.wait_condition("m", "Ready", "True")
    objs.patch_profile_spec(nodes[0], profile_body(nodes[0], gpus=4, slow={0: 3.0, 1: 3.0})["spec"])
    objs.wait_condition("m", "Drifted", "True", "PerformanceDrift", timeout=5)
    assert objs.get("m")["status"]["drift"]["decision"] == "CooldownActive"
    objs.wait_event("m", "CooldownActive")
    objs.wait_generation("m", 2, timeout=30)  # re-placed by itself once the cooldown is over
    objs.wait_condition("m", "Drifted", "False", "Replaced")


def test_missing_load_config_map_then_created(objs: Objects, fleet: Any, operator: Any):
    selector, _ = fleet(2, 4)
    objs.create(deployment_body("m", selector=selector, workload={"configMapRef": {"name": "later"}}))
    c = objs.wait_condition("m", "Ready", "False", "ConfigMapNotFound")
    assert f"ConfigMap {objs.ns}/later (spec.workload.configMapRef) does not exist" in c["message"]
    assert objs.condition("m", "Degraded")["reason"] == "ConfigMapNotFound"
    ev = objs.wait_event("m", "ConfigMapNotFound")
    assert ev["type"] == "Warning" and ev["message"] == c["message"]
    assert objs.config_map("m-placement") is None
    assert operator.count('vibe_reconcile_errors_total{reason="ConfigMapNotFound"}') >= 1
    objs.put_loads("later", loads_json(5))
    objs.wait_condition("m", "Ready", "True", "Placed", timeout=20)
    objs.wait_condition("m", "Degraded", "False")


def test_too_few_gpus_keep_the_last_placement(objs: Objects, fleet: Any):
    selector, _ = fleet(2, 4)
    objs.create(deployment_body("m", selector=selector, count=8, slots=3))
    objs.wait_condition("m", "Ready", "True")
    rv = objs.config_map("m-placement")["metadata"]["resourceVersion"]
    objs.patch("m", {"spec": {"gpus": {"count": 16}}})
    c = objs.wait_condition("m", "Ready", "False", "InsufficientGPUs")
    assert "matches 2 nodes with 8 profiled GPUs" in c["message"] and "gpus.count is 16" in c["message"]
    assert "previous spec (generation 1) stays in service" in c["message"]
    assert c["observedGeneration"] == 2
    assert objs.condition("m", "Degraded")["reason"] == "InsufficientGPUs"
    ev = objs.wait_event("m", "InsufficientGPUs")
    assert ev["type"] == "Warning" and "gpus.count is 16" in ev["message"]
    assert objs.config_map("m-placement")["metadata"]["resourceVersion"] == rv
    assert objs.get("m")["status"]["placementGeneration"] == 1


def test_infeasible_slots_keep_the_last_placement(objs: Objects, fleet: Any):
    selector, _ = fleet(2, 4, memory_bytes=2 * 2**30)
    body = deployment_body("m", selector=selector, count=8, slots=3)
    body["spec"]["model"]["layers"] = 8
    objs.create(body)
    objs.wait_condition("m", "Ready", "True")
    rv = objs.config_map("m-placement")["metadata"]["resourceVersion"]
    objs.patch("m", {"spec": {"gpus": {"slotsPerGPU": 8}}})
    c = objs.wait_condition("m", "Ready", "False", "InfeasibleSlots")
    assert "needs 2.6 GiB of expert weights per GPU" in c["message"]
    assert "previous spec (generation 1) stays in service" in c["message"]
    ev = objs.wait_event("m", "InfeasibleSlots")
    assert ev["type"] == "Warning" and "needs 2.6 GiB" in ev["message"]
    assert objs.config_map("m-placement")["metadata"]["resourceVersion"] == rv


def test_unparsable_loads_keep_the_last_placement(objs: Objects, fleet: Any):
    selector, _ = fleet(2, 4)
    objs.put_loads("loads", loads_json(6))
    objs.create(deployment_body("m", selector=selector, workload={"configMapRef": {"name": "loads"}}))
    objs.wait_condition("m", "Ready", "True")
    cm = objs.config_map("m-placement")
    objs.put_loads("loads", "{not json")
    c = objs.wait_condition("m", "Degraded", "True", "InvalidLoads")
    assert "is not valid JSON" in c["message"] and "keeping placement generation 1" in c["message"]
    assert objs.condition("m", "Ready")["status"] == "True"
    assert objs.wait_event("m", "InvalidLoads")["type"] == "Warning"
    objs.put_loads("loads", json.dumps({"loads": [[1.0] * 16] * 3}))  # wrong shape
    c = objs.wait_condition("m", "Degraded", "True", "ShapeMismatch")
    assert "the model has 4x16" in c["message"]
    assert objs.wait_event("m", "ShapeMismatch")["type"] == "Warning"
    assert objs.config_map("m-placement")["metadata"]["resourceVersion"] == cm["metadata"]["resourceVersion"]


def test_delete_removes_the_config_map(objs: Objects, fleet: Any):
    selector, _ = fleet(2, 4)
    objs.create(deployment_body("m", selector=selector))
    objs.wait_condition("m", "Ready", "True")
    objs.delete("m")
    wait_for(lambda: objs.config_map("m-placement") is None, timeout=60, what="ConfigMap garbage-collected")


def _replaced(objs: Objects, name: str) -> dict | None:
    last = objs.get(name)["status"].get("lastReplacement") or {}
    return last if last.get("reason") == "Replaced" else None
