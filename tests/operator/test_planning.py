"""The decision at the heart of a reconcile, against the real placement engine (no cluster).

``render_in_service`` plays the ConfigMap round trip: what ``output`` writes is what the next plan reads.
"""

from __future__ import annotations

import copy
import datetime as dt
import json

import pytest
from operator_builders import deployment_body, profile_body

from vibe.contract import content_hash
from vibe.operator import output
from vibe.operator.compute import compute
from vibe.operator.gpus import profile_snapshot, resolve
from vibe.operator.planning import (
    BELOW_THRESHOLD,
    COOLDOWN,
    NOT_WORTH,
    NOTHING,
    REPLACED,
    WRITE,
    Inputs,
    plan,
)
from vibe.operator.problems import Problem
from vibe.operator.spec import parse_spec
from vibe.operator.workload import Loads, from_config_map, uniform
from vibe.placement.synthetic import skewed_loads

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.timezone.utc)


def inputs(body=None, slow=None, loads_seed=1, mean=512.0) -> Inputs:
    body = body or deployment_body("m", workload={"configMapRef": {"name": "l"}})
    spec = parse_spec(body["spec"])
    nodes = {"n0": {"pool": "a"}, "n1": {"pool": "a"}}
    profiles = {n: profile_snapshot(profile_body(n, gpus=4, slow=(slow or {}).get(n))) for n in nodes}
    res = resolve(spec, namespace="ns", nodes=nodes, profiles=profiles, now=NOW, profile_ttl_s=1e9)
    m = spec.model
    loads = Loads(skewed_loads(m.layers, m.experts, mean_tokens=mean, seed=loads_seed), "ns/l:loads.json")
    return Inputs(spec, res, loads)


def in_service(inp: Inputs, now=NOW, generation=1, prior=None):
    """Plan from ``prior`` (or nothing), write what it says, read it back like the next reconcile."""
    p, core = compute(inp, prior, None, now, 0.2)
    assert p.action == WRITE
    placed_at = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    data, ann = output.finish(
        core, generation=generation, keys=inp.keys, placed_at=placed_at, summary=p.summary
    )
    meta = {
        "name": "m-placement",
        "resourceVersion": "1",
        "annotations": ann,
        "ownerReferences": [{"uid": "u"}],
    }
    obj = {"metadata": meta, "data": data}
    m = inp.spec.model
    return output.read_back(
        obj, layers=m.layers, experts=m.experts, slots_per_gpu=inp.spec.gpus.slots_per_gpu
    ), p


def test_first_plan_solves_and_renders_deterministic_data():
    inp = inputs()
    p1, core1 = compute(inp, None, None, NOW, 0.2)
    _, core2 = compute(inputs(), None, None, NOW, 0.2)
    assert p1.action == WRITE and p1.reason == "Placed"
    assert core1 == core2 and content_hash(core1) == content_hash(core2)
    assert sorted(core1) == ["placement.json", "sglang-expert-location.json"]
    doc = json.loads(core1["placement.json"])
    assert doc["gpus"][0] == {"rank": 0, "id": "n0/0", "node": "n0", "uuid": "GPU-n0-0"}
    s = p1.summary
    assert (
        s["baseline"]["policy"] == "token-balanced"
        and s["stepTimeSeconds"] <= s["baseline"]["stepTimeSeconds"]
    )
    assert s["loadsSource"] == "ns/l:loads.json" and s["curveSource"] == "measured"
    # The cached, bound-sharing baseline prices exactly like solving token-balanced outright, by the
    # expected objective of the spec's step mix (here: the profile's own tokens per step).
    from vibe.operator.planning import routing_of
    from vibe.placement import solve

    routing = routing_of(inp.spec, inp.loads.tokens, len(inp.gpus.fleet))
    assert s["objective"] == "expected" and s["stepMix"] == routing.mix.as_json()
    assert s["meanLoadStepTimeSeconds"] > 0 and s["routingSamples"] == 16
    tb = solve(inp.loads.tokens, inp.gpus.fleet, 3, "token-balanced", routing=routing)
    assert p1.baseline.step_time_s == pytest.approx(tb.step_time_s, rel=1e-12)
    assert p1.baseline.lower_bound_s == pytest.approx(tb.lower_bound_s, rel=1e-12)


