"""The chart's admission policies for the operator's and the agents' identities, tried with their real
tokens on the local control plane (issue 20, defects 7 and 10 and the Events weak spots).

Before these policies the operator's token patched ``gpus.count`` and ``serving.endpoint`` of a tenant's
MoEDeployment (where every serving pod would post its token, defect 1), created
``kube-system/coredns-placement`` with vibe's labels and an owner reference to a MoEDeployment that does
not exist, and could post Events anywhere; an agent could post Events about other nodes' profiles.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from chart_helpers import CHART, Helm, agent_pod_on, leftovers, pod_bound_client, refused, wait_enforced

from vibe import api
from vibe.cluster.identity import service_account_kubeconfig
from vibe.cluster.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

G, V = api.GROUP, api.VERSION


def _client(path: Path) -> Any:
    from kubernetes import config

    return config.new_client_from_config(config_file=str(path))


def _event(name: str, namespace: str, involved: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": f"{name}.{uuid.uuid4().hex[:8]}", "namespace": namespace},
        "involvedObject": {"namespace": namespace, **involved},
        "reason": "Test",
        "message": "m",
        "type": "Normal",
    }


def test_the_operator_writes_only_status_its_metadata_and_its_placements(
    cluster: Any, kube: Any, helm: Helm, namespace: str, tmp_path: Path
) -> None:
    from kubernetes import client

    h = helm.with_env(cluster.env())
    release = f"a{uuid.uuid4().hex[:6]}"
    sa = f"{release}-vibe-operator"
    try:
        h.run("install", release, str(CHART), "--namespace", namespace, "--set", "agent.enabled=false",
              "--set", "operator.replicas=1")  # fmt: skip
        op = _client(
            service_account_kubeconfig(kube, Path(cluster.kubeconfig), namespace, sa, tmp_path / "o")
        )
        custom, core = client.CustomObjectsApi(op), client.CoreV1Api(op)
        admin = client.CustomObjectsApi(kube)
        body = {
            "apiVersion": api.API_VERSION,
            "kind": api.MOEDEPLOYMENT_KIND,
            "metadata": {"name": "tenant"},
            "spec": {
                "model": {
                    "layers": 2,
                    "experts": 8,
                    "topK": 2,
                    "hiddenSize": 64,
                    "expertIntermediateSize": 32,
                },
                "gpus": {"nodeSelector": {"pool": "none"}, "count": 8, "slotsPerGPU": 2},
                "serving": {"onUpdate": "http", "endpoint": "/expert-location"},
            },
        }
        created = admin.create_namespaced_custom_object(G, V, namespace, api.MOEDEPLOYMENT_PLURAL, body)
        uid = created["metadata"]["uid"]

        def patch(p: dict[str, Any]) -> Any:
            return custom.patch_namespaced_custom_object(
                G, V, namespace, api.MOEDEPLOYMENT_PLURAL, "tenant", p
            )

        wait_enforced(
            "the chart's admission policies in force",
            custom.patch_namespaced_custom_object, G, V, namespace, api.MOEDEPLOYMENT_PLURAL, "tenant",
            {"spec": {"gpus": {"count": 64}}},
        )  # fmt: skip

        # Defect 7: the spec is the tenant's.
        msg = refused(patch, {"spec": {"gpus": {"count": 64}}})
        assert "never spec" in msg
        refused(patch, {"spec": {"serving": {"endpoint": "http://elsewhere/collect"}}})
        refused(patch, {"metadata": {"labels": {"operator": "was-here"}}})
        refused(patch, {"metadata": {"annotations": {"note": "operator"}}})
        refused(patch, {"metadata": {"annotations": {api.ANNOTATION_RECONCILE_TRIGGER: "x"}}})
        refused(patch, {"metadata": {"finalizers": ["example.com/hold"]}})
        refused(custom.delete_namespaced_custom_object, G, V, namespace, api.MOEDEPLOYMENT_PLURAL, "tenant")
        # ... while what it does works: Kopf's annotations and finalizer, and status.
        patch({"metadata": {"annotations": {"vibe.dev/last-handled-configuration": "{}"}}})
        patch({"metadata": {"finalizers": [api.FINALIZER]}})
        patch(
            {"metadata": {"finalizers": None, "annotations": {"vibe.dev/last-handled-configuration": None}}}
        )
        custom.patch_namespaced_custom_object_status(
            G, V, namespace, api.MOEDEPLOYMENT_PLURAL, "tenant", {"status": {"placementGeneration": 3}}
        )
        got = admin.get_namespaced_custom_object(G, V, namespace, api.MOEDEPLOYMENT_PLURAL, "tenant")
        assert got["spec"]["gpus"]["count"] == 8 and got["spec"]["serving"]["endpoint"] == "/expert-location"
        assert got["status"]["placementGeneration"] == 3

        # Defect 10: only placement ConfigMaps shaped as the operator writes them, never in kube-system.
        def placement(name: str, owner: str, owner_uid: str, ns: str) -> dict[str, Any]:
            return {
                "metadata": {
                    "name": name,
                    "namespace": ns,
                    "labels": {api.LABEL_MANAGED_BY: api.MANAGED_BY_OPERATOR, api.LABEL_MOEDEPLOYMENT: owner},
                    "ownerReferences": [
                        {
                            "apiVersion": api.API_VERSION,
                            "kind": api.MOEDEPLOYMENT_KIND,
                            "name": owner,
                            "uid": owner_uid,
                            "controller": True,
                        }
                    ],
                },
                "data": {"placement.json": "{}"},
            }

        ghost_uid = str(uuid.uuid4())
        msg = refused(
            core.create_namespaced_config_map,
            "kube-system",
            placement("coredns-placement", "coredns", ghost_uid, "kube-system"),
        )
        assert "no ConfigMaps in namespace kube-system" in msg
        refused(  # named after another MoEDeployment than its owner
            core.create_namespaced_config_map,
            namespace,
            placement("coredns-placement", "tenant", uid, namespace),
        )
        two = placement("tenant-placement", "tenant", uid, namespace)
        other = {"controller": False, "name": "other", "uid": ghost_uid}
        two["metadata"]["ownerReferences"].append({**two["metadata"]["ownerReferences"][0], **other})
        refused(core.create_namespaced_config_map, namespace, two)
        core.create_namespaced_config_map(namespace, placement("tenant-placement", "tenant", uid, namespace))
        # What admission cannot check: that the owner exists. Admitted, then the garbage collector
        # removes it, as its only owner is missing.
        core.create_namespaced_config_map(
            namespace, placement("ghost-placement", "ghost", ghost_uid, namespace)
        )
        admin_core = client.CoreV1Api(kube)
        wait_for(
            lambda: (
                "ghost-placement"
                not in {c.metadata.name for c in admin_core.list_namespaced_config_map(namespace).items}
            ),
            timeout=90,
            interval=1,
            what="the garbage collector to delete a placement ConfigMap whose owner does not exist",
        )
        assert admin_core.read_namespaced_config_map("tenant-placement", namespace).data

        # Events: only about vibe's objects, in their own namespace.
        moed = {"apiVersion": api.API_VERSION, "kind": api.MOEDEPLOYMENT_KIND, "name": "tenant", "uid": uid}
        core.create_namespaced_event(namespace, _event("tenant", namespace, moed))
        pod = {"apiVersion": "v1", "kind": "Pod", "name": "coredns"}
        msg = refused(core.create_namespaced_event, namespace, _event("coredns", namespace, pod))
        assert "posts Events only about" in msg
        refused(core.create_namespaced_event, "kube-system", _event("coredns", "kube-system", pod))
    finally:
        h.run("uninstall", release, "--namespace", namespace, "--wait", check=False)
    assert leftovers(cluster, release) == []


def test_an_agent_posts_events_only_about_its_own_nodes_profile(
    cluster: Any, kube: Any, helm: Helm, namespace: str, gpu_nodes: Any, tmp_path: Path
) -> None:
    from kubernetes import client

    h = helm.with_env(cluster.env())
    node_a, node_b = gpu_nodes(2, gpus_per_node=1)
    release = f"e{uuid.uuid4().hex[:6]}"
    sa = f"{release}-vibe-agent"
    core = client.CoreV1Api(kube)
    try:
        h.run("install", release, str(CHART), "--namespace", namespace, "--set", "operator.enabled=false")

        pod = agent_pod_on(core, namespace, node_a)
        agent = client.CoreV1Api(pod_bound_client(kube, cluster, namespace, sa, pod, tmp_path / "a"))
        profile = {"apiVersion": api.API_VERSION, "kind": api.GPUPROFILE_KIND}
        theirs = _event(node_b, namespace, {**profile, "name": node_b})
        wait_enforced(
            "the chart's admission policies in force", agent.create_namespaced_event, namespace, theirs
        )
        msg = refused(agent.create_namespaced_event, namespace, theirs)
        assert f"the vibe agent on node {node_a} may post Events only about its own GPUProfile" in msg
        node = {"apiVersion": "v1", "kind": "Node", "name": node_b}
        refused(agent.create_namespaced_event, namespace, _event(node_a, namespace, node))
        agent.create_namespaced_event(namespace, _event(node_a, namespace, {**profile, "name": node_a}))
    finally:
        h.run("uninstall", release, "--namespace", namespace, "--wait", check=False)
    assert leftovers(cluster, release) == []
