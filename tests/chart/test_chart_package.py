"""The chart as users get it from an OCI registry: `helm package`, then `helm install` of the .tgz.

On the local control plane (kwok stands in for the kubelets): the packaged chart installs with its
defaults, and the agent's DaemonSet really gets a pod on a GPU node, which proves what a YAML reading
cannot: no RuntimeClass is required by default (a `runtimeClassName` naming a missing RuntimeClass makes
the API server refuse every agent pod), and `system-node-critical` is accepted outside kube-system and
resolves to its priority.
"""

from __future__ import annotations

import tarfile
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_helpers import CHART, Helm, agent_pod_on, kubectl, leftovers

from vibe.cluster.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SYSTEM_NODE_CRITICAL = 2000001000


def package(helm: Helm, dest: Path) -> Path:
    out = helm.run("package", str(CHART), "--destination", str(dest)).stdout
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
    tgz = dest / f"vibe-{version}.tgz"
    assert tgz.is_file(), out
    return tgz


def test_the_packaged_chart_holds_crds_schema_and_dashboard(helm: Helm, tmp_path: Path) -> None:
    tgz = package(helm, tmp_path)
    with tarfile.open(tgz) as tar:
        names = set(tar.getnames())
    for want in (
        "vibe/Chart.yaml",
        "vibe/values.yaml",
        "vibe/values.schema.json",
        "vibe/crds/gpuprofile.yaml",
        "vibe/crds/moedeployment.yaml",
        "vibe/templates/agent/daemonset.yaml",
        "vibe/files/dashboards/vibe.json",
    ):
        assert want in names, f"{want} not packaged"
    helm.run("lint", str(tgz))


def test_install_from_the_packaged_tgz(
    cluster: Any, kube: Any, helm: Helm, namespace: str, gpu_nodes: Any, tmp_path: Path
) -> None:
    from kubernetes import client

    h = helm.with_env(cluster.env())
    tgz = package(helm, tmp_path)
    (node,) = gpu_nodes(1, gpus_per_node=2)
    release = f"p{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(kube)
    try:
        args = [
            "install",
            release,
            str(tgz),
            "--namespace",
            namespace,
            "--set",
            f"operator.peering.name={release}",
        ]
        notes = h.run(*args).stdout.split("NOTES:", 1)[1]
        # How to check that each agent sees its node's GPUs, and that the runtime must be the default.
        assert '.status.conditions[?(@.type=="GPUsVisible")].status' in notes
        assert "--field-selector reason=GPUVisibilityMismatch" in notes
        assert "agent.runtimeClassName is empty" in notes
        status = h.run("status", release, "--namespace", namespace).stdout
        assert "STATUS: deployed" in status

        try:
            pod = agent_pod_on(core, namespace, node)
        except TimeoutError:
            events = kubectl(
                cluster, "get", "events", "-n", namespace, "-o", "custom-columns=R:.reason,M:.message"
            )
            pytest.fail(f"no agent pod on {node}:\n{events.stdout}")
        assert pod.spec.runtime_class_name is None
        assert pod.spec.priority_class_name == "system-node-critical"
        assert pod.spec.priority == SYSTEM_NODE_CRITICAL
        container = pod.spec.containers[0]
        assert container.image.endswith(
            f"/vibe-agent:{yaml.safe_load((CHART / 'Chart.yaml').read_text())['appVersion']}"
        )
        assert [p.container_port for p in container.ports] == [9435]
    finally:
        h.run("uninstall", release, "--namespace", namespace, "--wait", check=False)
    assert leftovers(cluster, release) == []


def test_a_missing_runtime_class_refuses_the_agents_pods(
    cluster: Any, kube: Any, helm: Helm, namespace: str, gpu_nodes: Any
) -> None:
    """What the old default (runtimeClassName: nvidia) did on a cluster without that RuntimeClass."""
    h = helm.with_env(cluster.env())
    (node,) = gpu_nodes(1, gpus_per_node=1)
    release = f"r{uuid.uuid4().hex[:6]}"
    rc = f"missing-{uuid.uuid4().hex[:6]}"
    try:
        h.run(
            "install", release, str(CHART), "--namespace", namespace,
            "--set", f"operator.peering.name={release}", "--set", f"agent.runtimeClassName={rc}",
            "--set", "operator.enabled=false",
        )  # fmt: skip

        def refused() -> str | None:
            out = kubectl(
                cluster, "get", "events", "-n", namespace, "-o", "jsonpath={.items[*].message}"
            ).stdout
            return out if f'RuntimeClass "{rc}" not found' in out else None

        wait_for(refused, timeout=60, what="the DaemonSet's FailedCreate Event")
        from kubernetes import client

        pods = client.CoreV1Api(kube).list_namespaced_pod(namespace, field_selector=f"spec.nodeName={node}")
        assert not pods.items
    finally:
        h.run("uninstall", release, "--namespace", namespace, "--wait", check=False)
