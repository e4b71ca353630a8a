"""GPU resolution: rank order, selectors, pods, curves (measured or scaled), memory, staleness."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from operator_builders import deployment_body, profile_body

from vibe import api
from vibe.operator.gpus import pod_snapshot, profile_snapshot, resolve
from vibe.operator.problems import Problem
from vibe.spec import parse_spec

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


def test_staleness_is_when_the_operator_saw_the_lease_renewed():
    """The agent renews a Lease; the operator judges liveness by when it saw ``renewTime`` change, on its
    own clock, never by the time the agent wrote (issue 20, defect 5): a renewTime in 2096 that no longer
    changes goes stale after the TTL, and an agent whose clock lags 10 minutes but keeps renewing is
    fresh."""
    from vibe.operator.gpus import with_leases
    from vibe.operator.liveness import Liveness

    def stamp(t: dt.datetime) -> str:
        return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    nodes, profiles = world(heartbeat=None)  # profiles written by a Lease-era agent: no status heartbeat
    live = Liveness()
    then = NOW - dt.timedelta(seconds=900)
    ahead = "2096-01-01T00:00:00.000000Z"  # a token may write any renewTime
    live.observe_leases({"n0": {"renewTime": ahead}, "n1": {"renewTime": stamp(then - LAG)}}, then)
    renewed = live.observe_leases({"n0": {"renewTime": ahead}, "n1": {"renewTime": stamp(NOW - LAG)}}, NOW)
    assert renewed == {"n0": then, "n1": NOW}
    spec = parse_spec(deployment_body("x", count=12)["spec"])
    res = resolve(
        spec, namespace="ns", nodes=nodes, profiles=with_leases(profiles, renewed), now=NOW, profile_ttl_s=300
    )
    assert res.stale_nodes == ("n0",)  # stopped 900 s ago, whatever it wrote
    assert res.stale_at == NOW + dt.timedelta(seconds=300)  # n1: seen renewed now, + TTL
    # Without Leases (403: a chart from before them) the profiles' own heartbeats decide, as before.
    assert with_leases(profiles, None) is profiles
    # A Lease that goes away is forgotten (no memory of departed nodes).
    assert live.observe_leases({"n1": {"renewTime": stamp(NOW)}}, NOW) == {"n1": NOW}
    assert set(live.seen) == {"lease/n1"}


LAG = dt.timedelta(minutes=10)


def test_a_uuid_conflict_does_not_punish_the_node_that_claimed_it_first():
    """Node n1 lists n0's GPU UUIDs (a compromised agent): n1's profile is not believed and n0 keeps its
    GPUs (issue 20, defect 8: before, both lost them and a deployment needing 8 went InsufficientGPUs)."""
    nodes, profiles = world(n_nodes=2, gpus=4)
    owners: dict[str, str] = {}
    spec8 = parse_spec(deployment_body("x", count=8)["spec"])
    resolve(spec8, namespace="ns", nodes=nodes, profiles=profiles, now=NOW, profile_ttl_s=300, owners=owners)
    liar = profile_body("n1", gpus=4)
    liar["metadata"]["creationTimestamp"] = "2020-01-01T00:00:00Z"  # even an older profile loses
    for i, g in enumerate(liar["spec"]["gpus"]):
        g["uuid"] = f"GPU-n0-{i}"
    profiles["n1"] = profile_snapshot(liar)
    spec4 = parse_spec(deployment_body("x", count=4)["spec"])
    res = resolve(
        spec4, namespace="ns", nodes=nodes, profiles=profiles, now=NOW, profile_ttl_s=300, owners=owners
    )
    assert [g.id for g in res.gpus] == ["n0/0", "n0/1", "n0/2", "n0/3"]
    assert res.distrusted == ("n1",)
    assert "GPUProfile(s) of n1 list GPU UUIDs another node claimed first" in res.notes[0]
    assert "GPU-n0-0 of n0" in res.notes[0]
    assert not any(u.startswith("n1/") for u in res.available)
    with pytest.raises(Problem) as e:  # only n1's 4 are lost, never n0's
        resolve(
            spec8, namespace="ns", nodes=nodes, profiles=profiles, now=NOW, profile_ttl_s=300, owners=owners
        )
    assert e.value.reason == "InsufficientGPUs" and "4 profiled GPUs" in e.value.message
    # Met together (an operator start, no memory): the older profile keeps the UUID.
    fresh: dict[str, str] = {}
    res = resolve(
        spec4, namespace="ns", nodes=nodes, profiles=profiles, now=NOW, profile_ttl_s=300, owners=fresh
    )
    assert res.distrusted == ("n0",)  # n1's profile is older here: the stated limit of a restart
    # A UUID nobody claims any more is forgotten.
    del profiles["n1"]
    resolve(spec4, namespace="ns", nodes=nodes, profiles=profiles, now=NOW, profile_ttl_s=300, owners=owners)
    assert not [u for u in owners if u.startswith("GPU-n1-")] and owners["GPU-n0-0"] == "n0"


def test_a_profile_listing_more_gpus_than_its_node_has_is_not_used():
    """Issue 20, defect 2: node n0's agent lists 64 GPUs on a Node whose capacity says 4."""
    nodes, profiles = world(n_nodes=2, gpus=4)
    profiles["n0"] = profile_snapshot(profile_body("n0", gpus=64))
    spec = parse_spec(deployment_body("x", count=4)["spec"])
    unchecked = resolve(spec, namespace="ns", nodes=nodes, profiles=profiles, now=NOW, profile_ttl_s=300)
    assert unchecked.nodes == ["n0"]  # the caller checks the nodes used, then resolves again
    res = resolve(
        spec, namespace="ns", nodes=nodes, profiles=profiles, now=NOW, profile_ttl_s=300,
        capacity={"n0": 4}, gpu_resource="nvidia.com/gpu",
    )  # fmt: skip
    assert res.nodes == ["n1"] and res.distrusted == ("n0",)
    assert "n0 (64 GPUs, capacity 4)" in res.notes[0] and "nvidia.com/gpu" in res.notes[0]
    ok = resolve(
        spec, namespace="ns", nodes=nodes, profiles=profiles, now=NOW, profile_ttl_s=300, capacity={"n0": 64}
    )
    assert ok.nodes == ["n0"] and not ok.distrusted