def test_same_inputs_do_nothing():
    inp = inputs()
    cur, _ = in_service(inp)
    assert cur.placement is not None and cur.generation == 1
    p = plan(inputs(), cur, prior_drift=None, now=NOW)
    assert (p.action, p.reason) == (NOTHING, "UpToDate")


def test_spec_change_resolves_from_scratch():
    cur, _ = in_service(inputs())
    body = deployment_body("m", workload={"configMapRef": {"name": "l"}}, slots=4)
    p = plan(inputs(body), cur, prior_drift=None, now=NOW)
    assert p.action == WRITE and p.reason == "Placed" and "spec change" in p.message


def test_performance_drift_replaces_when_the_gain_is_enough():
    cur, _ = in_service(inputs())
    body = deployment_body(
        "m", workload={"configMapRef": {"name": "l"}}, drift={"minGain": 0.01, "cooldownSeconds": 0}
    )
    p = plan(inputs(body, slow={"n0": {0: 2.0}}), cur, prior_drift=None, now=NOW)
    assert p.action == WRITE and p.reason == REPLACED and p.evaluated_drift
    assert p.drift["kind"] == "PerformanceDrift" and p.drift["gain"] >= 0.01 and p.drift["loss"] > 0
    assert p.result.moves > 0 and p.summary["moves"] == p.result.moves
    assert "GPU profiles changed" in p.message


def test_drift_below_threshold_only_reports_and_is_not_reevaluated():
    cur, _ = in_service(inputs())
    body = deployment_body("m", workload={"configMapRef": {"name": "l"}}, drift={"minGain": 0.9})
    inp = inputs(body, loads_seed=2)
    p = plan(inp, cur, prior_drift=None, now=NOW)
    assert (p.action, p.reason) == (NOTHING, BELOW_THRESHOLD)
    assert p.drift["kind"] == "WorkloadDrift" and "the loads changed" in p.drift["message"]
    again = plan(inp, cur, prior_drift=p.drift, now=NOW)
    assert again.reason == BELOW_THRESHOLD and not again.evaluated_drift


def test_cooldown_defers_then_replaces():
    cur, _ = in_service(inputs())
    body = deployment_body(
        "m", workload={"configMapRef": {"name": "l"}}, drift={"minGain": 0.01, "cooldownSeconds": 600}
    )
    inp = inputs(body, slow={"n0": {0: 2.0}})
    p = plan(inp, cur, prior_drift=None, now=NOW + dt.timedelta(seconds=60))
    assert (p.action, p.reason) == (NOTHING, COOLDOWN)
    assert p.retry_at == NOW + dt.timedelta(seconds=600)
    waiting = plan(inp, cur, prior_drift=p.drift, now=NOW + dt.timedelta(seconds=300))
    assert waiting.reason == COOLDOWN and not waiting.evaluated_drift
    later = plan(inp, cur, prior_drift=p.drift, now=NOW + dt.timedelta(seconds=601))
    assert (later.action, later.reason) == (WRITE, REPLACED)


def test_a_replacement_that_costs_more_than_it_saves_is_not_made():
    """onUpdate restart costs 300 s of serving by default: a gain that saves less over the holding
    time is reported (ReplacementNotWorthIt, with the figures), not acted on; with the cost set to 0 or
    a long enough holding time the same drift re-places, and status says it was worth it."""
    cur, _ = in_service(inputs())
    drift = {"minGain": 0.01, "cooldownSeconds": 0, "holdingSeconds": 600}
    body = deployment_body("m", workload={"configMapRef": {"name": "l"}}, drift=drift,
                           serving={"onUpdate": "restart"})  # fmt: skip
    inp = inputs(body, slow={"n0": {0: 2.0}})
    assert inp.spec.replacement_cost_s == 300
    p = plan(inp, cur, prior_drift=None, now=NOW)
    assert (p.action, p.reason) == (NOTHING, NOT_WORTH) and p.evaluated_drift
    gain = p.drift["gain"]
    assert 0.01 < gain < 0.5 and p.drift["costSeconds"] == 300
    assert p.drift["savedSeconds"] == pytest.approx(gain * 600, rel=1e-5)
    assert "not worth it" in p.message and "onUpdate restart" in p.message
    assert plan(inp, cur, prior_drift=p.drift, now=NOW).reason == NOT_WORTH  # not re-evaluated
    hold = {**drift, "holdingSeconds": int(300 / gain) + 60}
    body["spec"]["drift"] = hold
    worth = plan(inputs(body, slow={"n0": {0: 2.0}}), cur, prior_drift=None, now=NOW)
    assert (worth.action, worth.reason) == (WRITE, REPLACED) and "worth it" in worth.message
    body["spec"]["drift"] = {**drift, "replacementCostSeconds": 0}
    free = plan(inputs(body, slow={"n0": {0: 2.0}}), cur, prior_drift=None, now=NOW)
    assert (free.action, free.reason) == (WRITE, REPLACED)


