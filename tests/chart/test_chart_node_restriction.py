"""Each agent writes only its own node's GPUProfile and Lease: the chart's ValidatingAdmissionPolicy with
two agents' real tokens on the local control plane.

The tokens are what the DaemonSet's pods get: TokenRequest tokens bound to the agent pod on each node
(kwok schedules them), which carry the node name in the user's extra
``authentication.kubernetes.io/node-name``. Before the policy, agent A's token could write a profile named
``evil-node`` saying ``nodeName: <B>`` (B's users went InsufficientGPUs) and patch B's profile.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from chart_helpers import CHART, Helm, leftovers, pod_bound_client, refused, wait_enforced

from vibe.agent.profile import build_lease, build_profile
from vibe.agent.publish import KubePublisher
from vibe.cluster.identity import service_account_kubeconfig
from vibe.cluster.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

G, V = "vibe.dev", "v1alpha1"


def test_an_agent_writes_only_its_own_nodes_profile_and_lease(
    cluster: Any, kube: Any, helm: Helm, namespace: str, gpu_nodes: Any, tmp_path: Path
) -> None:
    from kubernetes import client

    h = helm.with_env(cluster.env())
    node_a, node_b = gpu_nodes(2, gpus_per_node=1)
    release = f"n{uuid.uuid4().hex[:6]}"
    sa = f"{release}-vibe-agent"
    core = client.CoreV1Api(kube)
    try:
        h.run("install", release, str(CHART), "--namespace", namespace, "--set", "operator.enabled=false")

        def agent_pods() -> dict[str, Any] | None:
            pods = core.list_namespaced_pod(
                namespace, label_selector="app.kubernetes.io/component=agent"
            ).items
            on = {p.spec.node_name: p for p in pods if p.spec.node_name in (node_a, node_b)}
            return on if len(on) == 2 else None

        pods = wait_for(agent_pods, timeout=60, what="the agent pods on both nodes")
        api_a = pod_bound_client(kube, cluster, namespace, sa, pods[node_a], tmp_path / "a.kubeconfig")
        api_b = pod_bound_client(kube, cluster, namespace, sa, pods[node_b], tmp_path / "b.kubeconfig")
        pub_a, pub_b = KubePublisher(api_a), KubePublisher(api_b)

        # Each writes its own: the profile (with its Node as owner), its status, its Lease.
        for pub, node in ((pub_a, node_a), (pub_b, node_b)):
            facts = pub.node(node)
            assert facts is not None and facts.gpu_capacity == 1
            pub.apply(build_profile(node, namespace, [], owner=facts.owner))
            pub.status(namespace, node, [])
            pub.heartbeat(namespace, node, 1.0e9, 30)

        custom_a = client.CustomObjectsApi(api_a)
        evil = build_profile("evil-node", namespace, [])
        evil["spec"]["nodeName"] = node_b

        wait_enforced(
            "the node restriction policy in force",
            custom_a.create_namespaced_custom_object, G, V, namespace, "gpuprofiles", evil,
        )  # fmt: skip
        msg = refused(custom_a.create_namespaced_custom_object, G, V, namespace, "gpuprofiles", evil)
        assert f"vibe agent on node {node_a} may write only the GPUProfile and Lease named {node_a}" in msg
        msg = refused(pub_a.apply, build_profile(node_b, namespace, []))  # B's own profile
        assert "may write only" in msg
        refused(
            custom_a.patch_namespaced_custom_object, G, V, namespace, "gpuprofiles", node_b,
            {"metadata": {"labels": {"spoofed": "yes"}}},
        )  # fmt: skip
        spoof = build_profile(node_a, namespace, [])
        spoof["spec"]["nodeName"] = node_b
        msg = refused(pub_a.apply, spoof)
        assert f"may not publish a GPUProfile for node {node_b}" in msg
        refused(pub_a.heartbeat, namespace, node_b, 1.0e9, 30)  # B's Lease
        refused(pub_a.status, namespace, node_b, [])

        # A token bound to no pod (no node) writes nothing, not even a profile named after a node.
        plain = service_account_kubeconfig(
            kube, Path(cluster.kubeconfig), namespace, sa, tmp_path / "plain.kubeconfig"
        )
        from kubernetes import config

        pub_plain = KubePublisher(config.new_client_from_config(config_file=str(plain)))
        msg = refused(pub_plain.apply, build_profile(node_a, namespace, []))
        assert "bound to no node" in msg

        # What each wrote is intact.
        got = client.CustomObjectsApi(kube).get_namespaced_custom_object(
            G, V, namespace, "gpuprofiles", node_b
        )
        assert got["spec"]["nodeName"] == node_b and "spoofed" not in (got["metadata"].get("labels") or {})
        lease = client.CoordinationV1Api(kube).read_namespaced_lease(node_a, namespace)
        assert lease.spec.holder_identity == f"vibe-agent/{node_a}"
        assert build_lease(node_a, namespace, 1.0e9, 30, None)["spec"]["renewTime"].startswith("2001-09-09")
    finally:
        h.run("uninstall", release, "--namespace", namespace, "--wait", check=False)
    assert leftovers(cluster, release) == []
