"""An agent cannot publish more GPUs than its Node has (issue 20, defect 2): the chart's
``<release>-vibe-agent-gpu-capacity`` ValidatingAdmissionPolicy with an agent's real pod-bound token.

A ValidatingAdmissionPolicy cannot look up the profile's Node by name, so the policy takes every Node as
a parameter (paramKind Node, selector {}) and is evaluated once per Node; this test is what shows the
API server really does that. Before: node A's agent (capacity 1 here, 8 in the report) published 64
GPUs and admission allowed it.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from chart_helpers import CHART, Helm, agent_pod_on, leftovers, pod_bound_client, refused, wait_enforced

from vibe.placement.curves import reference_curve

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

G, V = "vibe.dev", "v1alpha1"


def profile(node: str, namespace: str, gpus: int) -> dict[str, Any]:
    tokens, seconds = reference_curve(7168, 2048, "fp8")
    curve = {"hiddenSize": 7168, "intermediateSize": 2048, "dtype": "fp8",
             "tokens": [int(t) for t in tokens], "seconds": [float(s) for s in seconds]}  # fmt: skip
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "GPUProfile",
        "metadata": {"name": node, "namespace": namespace},
        "spec": {
            "nodeName": node,
            "gpus": [{"index": i, "uuid": f"GPU-{node}-{i}", "curves": [curve]} for i in range(gpus)],
        },
    }


def test_an_agent_cannot_publish_more_gpus_than_its_node_reports(
    cluster: Any, kube: Any, helm: Helm, namespace: str, gpu_nodes: Any, tmp_path: Path
) -> None:
    from kubernetes import client

    h = helm.with_env(cluster.env())
    (node,) = gpu_nodes(1, gpus_per_node=2)
    release = f"c{uuid.uuid4().hex[:6]}"
    sa = f"{release}-vibe-agent"
    core = client.CoreV1Api(kube)
    try:
        h.run("install", release, str(CHART), "--namespace", namespace, "--set", "operator.enabled=false")

        pod = agent_pod_on(core, namespace, node)
        custom = client.CustomObjectsApi(pod_bound_client(kube, cluster, namespace, sa, pod, tmp_path / "a"))
        too_many = profile(node, namespace, 3)

        wait_enforced(
            "the GPU capacity policy in force",
            custom.create_namespaced_custom_object, G, V, namespace, "gpuprofiles", too_many,
        )  # fmt: skip
        msg = refused(custom.create_namespaced_custom_object, G, V, namespace, "gpuprofiles", too_many)
        assert f"GPUProfile {node} lists 3 GPUs but Node {node} reports 2" in msg, msg
        # As many as the Node has: admitted; then an update to more: refused.
        custom.create_namespaced_custom_object(G, V, namespace, "gpuprofiles", profile(node, namespace, 2))
        msg = refused(
            custom.patch_namespaced_custom_object, G, V, namespace, "gpuprofiles", node,
            {"spec": {"gpus": too_many["spec"]["gpus"]}},
        )  # fmt: skip
        assert "lists 3 GPUs" in msg
    finally:
        h.run("uninstall", release, "--namespace", namespace, "--wait", check=False)
    assert leftovers(cluster, release) == []