def test_a_live_vllm_eplb_replacement_is_priced_at_its_weight_copy_not_a_restart():
    """onUpdate eplb (vLLM moves the experts itself, vibe's EPLB policy plugin) costs 15 s by default:
    a drift whose gain over the holding time saves ~20 s re-places there, and is not worth a restart."""
    cur, _ = in_service(inputs())
    probe = deployment_body(
        "m",
        workload={"configMapRef": {"name": "l"}},
        drift={"minGain": 0.01, "cooldownSeconds": 0},
        serving={"onUpdate": "restart"},
    )
    gain = plan(inputs(probe, slow={"n0": {0: 2.0}}), cur, prior_drift=None, now=NOW).drift["gain"]
    drift = {"minGain": 0.01, "cooldownSeconds": 0, "holdingSeconds": max(60, int(20 / gain) + 1)}
    results = {}
    for on_update in ("restart", "eplb"):
        body = deployment_body("m", workload={"configMapRef": {"name": "l"}}, drift=drift,
                               serving={"onUpdate": on_update})  # fmt: skip
        inp = inputs(body, slow={"n0": {0: 2.0}})
        results[on_update] = (inp.spec.replacement_cost_s, plan(inp, cur, prior_drift=None, now=NOW))
    assert results["eplb"][0] == 15 and results["restart"][0] == 300
    assert gain * drift["holdingSeconds"] > 15
    assert (results["eplb"][1].action, results["eplb"][1].reason) == (WRITE, REPLACED)
    assert "onUpdate eplb" in results["eplb"][1].message or "worth it" in results["eplb"][1].message
    assert (results["restart"][1].action, results["restart"][1].reason) == (NOTHING, NOT_WORTH)


def test_max_moves_bounds_the_replacement():
    cur, _ = in_service(inputs())
    body = deployment_body("m", workload={"configMapRef": {"name": "l"}},
                           drift={"minGain": 0.0, "cooldownSeconds": 0, "maxMoves": 3})  # fmt: skip
    p = plan(inputs(body, slow={"n0": {0: 2.0}}), cur, prior_drift=None, now=NOW)
    assert p.action == WRITE and 0 < p.result.moves <= 3


def test_gpus_changed_replace_at_once_even_within_cooldown():
    cur, _ = in_service(inputs())
    inp = inputs()
    renamed = copy.copy(inp.gpus)
    object.__setattr__(
        renamed, "gpus", tuple(type(g)(g.node, g.index, g.uuid + "-new") for g in inp.gpus.gpus)
    )
    p = plan(Inputs(inp.spec, renamed, inp.loads), cur, prior_drift=None, now=NOW)
    assert (p.action, p.reason) == (WRITE, "GPUsChanged")


def test_stale_profiles_keep_the_placement():
    cur, _ = in_service(inputs())
    inp = inputs(slow={"n0": {0: 2.0}})
    object.__setattr__(inp.gpus, "stale_nodes", ("n0",))
    p = plan(inp, cur, prior_drift=None, now=NOW)
    assert (p.action, p.reason) == (NOTHING, "StaleInputs")


