"""GPU-cluster conventions of the chart.

* The agent's GPU nodes come from nodeAffinity OR terms: Node Feature Discovery's NVIDIA PCI vendor label
  (``feature.node.kubernetes.io/pci-10de.present``) or GPU feature discovery's ``nvidia.com/gpu.present``,
  not one label that only the GPU Operator sets. On the local control plane the real DaemonSet
  controller places an agent pod on a node with either label and none on a node with neither.
* kube-prometheus-stack selects monitors and rules by ``release: <its release>``: one value sets it on
  every ServiceMonitor, PodMonitor and PrometheusRule, and NOTES.txt says when it is missing.
* Relabelings and the optional PodMonitor are validated by the API server against the Prometheus
  Operator's own CRDs (``tests/upstream_crds.py``), with strict field validation.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from chart_helpers import CHART, MONITORING_APIS, NAMESPACE, Helm, find, one

from vibe.cluster.waiting import wait_for

NFD_NVIDIA = "feature.node.kubernetes.io/pci-10de.present"
GFD_GPU = "nvidia.com/gpu.present"
ALL_MONITORING = (*MONITORING_APIS, "monitoring.coreos.com/v1/PodMonitor")
RELABEL = [{"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "k8s_node"}]
DROP = [{"sourceLabels": ["__name__"], "regex": "vibe_gpu_canary_seconds_total", "action": "drop"}]


def terms(ds: dict) -> list[dict]:
    affinity = ds["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
    return affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]


def test_agent_nodes_are_nfd_or_gfd_gpu_nodes(helm: Helm) -> None:
    ds = one(helm.template(), "DaemonSet", "vibe-agent")
    assert terms(ds) == [
        {"matchExpressions": [{"key": NFD_NVIDIA, "operator": "In", "values": ["true"]}]},
        {"matchExpressions": [{"key": GFD_GPU, "operator": "In", "values": ["true"]}]},
    ]
    assert not ds["spec"]["template"]["spec"].get("nodeSelector")
    # A pool narrows it (ANDed); a full affinity replaces the terms; no terms: no affinity.
    pool = one(helm.template({"agent": {"nodeSelector": {"pool": "a"}}}), "DaemonSet", "vibe-agent")
    assert pool["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "a"} and len(terms(pool)) == 2
    mine = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}
    custom = one(helm.template({"agent": {"affinity": mine}}), "DaemonSet", "vibe-agent")
    assert custom["spec"]["template"]["spec"]["affinity"] == mine
    bare = one(helm.template({"agent": {"gpuNodeSelectorTerms": []}}), "DaemonSet", "vibe-agent")
    assert "affinity" not in bare["spec"]["template"]["spec"]


def test_release_label_relabelings_and_pod_monitors(helm: Helm) -> None:
    plain = helm.template(api_versions=ALL_MONITORING)
    monitors = find(plain, "ServiceMonitor") + find(plain, "PrometheusRule")
    assert len(monitors) == 3 and not any("release" in m["metadata"]["labels"] for m in monitors)
    assert not find(plain, "PodMonitor")  # opt-in

    values = {
        "monitoring": {
            "prometheusRelease": "kube-prometheus-stack",
            "serviceMonitor": {"relabelings": RELABEL, "metricRelabelings": DROP},
        }
    }
    objs = helm.template(values, api_versions=ALL_MONITORING)
    labelled = find(objs, "ServiceMonitor") + find(objs, "PrometheusRule")
    assert len(labelled) == 3  # the same three, so the loops below check something
    for m in labelled:
        assert m["metadata"]["labels"]["release"] == "kube-prometheus-stack", m["metadata"]["name"]
    for sm in find(objs, "ServiceMonitor"):
        (endpoint,) = sm["spec"]["endpoints"]
        assert endpoint["relabelings"] == RELABEL and endpoint["metricRelabelings"] == DROP

    values["monitoring"]["podMonitor"] = {"enabled": True, "relabelings": RELABEL}
    objs = helm.template(values, api_versions=ALL_MONITORING)
    assert not find(objs, "ServiceMonitor")  # the PodMonitors replace them: no double scrape
    pods = {p["metadata"]["name"]: p for p in find(objs, "PodMonitor")}
    assert set(pods) == {"vibe-operator", "vibe-agent"}
    for component, kind in (("operator", "Deployment"), ("agent", "DaemonSet")):
        pm, workload = pods[f"vibe-{component}"], one(objs, kind, f"vibe-{component}")
        assert pm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        template = workload["spec"]["template"]
        assert pm["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
        (endpoint,) = pm["spec"]["podMetricsEndpoints"]
        ports = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
        assert endpoint["port"] in ports and endpoint["relabelings"] == RELABEL
        assert pm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    # Not served and not forced: none.
    assert not find(helm.template({"monitoring": {"podMonitor": {"enabled": True}}}), "PodMonitor")


@pytest.fixture
def prometheus_operator_crds(kube: Any) -> Iterator[None]:
    """The Prometheus Operator's own CRDs for the chart's monitoring kinds, for one test (removed after:
    other chart tests need monitoring.coreos.com absent)."""
    from upstream_crds import PROMETHEUS_OPERATOR_CRDS, PROMETHEUS_OPERATOR_MODULE, crd, installed

    with installed(
        kube, [crd(PROMETHEUS_OPERATOR_MODULE, path) for path in PROMETHEUS_OPERATOR_CRDS.values()]
    ):
        yield


def notes(helm: Helm, cluster: Any, *sets: str) -> str:
    # `helm install --dry-run=client` renders NOTES.txt (`helm template` does not). It reads the
    # cluster's API groups, so it runs against the local control plane with the Prometheus Operator's
    # CRDs; the operator is off (its peering kind comes with the chart's CRDs, not installed here).
    args = ["install", "vibe", str(CHART), "--namespace", NAMESPACE, "--dry-run=client"]
    for s in ("operator.enabled=false", *sets):
        args += ["--set", s]
    return helm.with_env(cluster.env()).run(*args).stdout.split("NOTES:", 1)[1]


def test_notes_say_the_release_label_and_the_cdi_runtime_class(
    helm: Helm, cluster: Any, prometheus_operator_crds: None
) -> None:
    text = notes(helm, cluster)
    assert "ServiceMonitors rendered" in text
    assert "monitoring.prometheusRelease=<that name>" in text
    assert "agent.runtimeClassName=nvidia" in text  # CDI clusters
    assert f"{NFD_NVIDIA}=true" in text and f"{GFD_GPU}=true" in text
    text = notes(helm, cluster, "monitoring.prometheusRelease=kps", "agent.runtimeClassName=nvidia")
    assert "release=kps" in text and "monitoring.prometheusRelease=<that name>" not in text
    assert "agent.runtimeClassName is empty" not in text
    assert "PodMonitors rendered" in notes(helm, cluster, "monitoring.podMonitor.enabled=true")


# ---- on the local control plane


def test_the_daemonset_controller_places_agents_on_either_label(
    helm: Helm, kube: Any, namespace: str, gpu_nodes: Any
) -> None:
    from kubernetes import client

    pool = {"vibe.dev/test-gpuconv": uuid.uuid4().hex[:8]}
    # GFD's label (gpu_nodes sets nvidia.com/gpu.present=true on GPU nodes), NFD's label only, neither.
    (gfd,) = gpu_nodes(1, gpus_per_node=8, labels=pool)
    (nfd,) = gpu_nodes(1, gpus_per_node=0, labels={**pool, NFD_NVIDIA: "true"})
    (cpu,) = gpu_nodes(1, gpus_per_node=0, labels=pool)
    core = client.CoreV1Api(kube)
    assert core.read_node(nfd).metadata.labels[GFD_GPU] == "false"
    objs = helm.template(
        {"agent": {"nodeSelector": pool}, "operator": {"enabled": False}},
        namespace=namespace,
    )
    core.create_namespaced_service_account(namespace, one(objs, "ServiceAccount", "vibe-agent"))
    ds = one(objs, "DaemonSet", "vibe-agent")
    client.AppsV1Api(kube).create_namespaced_daemon_set(namespace, ds)
    selector = ",".join(f"{k}={v}" for k, v in ds["spec"]["selector"]["matchLabels"].items())

    def placed() -> set[str] | None:
        pods = core.list_namespaced_pod(namespace, label_selector=selector).items
        nodes = {p.spec.node_name for p in pods if p.spec.node_name}
        return nodes if len(nodes) >= 2 else None

    assert wait_for(placed, timeout=60, what="agent pods on the GPU nodes") == {gfd, nfd}
    assert cpu not in {p.spec.node_name for p in core.list_namespaced_pod(namespace).items}


def test_monitoring_objects_pass_the_prometheus_operator_crds(
    helm: Helm, kube: Any, namespace: str, prometheus_operator_crds: None
) -> None:
    from kubernetes import client
    from upstream_crds import PROMETHEUS_OPERATOR_CRDS

    custom = client.CustomObjectsApi(kube)
    monitoring = {
        "prometheusRelease": "kps",
        "serviceMonitor": {"relabelings": RELABEL, "metricRelabelings": DROP},
    }
    with_pods = {
        **monitoring,
        "podMonitor": {"enabled": True, "relabelings": RELABEL, "metricRelabelings": DROP},
    }
    checked: dict[str, int] = {}
    for values in ({"monitoring": monitoring}, {"monitoring": with_pods}):
        objs = helm.template(values, api_versions=ALL_MONITORING, namespace=namespace)
        for kind in PROMETHEUS_OPERATOR_CRDS:
            for obj in find(objs, kind):
                custom.create_namespaced_custom_object(
                    "monitoring.coreos.com",
                    "v1",
                    namespace,
                    kind.lower() + "s",
                    obj,
                    dry_run="All",
                    field_validation="Strict",
                )
                checked[kind] = checked.get(kind, 0) + 1
    assert checked == {"ServiceMonitor": 2, "PodMonitor": 2, "PrometheusRule": 2}
    # The check can fail: a misspelt field is refused by the same call.
    rendered = helm.template({"monitoring": monitoring}, api_versions=ALL_MONITORING, namespace=namespace)
    bad = dict(find(rendered, "ServiceMonitor")[0])
    bad["spec"] = {**bad["spec"], "endpoints": [{**bad["spec"]["endpoints"][0], "relabellings": RELABEL}]}
    with pytest.raises(client.ApiException) as e:
        custom.create_namespaced_custom_object(
            "monitoring.coreos.com",
            "v1",
            namespace,
            "servicemonitors",
            bad,
            dry_run="All",
            field_validation="Strict",
        )
    assert (
        e.value.status == 400 and "strict decoding error" in e.value.body and "relabellings" in e.value.body
    )
