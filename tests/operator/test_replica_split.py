"""spec.workload.replicaSplit: the weighted replica split planned, written, and refused where an engine
cannot take weights.

The cluster tests create MoEDeployments through the real kube-apiserver and run the real operator; the
others run the operator's pure planning on the real placement engine.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from operator_builders import deployment_body, profile_body
from operator_harness import G, V, put_fleet

from vibe import api
from vibe.engines import ENGINES
from vibe.operator.gpus import profile_snapshot, resolve
from vibe.operator.planning import WRITE, Inputs, plan
from vibe.operator.problems import Problem
from vibe.operator.workload import Loads
from vibe.placement import read_placement
from vibe.placement.synthetic import skewed_loads
from vibe.spec import parse_spec

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.timezone.utc)
MIX = [{"tokens": 256, "weight": 0.5}, {"tokens": 4096, "weight": 0.5}]


def _body(formats: list[str] | None = None, **workload: Any) -> dict[str, Any]:
    extra = {"output": {"formats": formats}} if formats else {}
    return deployment_body(
        "m", count=8, slots=3, workload={"configMapRef": {"name": "l"}, **workload}, **extra
    )


def _inputs(body: dict[str, Any]) -> Inputs:
    spec = parse_spec(body["spec"])
    gpus = {"n0": 4, "n1": 4}
    nodes = {n: {"pool": "a"} for n in gpus}
    profiles = {n: profile_snapshot(profile_body(n, gpus=k, slow={1: 1.5})) for n, k in gpus.items()}
    res = resolve(spec, namespace="ns", nodes=nodes, profiles=profiles, now=NOW, profile_ttl_s=1e9)
    m = spec.model
    return Inputs(
        spec, res, Loads(skewed_loads(m.layers, m.experts, mean_tokens=2000, seed=1), "ns/l:loads.json")
    )


def test_weighted_is_planned_with_weights_and_its_baseline_weighted_too():
    inp = _inputs(_body(["vibe"], stepMix=MIX, replicaSplit="weighted"))
    assert inp.spec.workload.replica_split == "weighted"
    p = plan(inp, None, prior_drift=None, now=NOW, time_budget_s=0.2)
    assert p.action == WRITE and p.result is not None and p.baseline is not None
    assert p.result.placement.weights is not None and p.baseline.placement.weights is not None
    assert p.result.info["replicaSplit"] == "weighted"
    s = p.summary
    assert s["lowerBoundSeconds"] <= s["stepTimeSeconds"] <= s["baseline"]["stepTimeSeconds"]
    even = plan(_inputs(_body(["vibe"], stepMix=MIX)), None, prior_drift=None, now=NOW, time_budget_s=0.2)
    assert even.result is not None and even.result.placement.weights is None


@pytest.mark.parametrize("formats", [None, ["vibe", "vllm"], ["trtllm"], ["eplb"]])
def test_weighted_for_an_engine_that_splits_evenly_is_a_condition(formats):
    with pytest.raises(Problem) as e:
        plan(_inputs(_body(formats, replicaSplit="weighted")), None, prior_drift=None, now=NOW)
    assert e.value.reason == "UnsupportedReplicaSplit"
    assert "replicaSplit" in e.value.message and "cannot" in e.value.message


def test_the_default_split_keeps_the_placement_key():
    old = parse_spec(_body()["spec"]).placement_key
    assert parse_spec(_body(replicaSplit="even")["spec"]).placement_key == old
    assert parse_spec(_body(replicaSplit="weighted")["spec"]).placement_key != old


# ---- the API server and the operator (cluster)


@pytest.mark.cluster
def test_an_unknown_split_is_refused_by_the_api_server(crds, kube, namespace):
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    body = deployment_body("bad", count=8, slots=2, workload={"replicaSplit": "proportional"})
    with pytest.raises(ApiException) as e:
        client.CustomObjectsApi(kube).create_namespaced_custom_object(
            G, V, namespace, api.MOEDEPLOYMENT_PLURAL, body
        )
    assert e.value.status == 422
    message = json.loads(e.value.body)["message"]
    assert 'spec.workload.replicaSplit: Unsupported value: "proportional"' in message


@pytest.mark.cluster
def test_the_operator_writes_the_weights_or_says_why_not(objs: Any, gpu_nodes: Any):
    selector, _ = put_fleet(gpu_nodes, objs, "split", slow={1: 1.5})
    objs.put_loads("loads", json.dumps({"loads": skewed_loads(4, 16, mean_tokens=2000, seed=1).tolist()}))
    workload = {"configMapRef": {"name": "loads"}, "stepMix": MIX, "replicaSplit": "weighted"}
    objs.create(
        deployment_body(
            "weighted", selector=selector, count=8, slots=3, workload=workload, output={"formats": ["vibe"]}
        )
    )
    objs.wait_condition("weighted", "Ready", "True", "Placed")
    got = objs.get("weighted")
    assert got["spec"]["workload"]["replicaSplit"] == "weighted"
    cm = objs.config_map("weighted-placement")
    assert cm is not None
    doc = json.loads(cm["data"][ENGINES["vibe"].key])
    assert doc["replicaSplit"] == "weighted" and doc["formatVersion"] == "1.1"
    placement = read_placement(doc)
    assert placement.weights is not None
    p = got["status"]["predicted"]
    assert p["lowerBoundSeconds"] <= p["stepTimeSeconds"] <= p["baseline"]["stepTimeSeconds"]

    # the default formats include sglang, whose dispatch cannot take weights: a condition, no placement
    objs.create(deployment_body("refused", selector=selector, count=8, slots=3, workload=workload))
    cond = objs.wait_condition("refused", "Ready", "False", "UnsupportedReplicaSplit")
    assert "sglang" in cond["message"] and "cannot" in cond["message"]
    assert objs.config_map("refused-placement") is None
