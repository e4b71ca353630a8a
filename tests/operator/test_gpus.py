"""GPU resolution: rank order, selectors, pods, curves (measured or scaled), memory, staleness."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from operator_builders import deployment_body, profile_body

from vibe import api
from vibe.operator.gpus import pod_snapshot, profile_snapshot, resolve
from vibe.operator.problems import Problem
from vibe.operator.spec import parse_spec

NOW = dt.datetime.now(dt.timezone.utc)


def world(n_nodes: int = 3, gpus: int = 4, **kw):
    nodes = {f"n{i}": {"pool": "a"} for i in range(n_nodes)}
    nodes["other"] = {"pool": "b"}
    profiles = {n: profile_snapshot(profile_body(n, gpus=gpus, **kw)) for n in nodes}
    return nodes, profiles


def test_node_selector_ranks_nodes_by_name_and_gpus_by_index():
    nodes, profiles = world()
    spec = parse_spec(deployment_body("x", count=6)["spec"])
    res = resolve(spec, namespace="ns", nodes=nodes, profiles=profiles, now=NOW, profile_ttl_s=300)
    assert [g.id for g in res.gpus] == ["n0/0", "n0/1", "n0/2", "n0/3", "n1/0", "n1/1"]
    assert res.nodes == ["n0", "n1"]
    assert res.curve_source == "measured" and not res.notes and not res.stale_nodes


def test_too_few_gpus_is_a_problem_saying_how_many():
    nodes, profiles = world()
    del profiles["n2"]
    spec = parse_spec(deployment_body("x", count=16)["spec"])
    with pytest.raises(Problem) as e:
        resolve(spec, namespace="ns", nodes=nodes, profiles=profiles, now=NOW, profile_ttl_s=300)
    assert e.value.reason == "InsufficientGPUs"
    assert "matches 3 nodes with 8 profiled GPUs" in e.value.message
    assert "without a GPUProfile: n2" in e.value.message and "gpus.count is 16" in e.value.message


def test_other_shape_is_scaled_and_said():
    nodes, profiles = world(shapes=((4096, 1536, "bf16"),))
    spec = parse_spec(deployment_body("x", count=4)["spec"])
    res = resolve(spec, namespace="ns", nodes=nodes, profiles=profiles, now=NOW, profile_ttl_s=300)
    assert res.curve_source == "scaled"
    assert "scaled from 4096x1536 bf16" in res.notes[0]
    # DeepSeek's fp8 expert is 7168*2048 bytes vs Qwen's 4096*1536*2: about 1.17x the time above overhead.
    measured = profiles["n0"].gpus[0].curves[0].seconds
    assert np.all(res.fleet.gpus[0].seconds > measured)


def test_memory_that_cannot_hold_the_slots_is_infeasible():
    nodes, profiles = world(memory_bytes=16 * 2**30)
    body = deployment_body("x", count=4, slots=64)
    body["spec"]["model"]["layers"] = 58
    with pytest.raises(Problem) as e:
        resolve(
            parse_spec(body["spec"]),
            namespace="ns",
            nodes=nodes,
            profiles=profiles,
            now=NOW,
            profile_ttl_s=300,
        )
    assert e.value.reason == "InfeasibleSlots"
    assert "58 layers x 64 slots x 42 MiB" in e.value.message and "has 16 GiB" in e.value.message


def test_stale_profiles_are_listed():
    nodes, profiles = world()
    old = (NOW - dt.timedelta(seconds=900)).strftime("%Y-%m-%dT%H:%M:%SZ")
    profiles["n0"] = profile_snapshot(profile_body("n0", gpus=4, heartbeat=old))
    spec = parse_spec(deployment_body("x", count=8)["spec"])
    res = resolve(spec, namespace="ns", nodes=nodes, profiles=profiles, now=NOW, profile_ttl_s=300)
    assert res.stale_nodes == ("n0",)
    assert res.stale_at is not None and res.stale_at > NOW


def pod(name: str, node: str, labels: dict, owner: str | None = None):
    meta = {"name": name, "namespace": "ns", "labels": labels}
    if owner:
        meta["ownerReferences"] = [{"kind": owner, "name": "x", "uid": "u"}]
    return pod_snapshot({"metadata": meta, "spec": {"nodeName": node}, "status": {"phase": "Running"}})


def resolve_three_lws_pods(nodes, profiles, *more):
    """Resolve 6 GPUs (2 per pod) for the pods labelled app=m: p-a, p-b on n0 (LWS worker index 0, 1),
    p-c on n1 (index 2), listed out of rank order, plus ``more``."""
    lws = api.LWS_LABEL_WORKER_INDEX
    pods = [
        pod("p-b", "n0", {"app": "m", lws: "1"}),
        pod("p-a", "n0", {"app": "m", lws: "0"}),
        pod("p-c", "n1", {"app": "m", lws: "2"}),
        *more,
    ]
    body = deployment_body("x", count=6)
    body["spec"]["gpus"] = {
        "podSelector": {"matchLabels": {"app": "m"}},
        "gpusPerPod": 2,
        "count": 6,
        "slotsPerGPU": 3,
    }
    return resolve(
        parse_spec(body["spec"]),
        namespace="ns",
        nodes=nodes,
        profiles=profiles,
        pods=pods,
        now=NOW,
        profile_ttl_s=300,
    )


def test_pods_rank_by_lws_index_and_share_nodes_disjointly():
    nodes, profiles = world(n_nodes=2, gpus=4)
    other = pod("other", "n1", {"app": "z", api.LWS_LABEL_WORKER_INDEX: "0"})
    res = resolve_three_lws_pods(nodes, profiles, other)
    assert [g.id for g in res.gpus] == ["n0/0", "n0/1", "n0/2", "n0/3", "n1/0", "n1/1"]


def test_statefulset_ordinals_rank_pods():
    a = pod("web-10", "n0", {}, owner="StatefulSet")
    b = pod("web-9", "n0", {}, owner="StatefulSet")
    assert b.rank < a.rank


def test_grove_pods_rank_as_dynamo_numbers_the_nodes():
    """Under Dynamo's Grove path: leader clique first, then worker pod i at i + 1, per scaling-group
    replica; the same order the serving side derives (vibe.serving.rankmap.grove_node_rank)."""
    from vibe.serving.rankmap import grove_node_rank

    def grove(name: str, clique: str, index: int, replica: int = 0):
        labels = {
            api.GROVE_LABEL_PCLQ: clique,
            api.GROVE_LABEL_PCLQ_POD_INDEX: str(index),
            api.GROVE_LABEL_PCSG_REPLICA: str(replica),
        }
        return pod(name, "n0", labels)

    pods = [
        grove("z-wkr-1", "d-0-decode-wkr", 1),
        grove("y-ldr-0", "d-0-decode-ldr", 0),
        grove("x-wkr-0", "d-0-decode-wkr", 0),
        grove("a-ldr-0", "d-1-decode-ldr", 0, replica=1),
    ]
    ordered = sorted(pods, key=lambda p: p.rank)
    assert [p.name for p in ordered] == ["y-ldr-0", "x-wkr-0", "z-wkr-1", "a-ldr-0"]
    for p in pods[:3]:
        labels = p.labels
        assert p.rank[1] == grove_node_rank(
            labels[api.GROVE_LABEL_PCLQ], labels[api.GROVE_LABEL_PCLQ_POD_INDEX]
        )
    # Not a leader or worker clique (a single-node component): name order, as before.
    assert grove("b", "d-0-frontend", 0).rank == (0, 1 << 30, "b")


def test_unscheduled_or_finished_pods_are_ignored():
    assert pod_snapshot({"metadata": {"name": "p"}, "spec": {}, "status": {}}) is None
    assert (
        pod_snapshot({"metadata": {"name": "p"}, "spec": {"nodeName": "n"}, "status": {"phase": "Failed"}})
        is None
    )


def test_staleness_comes_from_the_agents_lease():
    """The agent renews a Lease and no longer rewrites the profile's status: renewTime is the heartbeat."""
    from vibe.operator.gpus import with_leases

    nodes, profiles = world(heartbeat=None)  # profiles written by a Lease-era agent: no status heartbeat
    old = (NOW - dt.timedelta(seconds=900)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    fresh = NOW.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    leases = {"n0": {"renewTime": old, "leaseDurationSeconds": 30}, "n1": {"renewTime": fresh}}
    spec = parse_spec(deployment_body("x", count=12)["spec"])
    res = resolve(
        spec, namespace="ns", nodes=nodes, profiles=with_leases(profiles, leases), now=NOW, profile_ttl_s=300
    )
    assert res.stale_nodes == ("n0",)
    assert res.stale_at is not None and res.stale_at > NOW  # n1's Lease + TTL
    # Without Leases (403: a chart from before them) the profiles' own heartbeats decide, as before.
    assert with_leases(profiles, None) is profiles


def test_gpu_uuids_claimed_by_two_nodes_are_ignored():
    """A node that claims another node's GPU (a spoofing agent, a cloned image) takes nobody's GPUs."""
    nodes, profiles = world(n_nodes=2, gpus=4)
    liar = profile_body("n1", gpus=4)
    liar["spec"]["gpus"][3]["uuid"] = "GPU-n0-0"
    profiles["n1"] = profile_snapshot(liar)
    spec = parse_spec(deployment_body("x", count=6)["spec"])
    res = resolve(spec, namespace="ns", nodes=nodes, profiles=profiles, now=NOW, profile_ttl_s=300)
    assert [g.id for g in res.gpus] == ["n0/1", "n0/2", "n0/3", "n1/0", "n1/1", "n1/2"]
    assert "GPU-n0-0 on n0, n1" in res.notes[0]
    with pytest.raises(Problem) as e:
        resolve(
            parse_spec(deployment_body("x", count=8)["spec"]),
            namespace="ns", nodes=nodes, profiles=profiles, now=NOW, profile_ttl_s=300,
        )  # fmt: skip
    assert e.value.reason == "InsufficientGPUs" and "claimed by more than one GPUProfile" in e.value.message


def test_pods_take_the_gpus_the_kubelet_gave_them_and_the_rule_is_a_noted_fallback():
    """The agent reported (kubelet pod-resources) that p-a holds GPUs 2 and 3 of n0 and p-b GPU 0 and 1:
    the gpusPerPod rule would have given p-a 0 and 1. p-c on n1 is not reported: the rule, with a note."""
    nodes, _ = world(n_nodes=2, gpus=4)
    body_n0 = profile_body("n0", gpus=4)
    body_n0["spec"]["pods"] = [
        {"namespace": "ns", "name": "p-a", "gpus": ["GPU-n0-3", "GPU-n0-2"]},
        {"namespace": "ns", "name": "p-b", "gpus": ["GPU-n0-0", "GPU-n0-1"]},
        {"namespace": "other", "name": "p-a", "gpus": []},
    ]
    profiles = {"n0": profile_snapshot(body_n0), "n1": profile_snapshot(profile_body("n1", gpus=4))}
    res = resolve_three_lws_pods(nodes, profiles)
    assert [g.id for g in res.gpus] == ["n0/2", "n0/3", "n0/0", "n0/1", "n1/0", "n1/1"]
    assert any("1 pod(s) assumed by the gpusPerPod rule (p-c)" in n for n in res.notes)


@pytest.mark.parametrize(("scale", "shown"), [(1e-300, "e-30"), (1e30, "e+2")])
def test_absurd_curves_are_refused_as_absurd(scale: float, shown: str):
    """1e-300 s or 1e30 s per expert is a corrupt profile or a unit mistake, not a fast or slow GPU."""
    nodes, profiles = world(slow={0: scale})
    spec = parse_spec(deployment_body("x", count=4)["spec"])
    with pytest.raises(Problem) as e:
        resolve(spec, namespace="ns", nodes=nodes, profiles=profiles, now=NOW, profile_ttl_s=300)
    assert e.value.reason == "InvalidCurve" and "absurd" in e.value.message and shown in e.value.message
    assert "GPU 'n0/0'" in e.value.message