def test_a_gpu_list_change_counts_once_it_has_held_for_the_settle_time():
    """Issue 20, defect 3: GPU 3 of n0 leaves and comes back every 2 s; with a 30 s settle time the
    resolution never moves. A GPU that stays gone counts 30 s after it went."""
    from vibe.operator.gpus import next_snapshot

    nodes = {"n0": {"pool": "a"}}
    full = profile_snapshot(profile_body("n0", gpus=4))
    short_body = profile_body("n0", gpus=4)
    del short_body["spec"]["gpus"][3]
    short = profile_snapshot(short_body)
    spec = parse_spec(deployment_body("x", count=3)["spec"])
    t = NOW
    snap = next_snapshot(None, full, t, 30)  # a node's first profile counts at once
    ids = []
    for i in range(30):  # 60 s of flapping
        t = NOW + dt.timedelta(seconds=2 * (i + 1))
        snap = next_snapshot(snap, short if i % 2 == 0 else full, t, 30)
        res = resolve(spec, namespace="ns", nodes=nodes, profiles={"n0": snap}, now=t, profile_ttl_s=1e9,
                      settle_s=30)  # fmt: skip
        ids.append(res.gpus_key)
        assert "n0/3/GPU-n0-3" in res.available
    assert len(set(ids)) == 1
    # GPU 3 now stays gone: still counted until 30 s have passed, and the resolution says when.
    gone_at = t + dt.timedelta(seconds=2)
    snap = next_snapshot(snap, short, gone_at, 30)
    res = resolve(spec, namespace="ns", nodes=nodes, profiles={"n0": snap}, now=gone_at, profile_ttl_s=1e9,
                  settle_s=30)  # fmt: skip
    assert res.settles_at == gone_at + dt.timedelta(seconds=30)
    later = gone_at + dt.timedelta(seconds=30)
    res = resolve(spec, namespace="ns", nodes=nodes, profiles={"n0": snap}, now=later, profile_ttl_s=1e9,
                  settle_s=30)  # fmt: skip
    assert "n0/3/GPU-n0-3" not in res.available and res.settles_at is None


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
