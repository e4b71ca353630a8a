"""The session's local control plane behaves like a cluster: real API server, real controllers and
scheduler, kwok-run fake GPU nodes on which the pods of Deployments and DaemonSets reach Running."""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING

import pytest
from cluster_plugin import TEST_NODES_LABEL

from vibe.cluster.waiting import wait_for

if TYPE_CHECKING:
    from collections.abc import Callable

    from kubernetes.client import ApiClient

    from vibe.cluster import Cluster

pytestmark = pytest.mark.cluster

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def _pods(kube: ApiClient, namespace: str, selector: str) -> list:
    from kubernetes import client

    return client.CoreV1Api(kube).list_namespaced_pod(namespace, label_selector=selector).items


def _running(pods: list) -> list:
    return [p for p in pods if p.status.phase == "Running" and p.metadata.deletion_timestamp is None]


def test_apiserver_reports_the_pinned_version(cluster: Cluster, cluster_binaries, kube: ApiClient) -> None:
    from kubernetes import client

    from vibe.cluster.binaries import pinned_version

    want = pinned_version("kubernetes")
    out = subprocess.run(
        [str(cluster_binaries["kube-apiserver"]), "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"Kubernetes {want}"
    info = client.VersionApi(kube).get_code()
    assert info.git_version == want
    assert (info.major, info.minor) == tuple(want.lstrip("v").split(".")[:2])


def test_configmap_gpu_node_and_deployment_pod_running(
    kube: ApiClient, namespace: str, gpu_nodes: Callable[..., list[str]]
) -> None:
    from kubernetes import client

    core, apps = client.CoreV1Api(kube), client.AppsV1Api(kube)
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "loads"}, "data": {"loads.json": "[1, 2]"}}
    )
    assert core.read_namespaced_config_map("loads", namespace).data == {"loads.json": "[1, 2]"}

    (node,) = gpu_nodes(1, gpus_per_node=8, product="NVIDIA-H100-80GB-HBM3", taint=True)
    n = core.read_node(node)
    assert n.status.capacity["nvidia.com/gpu"] == "8"
    assert n.status.allocatable["nvidia.com/gpu"] == "8"
    assert n.metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert n.metadata.labels["nvidia.com/gpu.count"] == "8"
    assert n.metadata.labels["nvidia.com/gpu.family"] == "hopper"
    assert n.metadata.labels["nvidia.com/gpu.present"] == "true"
    assert n.metadata.annotations["kwok.x-k8s.io/node"] == "fake"
    assert [(t.key, t.effect) for t in n.spec.taints] == [("nvidia.com/gpu", "NoSchedule")]

    apps.create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "expert"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "expert"}},
                "template": {
                    "metadata": {"labels": {"app": "expert"}},
                    "spec": {
                        "nodeSelector": {TEST_NODES_LABEL: n.metadata.labels[TEST_NODES_LABEL]},
                        "tolerations": [GPU_TOLERATION],
                        "containers": [
                            {
                                "name": "engine",
                                "image": "example.invalid/engine:1",
                                "resources": {"limits": {"nvidia.com/gpu": "4"}},
                                "volumeMounts": [{"name": "loads", "mountPath": "/loads"}],
                            }
                        ],
                        "volumes": [{"name": "loads", "configMap": {"name": "loads"}}],
                    },
                },
            },
        },
    )
    pods = wait_for(
        lambda: len(r := _running(_pods(kube, namespace, "app=expert"))) == 2 and r,
        timeout=60,
        what="2 Running pods of Deployment expert",
    )
    assert {p.spec.node_name for p in pods} == {node}
    assert all(p.status.pod_ip for p in pods)
    wait_for(
        lambda: (apps.read_namespaced_deployment("expert", namespace).status.ready_replicas or 0) == 2,
        timeout=30,
        what="Deployment expert readyReplicas=2",
    )

    # A third replica does not fit: 8 GPUs on the one node, 4 per pod. The scheduler counts nvidia.com/gpu.
    apps.patch_namespaced_deployment_scale("expert", namespace, {"spec": {"replicas": 3}})
    pending = wait_for(
        lambda: [
            p
            for p in _pods(kube, namespace, "app=expert")
            if p.status.phase == "Pending"
            and any(c.type == "PodScheduled" and c.status == "False" for c in p.status.conditions or [])
        ],
        timeout=30,
        what="an unschedulable third pod",
    )
    assert "nvidia.com/gpu" in pending[0].status.conditions[0].message

    # Deleted pods go away (kwok's pod-delete stage finishes the deletion a kubelet would).
    apps.patch_namespaced_deployment_scale("expert", namespace, {"spec": {"replicas": 0}})
    wait_for(lambda: not _pods(kube, namespace, "app=expert"), timeout=60, what="pods of expert deleted")


def test_daemonset_runs_one_pod_per_gpu_node(
    kube: ApiClient, namespace: str, gpu_nodes: Callable[..., list[str]]
) -> None:
    from kubernetes import client

    nodes = gpu_nodes(3, gpus_per_node=8, taint=True)
    prefix = nodes[0].rsplit("-", 1)[0]
    client.AppsV1Api(kube).create_namespaced_daemon_set(
        namespace,
        {
            "metadata": {"name": "agent"},
            "spec": {
                "selector": {"matchLabels": {"app": "agent"}},
                "template": {
                    "metadata": {"labels": {"app": "agent"}},
                    "spec": {
                        "nodeSelector": {"nvidia.com/gpu.present": "true", TEST_NODES_LABEL: prefix},
                        "tolerations": [GPU_TOLERATION],
                        "containers": [{"name": "agent", "image": "example.invalid/agent:1"}],
                    },
                },
            },
        },
    )
    pods = wait_for(
        lambda: len(r := _running(_pods(kube, namespace, "app=agent"))) == 3 and r,
        timeout=60,
        what="3 Running pods of DaemonSet agent",
    )
    assert sorted(p.spec.node_name for p in pods) == sorted(nodes)
    ds = wait_for(
        lambda: (
            (d := client.AppsV1Api(kube).read_namespaced_daemon_set("agent", namespace)).status.number_ready
            == 3
            and d
        ),
        timeout=30,
        what="DaemonSet agent numberReady=3",
    )
    assert ds.status.desired_number_scheduled == 3
