"""Simulated agents on real (kwok) nodes of the local control plane: what the agent learns from its Node
and how its objects live with it.

- the GPUProfile and the Lease are owned by the Node: deleting the node deletes both (the controller
  manager's garbage collector, not the agent);
- NVML's GPU count against the node's ``nvidia.com/gpu`` capacity and GFD labels: a condition, an Event
  and a metric when they disagree;
- an expert-shape flood (more shapes than a GPUProfile holds) never makes the API server refuse the
  profile, the Lease keeps going, and deleting the flood prunes the curves without a restart;
- the GPUProfile CRD deleted and re-created: the agent re-creates its profile.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import runner_threads, sim_agents

from vibe.agent.node import AgentConfig, NodeAgent
from vibe.agent.publish import KubePublisher
from vibe.agent.runner import MAX_CURVES, Runner, RunnerConfig
from vibe.agent.simulate import parse_fleet
from vibe.cluster.waiting import wait_for
from vibe.crds.apply import apply_crds

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
G, V = "vibe.dev", "v1alpha1"


@pytest.fixture(scope="module")
def crds(kube: Any) -> None:
    apply_crds(kube)


def get(kube: Any, ns: str, plural: str, name: str) -> dict[str, Any] | None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        if plural == "leases":
            rsp = client.CoordinationV1Api(kube).read_namespaced_lease(name, ns, _preload_content=False)
            return json.loads(rsp.data)
        return client.CustomObjectsApi(kube).get_namespaced_custom_object(G, V, ns, plural, name)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def conditions(obj: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in ((obj or {}).get("status") or {}).get("conditions") or ()}


@pytest.fixture
def start(kube: Any, crds: None, namespace: str) -> Iterator[Any]:
    """start(nodes: {name: gpus}, **runner_cfg) -> (runner, agents), run in a thread, stopped at the end."""
    with runner_threads() as go:

        def run(nodes: dict[str, int], **cfg: Any) -> tuple[Runner, list[NodeAgent]]:
            fleet = parse_fleet({"seed": 2, "nodes": [{"name": n, "gpus": g} for n, g in nodes.items()]})
            agents = sim_agents(fleet, AgentConfig(namespace=namespace, heartbeat_seconds=1))
            rcfg = RunnerConfig(poll_seconds=0.5, heartbeat_seconds=1, shapes_seconds=0, exists_every=1)
            for k, v in cfg.items():
                setattr(rcfg, k, v)
            return go(Runner(agents, KubePublisher(kube, qps=50, burst=100), rcfg)), agents

        yield run


def test_profile_and_lease_go_with_their_node(kube: Any, namespace: str, gpu_nodes: Any, start: Any) -> None:
    from kubernetes import client

    (node,) = gpu_nodes(1, gpus_per_node=2)
    runner, _ = start({node: 2})
    profile = get(kube, namespace, "gpuprofiles", node)
    lease = wait_for(lambda: get(kube, namespace, "leases", node), timeout=10, what="the agent's Lease")
    uid = client.CoreV1Api(kube).read_node(node).metadata.uid
    owner = [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid}]
    assert profile is not None and profile["metadata"]["ownerReferences"] == owner
    assert lease["metadata"]["ownerReferences"] == owner
    assert conditions(profile)["GPUsVisible"]["status"] == "True"
    runner.stop.set()  # the agent would otherwise re-create them (its node is gone: its pod would be too)
    time.sleep(1.5)
    client.CoreV1Api(kube).delete_node(node)
    wait_for(
        lambda: (
            get(kube, namespace, "gpuprofiles", node) is None and get(kube, namespace, "leases", node) is None
        ),
        timeout=60,
        what="the garbage collector to delete the GPUProfile and the Lease",
    )


def test_fewer_gpus_in_nvml_than_the_node_has_is_published(
    kube: Any, namespace: str, gpu_nodes: Any, start: Any
) -> None:
    """The node says 4 GPUs (capacity and GFD label); the agent's NVML shows 1: condition, Event, metric."""
    from kubernetes import client

    from vibe.agent.exporter import AgentCollector, render

    (node,) = gpu_nodes(1, gpus_per_node=4)
    _, agents = start({node: 1})

    def mismatch() -> dict[str, Any] | None:
        c = conditions(get(kube, namespace, "gpuprofiles", node)).get("GPUsVisible")
        return c if c and c["status"] == "False" else None

    c = wait_for(mismatch, timeout=20, what="GPUsVisible=False on the profile")
    assert c["reason"] == "GPUCountMismatch"
    assert "NVML shows 1 GPU(s)" in c["message"] and "nvidia.com/gpu.count=4" in c["message"]
    assert "nvidia.com/gpu=4" in c["message"]

    def event() -> Any:
        evs = client.CoreV1Api(kube).list_namespaced_event(namespace).items
        return next((e for e in evs if e.reason == "GPUVisibilityMismatch"), None)

    ev = wait_for(event, timeout=20, what="the GPUVisibilityMismatch Event")
    assert ev.type == "Warning" and ev.involved_object.name == node
    text = render(AgentCollector(lambda: agents))
    assert f'vibe_agent_gpus_visible{{node="{node}"}} 1.0' in text
    assert f'vibe_agent_gpus_expected{{node="{node}"}} 4.0' in text