def test_config_map_edited_by_hand_is_replaced():
    inp = inputs()
    cur, _ = in_service(inp)
    cur.data["sglang-expert-location.json"] = '{"physical_to_logical_map": [[0]]}'
    m = inp.spec.model
    obj = {"metadata": {"annotations": cur.annotations, "ownerReferences": [{"uid": "u"}]}, "data": cur.data}
    back = output.read_back(
        obj, layers=m.layers, experts=m.experts, slots_per_gpu=inp.spec.gpus.slots_per_gpu
    )
    assert back.placement is None and "content hash" in back.unreadable
    p = plan(inp, back, prior_drift=None, now=NOW)
    assert p.action == WRITE and "unusable" in p.message


def test_output_too_large_is_a_problem():
    # EPLB's log2phy is [layers][experts][slots - experts + 1]: 400 x 16 x 81 numbers, over 1 MB.
    body = deployment_body("m", output={"formats": ["eplb"]}, count=8, slots=12)
    body["spec"]["model"].update(layers=400, experts=16, topK=2, hiddenSize=64, expertIntermediateSize=16)
    with pytest.raises(Problem) as e:
        compute(inputs(body), None, None, NOW, 0.05)
    assert e.value.reason == "OutputTooLarge" and "eplb.json" in e.value.message


def test_loads_from_config_maps():
    spec = parse_spec(deployment_body("m", workload={"configMapRef": {"name": "l"}})["spec"])
    with pytest.raises(Problem, match="does not exist") as e:
        from_config_map(spec, "ns", None)
    assert e.value.reason == "ConfigMapNotFound"
    with pytest.raises(Problem) as e:
        from_config_map(spec, "ns", {"other": "{}"})
    assert e.value.reason == "ConfigMapKeyNotFound" and "keys: other" in e.value.message
    with pytest.raises(Problem) as e:
        from_config_map(spec, "ns", {"loads.json": "{nope"})
    assert e.value.reason == "InvalidLoads"
    with pytest.raises(Problem) as e:
        from_config_map(spec, "ns", {"loads.json": json.dumps({"loads": [[1.0] * 16] * 3})})
    assert e.value.reason == "ShapeMismatch"
    sglang = {"logical_count": [[[1.0] * 16] * 4] * 2}  # the recorder's [steps][layers][experts]
    got = from_config_map(spec, "ns", {"loads.json": json.dumps(sglang)})
    assert got.tokens.shape == (4, 16) and got.source == "ns/l:loads.json"
    with pytest.raises(Problem, match="every layer received no tokens") as e:
        from_config_map(spec, "ns", {"loads.json": json.dumps({"loads": [[0.0] * 16] * 4})})
    assert e.value.reason == "InvalidLoads"
    with pytest.raises(Problem, match=r"layer\(s\) 2 received no tokens"):
        from_config_map(
            spec, "ns", {"loads.json": json.dumps({"loads": [[1.0] * 16] * 2 + [[0.0] * 16, [1.0] * 16]})}
        )
    u = uniform(spec)
    assert u.tokens.shape == (4, 16) and u.tokens[0, 0] == 4096 * 4 / 16 and "uniform" in u.note


def test_problem_pickles_across_the_compute_pool():
    import pickle

    p = pickle.loads(pickle.dumps(Problem("InvalidLoads", "x y")))
    assert (p.reason, p.message) == ("InvalidLoads", "x y")


def test_a_placement_in_service_of_another_shape_is_solved_again_not_a_crash():
    """Same spec, new loads, but the ConfigMap's placement has another slot count than the GPUs give
    (edited, or written by an older version): re-solve. Before, the drift path priced ``None`` and the
    reconcile died with AttributeError on every retry."""
    import dataclasses

    from vibe.placement import Placement

    cur, _ = in_service(inputs())
    import numpy as np

    phy = cur.placement.phy2log  # 8 GPUs x 3 slots; the same experts on 8 GPUs x 4 slots:
    other = Placement(np.concatenate([phy, phy[:, :8]], axis=1), 4, cur.placement.num_experts)
    cur = dataclasses.replace(cur, placement=other)
    p, _ = compute(inputs(loads_seed=7), cur, None, NOW, 0.2)
    assert p.action == WRITE and p.reason == "Placed"
    assert "does not fit" in p.message
