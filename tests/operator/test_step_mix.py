"""spec.workload's step mix: what the API server refuses, and what the operator plans for.

The cluster tests create MoEDeployments through the real kube-apiserver; the others run the operator's
pure planning on the real placement engine.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from typing import Any

import numpy as np
import pytest
from operator_builders import deployment_body, profile_body
from operator_harness import G, V, put_fleet

from vibe import api
from vibe.operator.gpus import profile_snapshot, resolve
from vibe.operator.planning import (
    MAX_SAMPLED_SLOTS,
    MAX_SAMPLED_WORK,
    WRITE,
    Inputs,
    plan,
    routing_of,
    step_mix_of,
)
from vibe.operator.problems import Problem
from vibe.operator.workload import Loads
from vibe.placement.routing import StepMix
from vibe.placement.synthetic import skewed_loads
from vibe.spec import parse_spec

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.timezone.utc)
MIX = [{"tokens": 64, "weight": 0.7}, {"tokens": 2048, "weight": 0.3}]


def _body(**workload: Any) -> dict[str, Any]:
    return deployment_body("m", count=8, slots=3, workload={"configMapRef": {"name": "l"}, **workload})


def _inputs(body: dict[str, Any], gpus: dict[str, int] | None = None) -> Inputs:
    spec = parse_spec(body["spec"])
    gpus = gpus or {"n0": 4, "n1": 4}
    nodes = {n: {"pool": "a"} for n in gpus}
    profiles = {n: profile_snapshot(profile_body(n, gpus=k)) for n, k in gpus.items()}
    res = resolve(spec, namespace="ns", nodes=nodes, profiles=profiles, now=NOW, profile_ttl_s=1e9)
    m = spec.model
    return Inputs(
        spec, res, Loads(skewed_loads(m.layers, m.experts, mean_tokens=64, seed=1), "ns/l:loads.json")
    )


# ---- parsing and planning (no cluster)


def test_the_step_mix_is_parsed_and_planned_for():
    inp = _inputs(_body(stepMix=MIX, dispatch="even", routingSamples=4))
    w = inp.spec.workload
    assert w.step_mix == ((64, 0.7), (2048, 0.3)) and w.dispatch == "even" and w.routing_samples == 4
    p = plan(inp, None, prior_drift=None, now=NOW, time_budget_s=0.2)
    assert p.action == WRITE
    s = p.summary
    assert s["objective"] == "expected" and s["stepMix"] == StepMix((64, 2048), (0.7, 0.3)).as_json()
    assert s["dispatch"] == "even" and s["routingSamples"] == 4
    assert s["lowerBoundSeconds"] <= s["stepTimeSeconds"] <= s["baseline"]["stepTimeSeconds"]
    assert s["meanLoadStepTimeSeconds"] > 0


def test_tokens_per_step_is_the_one_entry_mix_and_the_default_is_the_profiles_own():
    loads = np.full((4, 16), 10.0)  # 160 token-expert pairs per layer, top-4: 40 tokens per step
    one = parse_spec(_body(tokensPerStep=512)["spec"])
    assert step_mix_of(one, loads) == StepMix.one(512)
    assert step_mix_of(parse_spec(_body()["spec"]), loads) == StepMix.one(40)
    mixed = parse_spec(_body(stepMix=MIX)["spec"])
    assert step_mix_of(mixed, loads) == StepMix((64, 2048), (0.7, 0.3))


def test_a_spec_without_a_step_mix_keeps_its_placement_key():
    """The API server fills dispatch and routingSamples for new objects; an object without them (written
    before they existed) and one with the defaults must keep the same key, or an operator upgrade would
    re-place every deployment."""
    old = parse_spec(_body()["spec"]).placement_key
    assert parse_spec(_body(dispatch="round-robin", routingSamples=16)["spec"]).placement_key == old
    assert parse_spec(_body(stepMix=MIX)["spec"]).placement_key != old
    assert parse_spec(_body(dispatch="even")["spec"]).placement_key != old


def test_routing_samples_shrink_on_large_instances():
    spec = parse_spec(_body(stepMix=MIX, routingSamples=64)["spec"])
    small = routing_of(spec, np.ones((4, 16)), 8)
    assert small.samples == 64
    layers = 2000
    big = routing_of(spec, np.ones((layers, 16)), 8)
    assert big.samples == MAX_SAMPLED_SLOTS // (2 * layers * 8 * 3) < 64  # 16 experts on 24 slots
    assert big.samples * 2 * layers * 16 * (24 - 16 + 1) <= MAX_SAMPLED_WORK
    assert big.samples * 2 * layers * 8 * 3 <= MAX_SAMPLED_SLOTS


def test_sglang_static_dispatch_on_gpus_it_cannot_lay_out_is_a_condition():
    """SGLang's static dispatch needs the same number of consecutive ranks on every node: 4 + 2 GPUs is
    not a layout it runs, so the operator says so instead of pricing something else."""
    body = deployment_body(
        "m", count=6, slots=3, workload={"configMapRef": {"name": "l"}, "dispatch": "sglang-static"}
    )
    with pytest.raises(Problem) as e:
        plan(_inputs(body, {"n0": 4, "n1": 2}), None, prior_drift=None, now=NOW, time_budget_s=0.1)
    assert e.value.reason == "InvalidDispatch" and "consecutive ranks" in str(e.value)


# ---- the API server's validation (cluster)


def _create(kube: Any, namespace: str, body: dict) -> tuple[int, str]:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        client.CustomObjectsApi(kube).create_namespaced_custom_object(
            G, V, namespace, api.MOEDEPLOYMENT_PLURAL, body
        )
    except ApiException as e:
        return e.status, json.loads(e.body).get("message", e.body)
    return 201, ""


BAD = [
    ({"stepMix": MIX, "tokensPerStep": 64}, "give workload.stepMix or workload.tokensPerStep"),
    ({"stepMix": []}, "spec.workload.stepMix in body should have at least 1 items"),
    ({"stepMix": [{"tokens": 64}] * 2}, 'stepMix[1]: Duplicate value'),
    ({"stepMix": [{"tokens": t} for t in range(1, 18)]}, "stepMix: Too many: 17: must have at most 16 items"),
    ({"stepMix": [{"tokens": 0}]}, "stepMix[0].tokens in body should be greater than or equal to 1"),
    ({"stepMix": [{"tokens": 64, "weight": 0}]}, "stepMix[0].weight in body should be greater than 0"),
    ({"stepMix": [{"weight": 1}]}, "spec.workload.stepMix[0].tokens: Required value"),
    ({"dispatch": "random"}, 'spec.workload.dispatch: Unsupported value: "random"'),
    ({"routingSamples": 0}, "spec.workload.routingSamples in body should be greater than or equal to 1"),
    ({"routingSamples": 65}, "spec.workload.routingSamples in body should be less than or equal to 64"),
]  # fmt: skip


@pytest.mark.cluster
@pytest.mark.parametrize(("workload", "message"), BAD, ids=[m[:40] for _, m in BAD])
def test_bad_step_mixes_are_refused(crds, kube, namespace, workload, message):
    body = deployment_body("bad", count=8, slots=2, workload=workload)
    code, text = _create(kube, namespace, body)
    assert code == 422, text
    assert message in text


@pytest.mark.cluster
def test_a_step_mix_gets_its_defaults(crds, kube, namespace):
    from kubernetes import client

    body = deployment_body(
        "mix", count=8, slots=2, workload={"stepMix": [{"tokens": 64}, {"tokens": 4096, "weight": 0.2}]}
    )
    code, text = _create(kube, namespace, copy.deepcopy(body))
    assert code == 201, text
    got = client.CustomObjectsApi(kube).get_namespaced_custom_object(
        G, V, namespace, api.MOEDEPLOYMENT_PLURAL, "mix"
    )
    w = got["spec"]["workload"]
    assert w["stepMix"] == [{"tokens": 64, "weight": 1}, {"tokens": 4096, "weight": 0.2}]
    assert w["dispatch"] == "round-robin" and w["routingSamples"] == 16
    spec = parse_spec(got["spec"])
    assert spec.workload.step_mix == ((64, 1.0), (4096, 0.2))
    assert spec.placement_key != parse_spec(deployment_body("x", count=8, slots=2)["spec"]).placement_key


# ---- the operator end to end (cluster)


@pytest.mark.cluster
def test_the_operator_places_for_the_step_mix_and_says_so(objs: Any, gpu_nodes: Any):
    selector, _ = put_fleet(gpu_nodes, objs, "mix", slow={1: 1.5})
    objs.put_loads("loads", json.dumps({"loads": skewed_loads(4, 16, mean_tokens=64, seed=1).tolist()}))
    workload = {"configMapRef": {"name": "loads"}, "stepMix": MIX, "dispatch": "sglang-static"}
    objs.create(deployment_body("mix", selector=selector, count=8, slots=3, workload=workload))
    objs.wait_condition("mix", "Ready", "True", "Placed")
    p = objs.get("mix")["status"]["predicted"]
    assert p["objective"] == "expected" and p["dispatch"] == "sglang-static" and p["routingSamples"] == 16
    assert p["stepMix"] == [{"tokens": 64, "weight": 0.7}, {"tokens": 2048, "weight": 0.3}]
    assert p["lowerBoundSeconds"] <= p["stepTimeSeconds"] <= p["baseline"]["stepTimeSeconds"]
    assert p["meanLoadStepTimeSeconds"] > 0

    # six of the eight GPUs: 4 on one node, 2 on the other, a layout SGLang's static dispatch never runs
    objs.create(deployment_body("uneven", selector=selector, count=6, slots=3, workload=workload))
    cond = objs.wait_condition("uneven", "Ready", "False", "InvalidDispatch")
    assert "consecutive ranks" in cond["message"]


@pytest.mark.cluster
def test_a_drift_re_placement_chooses_and_reports_by_the_expected_objective(objs: Any, gpu_nodes: Any):
    """A GPU slows 1.5x under a decode-heavy step mix: the operator's re-placement is exactly the one
    ``replace_incremental`` chooses on the spec's sampled steps from the placement in service (not the
    mean-load search's), and status, the drift decision and the ConfigMap's summary give its
    expected-objective figures: step time, bound, gap and gain vs the placement in service."""
    from vibe.cluster.waiting import wait_for
    from vibe.operator.output import read_back
    from vibe.placement import evaluate, replace_incremental

    selector, nodes = put_fleet(gpu_nodes, objs, "mixd")
    loads = skewed_loads(4, 16, mean_tokens=64, seed=1)
    objs.put_loads("loads", json.dumps({"loads": loads.tolist()}))
    mix = [{"tokens": 8, "weight": 0.8}, {"tokens": 256, "weight": 0.2}]
    workload = {"configMapRef": {"name": "loads"}, "stepMix": mix}
    drift = {"minGain": 0.0, "cooldownSeconds": 0, "replacementCostSeconds": 0}
    objs.create(deployment_body("d", selector=selector, count=8, slots=3, workload=workload, drift=drift))
    objs.wait_condition("d", "Ready", "True", "Placed")
    spec = parse_spec(objs.get("d")["spec"])
    m = spec.model
    have = read_back(objs.config_map("d-placement"), layers=m.layers, experts=m.experts, slots_per_gpu=3)
    assert have is not None and have.placement is not None

    slowed = profile_body(nodes[0], gpus=4, slow={1: 1.5})
    objs.patch_profile_spec(nodes[0], slowed["spec"])
    cm = objs.wait_generation("d", 2, timeout=60)
    status = wait_for(
        lambda: (st := objs.get("d")["status"]).get("placementGeneration") == 2 and st,
        timeout=30,
        what="status of placement generation 2",
    )

    # the same inputs, rebuilt from what the test put in the cluster, through the placement engine
    now = dt.datetime.now(dt.timezone.utc)
    profiles = {
        nodes[0]: profile_snapshot(slowed),
        nodes[1]: profile_snapshot(profile_body(nodes[1], gpus=4)),
    }
    res = resolve(
        spec,
        namespace=objs.ns,
        nodes={n: dict(selector) for n in nodes},
        profiles=profiles,
        now=now,
        profile_ttl_s=1e9,
    )
    assert not isinstance(res, Problem)
    routing = routing_of(spec, loads, len(res.fleet))
    want = replace_incremental(
        have.placement, loads, res.fleet, max_moves=spec.drift.max_moves, time_budget_s=0.2, routing=routing
    )
    cur = evaluate(have.placement, loads, res.fleet, routing=routing).step_time_s
    got = read_back(cm, layers=m.layers, experts=m.experts, slots_per_gpu=3)
    assert got is not None and got.placement is not None
    np.testing.assert_array_equal(got.placement.phy2log, want.placement.phy2log)
    assert want.moves > 0 and want.info["objective"] == "expected"
    by_mean = replace_incremental(
        have.placement,
        routing.mean_loads_of_mix(),
        res.fleet,
        max_moves=spec.drift.max_moves,
        time_budget_s=0.2,
    )
    assert not np.array_equal(
        by_mean.placement.phy2log, want.placement.phy2log
    )  # what the operator did before
    assert evaluate(by_mean.placement, loads, res.fleet, routing=routing).step_time_s > want.step_time_s

    p = status["predicted"]
    assert p["objective"] == "expected" and p["stepMix"] == mix
    assert p["stepTimeSeconds"] == pytest.approx(want.step_time_s, rel=1e-5)
    assert p["lowerBoundSeconds"] == pytest.approx(want.lower_bound_s, rel=1e-5)
    assert p["gapToBound"] == pytest.approx(want.gap, rel=1e-4)
    gain = 1 - want.step_time_s / cur
    assert gain > 0
    last = status["lastReplacement"]
    assert (
        last["reason"] == "Replaced"
        and last["moves"] == want.moves
        and last["gain"] == pytest.approx(gain, rel=1e-4)
    )
    assert f"{cur * 1e3:.3f} ms per step" in last["message"]  # the placement in service, priced alike
    assert f"{want.moves} moves would take {want.step_time_s * 1e3:.3f} ms" in last["message"]
    summary = json.loads(cm["metadata"]["annotations"][api.ANNOTATION_SUMMARY])
    assert summary["objective"] == "expected" and summary["stepMix"] == mix
    assert summary["stepTimeSeconds"] == p["stepTimeSeconds"]