def moedeployment(name: str, hidden: int, selector: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "MoEDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {
                "layers": 2,
                "experts": 8,
                "topK": 2,
                "hiddenSize": hidden,
                "expertIntermediateSize": 512,
                "dtype": "bf16",
            },
            "gpus": {"nodeSelector": selector, "count": 2, "slotsPerGPU": 4},
        },
    }


def test_an_expert_shape_flood_is_capped_never_refused_and_pruned_without_restart(
    kube: Any, namespace: str, gpu_nodes: Any, start: Any
) -> None:
    """16 MoEDeployments with distinct shapes select the node (38 curves before the fix: 422 forever,
    heartbeats stopped, nothing recovered until a restart)."""
    from kubernetes import client

    custom = client.CustomObjectsApi(kube)
    prefix = f"flood-{namespace[-6:]}"
    (node,) = gpu_nodes(1, gpus_per_node=1, prefix=prefix)
    selector = {"vibe.dev/test-nodes": prefix}
    for k in range(16):
        custom.create_namespaced_custom_object(
            G, V, namespace, "moedeployments", moedeployment(f"d{k}", 1024 + 64 * k, selector)
        )
    other = moedeployment("elsewhere", 3000, {"vibe.dev/test-nodes": "no-such-nodes"})
    custom.create_namespaced_custom_object(G, V, namespace, "moedeployments", other)
    runner, _ = start({node: 1}, shapes_seconds=2)

    def capped() -> dict[str, Any] | None:
        obj = get(kube, namespace, "gpuprofiles", node)
        c = conditions(obj).get("ShapesCapped")
        return obj if c and c["status"] == "True" else None

    obj = wait_for(capped, timeout=60, what="ShapesCapped=True with the profile accepted")
    curves = obj["spec"]["gpus"][0]["curves"]
    assert len(curves) == MAX_CURVES
    assert not any(c["hiddenSize"] == 3000 for c in curves)  # not selecting this node: not benchmarked
    assert "6 expert shape(s)" in conditions(obj)["ShapesCapped"]["message"]
    renew = get(kube, namespace, "leases", node)["spec"]["renewTime"]
    wait_for(
        lambda: get(kube, namespace, "leases", node)["spec"]["renewTime"] > renew,
        timeout=10,
        what="the Lease",
    )
    assert runner.errors == 0, "the API server refused a write"

    for k in range(16):
        custom.delete_namespaced_custom_object(G, V, namespace, "moedeployments", f"d{k}")

    def pruned() -> dict[str, Any] | None:
        obj = get(kube, namespace, "gpuprofiles", node)
        c = conditions(obj).get("ShapesCapped")
        return obj if c and c["status"] == "False" and len(obj["spec"]["gpus"][0]["curves"]) == 6 else None

    wait_for(pruned, timeout=60, what="the curves pruned back to the 6 default shapes, no restart")


def test_the_profile_comes_back_when_its_crd_is_recreated(kube: Any, namespace: str, start: Any) -> None:
    from kubernetes import client

    ext = client.ApiextensionsV1Api(kube)
    start({"crd-node": 1}, exists_every=1)
    wait_for(lambda: get(kube, namespace, "gpuprofiles", "crd-node"), timeout=20, what="the profile")
    ext.delete_custom_resource_definition("gpuprofiles.vibe.dev")

    def gone() -> bool:
        try:
            ext.read_custom_resource_definition("gpuprofiles.vibe.dev")
            return False
        except client.exceptions.ApiException as e:
            return e.status == 404

    wait_for(gone, timeout=60, what="the CRD deleted")
    apply_crds(kube)
    back = wait_for(
        lambda: get(kube, namespace, "gpuprofiles", "crd-node"), timeout=90, what="the profile re-created"
    )
    assert back["spec"]["gpus"] and back["spec"]["nodeName"] == "crd-node"
