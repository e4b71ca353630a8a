"""Against the local control plane: the loads ConfigMap written by server-side apply, and the restart
policy rolling a real Deployment (the never-backwards rule holds on the workload too)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from serving_helpers import placement_data, settings
from typer.testing import CliRunner

from vibe import api, contract
from vibe.cluster.waiting import wait_for
from vibe.engines import ENGINES
from vibe.serving import kube, sidecar, state, update_policies
from vibe.serving.cli import app
from vibe.serving.errors import ServingError

pytestmark = pytest.mark.cluster


def moedeployment(name: str, serving: dict) -> dict:
    """A small MoEDeployment (2 layers x 8 experts on 4 GPUs x 2 slots) with ``spec.serving``."""
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.MOEDEPLOYMENT_KIND,
        "metadata": {"name": name},
        "spec": {
            "model": {"layers": 2, "experts": 8, "topK": 2, "hiddenSize": 64, "expertIntermediateSize": 32},
            "gpus": {"nodeSelector": {"pool": "none"}, "count": 4, "slotsPerGPU": 2},
            "serving": serving,
        },
    }


def deployment(name: str) -> dict:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "engine", "image": "engine:0"}]},
            },
        },
    }


def template_generation(api, namespace: str, name: str) -> str | None:
    from kubernetes import client

    d = client.AppsV1Api(api).read_namespaced_deployment(name, namespace)
    return (d.spec.template.metadata.annotations or {}).get(contract.ANNOTATION_PLACEMENT_GENERATION)


def test_export_loads_applies_the_load_configmap(
    kube_api, namespace: str, tmp_path: Path, monkeypatch
) -> None:
    from kubernetes import client

    core = client.CoreV1Api(kube_api)
    # Someone else owns another key of the same ConfigMap: server-side apply must leave it alone.
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "loads"}, "data": {"notes": "keep"}})
    monkeypatch.setattr(kube, "client", lambda *a, **kw: kube_api)
    count = np.zeros((10, 4, 3))
    count[:4, 1:] = [[4, 8, 12]] * 3  # 4 passes recorded, layer 0 dense
    dump = tmp_path / "dump.json"
    dump.write_text(json.dumps({"logical_count": count.tolist()}))
    args = ["export-loads", "--dump", str(dump), "--configmap", "loads", "--namespace", namespace]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    cm = core.read_namespaced_config_map("loads", namespace)
    assert json.loads(cm.data["loads.json"]) == {"loads": [[4.0, 8.0, 12.0]] * 3}
    assert cm.data["notes"] == "keep"
    assert cm.metadata.annotations[api.ANNOTATION_LOADS_FORWARD_PASSES] == "4"
    managers = {(m.manager, m.operation) for m in cm.metadata.managed_fields}
    assert ("vibe-loads", "Apply") in managers

    count[:4, 1:] = [[8, 8, 8]] * 3  # the next window replaces the loads
    dump.write_text(json.dumps({"logical_count": count.tolist()}))
    assert CliRunner().invoke(app, args).exit_code == 0
    cm = core.read_namespaced_config_map("loads", namespace)
    assert json.loads(cm.data["loads.json"]) == {"loads": [[8.0, 8.0, 8.0]] * 3}


def test_restart_patches_the_template_and_never_goes_back(kube_api, namespace: str) -> None:
    from kubernetes import client

    client.AppsV1Api(kube_api).create_namespaced_deployment(namespace, deployment("engine"))
    assert kube.restart_workload(kube_api, namespace, "Deployment", "engine", 3) is True
    assert template_generation(kube_api, namespace, "engine") == "3"
    assert (
        kube.restart_workload(kube_api, namespace, "Deployment", "engine", 3) is False
    )  # another pod did it
    assert kube.restart_workload(kube_api, namespace, "Deployment", "engine", 2) is False  # older: never
    assert template_generation(kube_api, namespace, "engine") == "3"

    # The pod the Deployment made names its workload through ReplicaSet -> Deployment.
    core = client.CoreV1Api(kube_api)

    def pod_name() -> str | None:
        pods = core.list_namespaced_pod(namespace, label_selector="app=engine").items
        return pods[0].metadata.name if pods else None

    pod = wait_for(pod_name, timeout=60, interval=0.5, what="a pod of Deployment engine")
    assert kube.discover_workload(kube_api, namespace, pod) == ("Deployment", "engine")


def test_sidecar_in_api_mode_rolls_the_deployment(kube_api, namespace: str, tmp_path: Path) -> None:
    """The operator's ConfigMap (annotations included) -> checked -> restart policy -> Event."""
    from kubernetes import client

    core = client.CoreV1Api(kube_api)
    client.AppsV1Api(kube_api).create_namespaced_deployment(namespace, deployment("engine"))
    data = placement_data(generation=4, shift=1)
    core_data = {k: v for k, v in data.items() if k != contract.KEY_META}
    annotations = {
        contract.ANNOTATION_PLACEMENT_GENERATION: "4",
        contract.ANNOTATION_CONTENT_HASH: contract.content_hash(core_data),
    }
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "dsv3-placement", "annotations": annotations}, "data": data}
    )
    state.save(tmp_path, state.Applied(3, "previous"))
    involved = {"kind": "ConfigMap", "name": "dsv3-placement", "api_version": "v1"}

    def report(type_: str, reason: str, message: str) -> None:
        kube.emit_event(kube_api, namespace, involved, reason, message, type_)

    restart = update_policies.RestartPolicy(
        lambda gen, uid: kube.restart_workload(kube_api, namespace, "Deployment", "engine", gen, uid),
        "Deployment/engine",
    )
    w = sidecar.Watcher(
        sidecar.observe_api(kube_api, namespace, "dsv3-placement"),
        settings(),
        ("sglang",),
        lambda: restart,
        report,
        str(tmp_path),
    )
    assert w.step() == "apply"
    assert template_generation(kube_api, namespace, "engine") == "4"
    assert state.load(tmp_path).generation == 4
    assert w.step() == "same"

    # A hand edit that breaks the hash is refused and reported, not rolled out.
    data[ENGINES["sglang"].key] = json.dumps({"physical_to_logical_map": [[0]]})
    annotations[contract.ANNOTATION_PLACEMENT_GENERATION] = "5"
    core.patch_namespaced_config_map(
        "dsv3-placement",
        namespace,
        {"metadata": {"annotations": annotations}, "data": data},
        _content_type="application/merge-patch+json",
    )
    assert w.step() == "HashMismatch"
    assert template_generation(kube_api, namespace, "engine") == "4"
    reasons = {e.reason for e in core.list_namespaced_event(namespace).items}
    assert {"PlacementApplied", "PlacementHashMismatch"} <= reasons


def test_follow_gpus_orders_ranks_by_where_the_pods_run(kube_api, namespace: str, gpu_nodes) -> None:
    """A 2-pod StatefulSet on 2 fake 8-GPU nodes: engine ranks are (node of pod-index w, GPU i)."""
    from cluster_plugin import TEST_NODES_LABEL
    from kubernetes import client

    from vibe.serving import rankmap

    nodes = gpu_nodes(2, gpus_per_node=8, taint=True)
    pool = client.CoreV1Api(kube_api).read_node(nodes[0]).metadata.labels[TEST_NODES_LABEL]
    labels = {"app": "engine"}
    client.AppsV1Api(kube_api).create_namespaced_stateful_set(
        namespace,
        {
            "metadata": {"name": "engine"},
            "spec": {
                "replicas": 2,
                "serviceName": "engine",
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "nodeSelector": {TEST_NODES_LABEL: pool},
                        "tolerations": [
                            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                        ],
                        "containers": [
                            {
                                "name": "engine",
                                "image": "engine:0",
                                "resources": {"limits": {"nvidia.com/gpu": "8"}},
                            }
                        ],
                    },
                },
            },
        },
    )
    core = client.CoreV1Api(kube_api)
    wait_for(
        lambda: (
            len(
                [
                    p
                    for p in core.list_namespaced_pod(namespace, label_selector="app=engine").items
                    if p.spec.node_name
                ]
            )
            == 2
        ),
        timeout=60,
        what="2 scheduled pods of StatefulSet engine",
    )
    gpus = rankmap.engine_gpus(kube_api, namespace, "engine-1", gpus_per_pod=8, timeout=10)
    node_of = {p.metadata.name: p.spec.node_name for p in core.list_namespaced_pod(namespace).items}
    assert gpus == [(node_of["engine-0"], i) for i in range(8)] + [(node_of["engine-1"], i) for i in range(8)]
    assert {node_of["engine-0"], node_of["engine-1"]} == set(nodes)
    # A group bigger than what is scheduled: the timeout says pods are unscheduled, not a bad volume.
    with pytest.raises(ServingError) as e:
        rankmap.engine_gpus(kube_api, namespace, "engine-1", gpus_per_pod=8, group_size=3, timeout=0)
    assert e.value.reason == "PodsNotScheduled" and "only 2 of 3 pods" in str(e.value)


def test_sidecar_takes_its_policy_from_the_moedeployment(kube_api, namespace: str) -> None:
    """``--moedeployment``: spec.serving (stored by the real CRD, CEL-checked) wins over the flags, and
    is read again before each apply, so editing the MoEDeployment changes what the next update does."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from vibe.crds.apply import apply_crds
    from vibe.serving.cli import _policy_picker

    apply_crds(kube_api)
    custom = client.CustomObjectsApi(kube_api)
    body = moedeployment("dsv3", {"onUpdate": "http"})
    body["spec"]["serving"]["endpoint"] = "ftp://127.0.0.1:9/expert-location"
    with pytest.raises(ApiException) as refused:  # neither a path nor an http(s) URL: the API server says no
        custom.create_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, api.MOEDEPLOYMENT_PLURAL, body
        )
    assert refused.value.status == 422 and "spec.serving.endpoint" in refused.value.body
    body["spec"]["serving"]["endpoint"] = "/expert-location"
    custom.create_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.MOEDEPLOYMENT_PLURAL, body)

    url = "http://127.0.0.1:9/engine"
    pick = _policy_picker(kube_api, namespace, "dsv3", "report", url, None, "sglang", None, lambda *a: None)
    chosen = pick()
    assert (
        isinstance(chosen, update_policies.HttpPolicy) and chosen.url == "http://127.0.0.1:9/expert-location"
    )

    custom.patch_namespaced_custom_object(
        api.GROUP,
        api.VERSION,
        namespace,
        api.MOEDEPLOYMENT_PLURAL,
        "dsv3",
        {"spec": {"serving": {"onUpdate": "report"}}},
    )
    assert isinstance(pick(), update_policies.ReportPolicy)


class _Collector:
    """A local HTTP server that records every request (path, Authorization header), answering ``status``."""

    def __init__(self, status: int = 200, location: str = "") -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.seen: list[tuple[str, str, str | None]] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                collector.seen.append((self.command, self.path, self.headers.get("Authorization")))
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_GET = _record

            def log_message(self, *a) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_spec_cannot_steer_where_the_sidecar_sends_its_token(
    kube_api, namespace: str, tmp_path: Path, monkeypatch
) -> None:
    """Issue 20, defect 1: ``spec.serving.endpoint`` naming another host made ``vibe serving watch --policy
    http --url ENGINE --token-file ...`` POST the placement with the pod's bearer token to that host. Now
    the pod's ``--url`` is the only origin it posts to: the spec may pick a path on it, a foreign URL is
    refused with a Warning Event, and a redirect from the engine is not followed with the token."""
    from kubernetes import client

    from vibe.crds.apply import apply_crds

    apply_crds(kube_api)
    monkeypatch.setattr(kube, "client", lambda *a, **kw: kube_api)
    monkeypatch.delenv("POD_NAME", raising=False)
    engine, elsewhere = _Collector(), _Collector()
    redirector = _Collector(status=307, location=f"{elsewhere.url}/stolen")
    try:
        core = client.CoreV1Api(kube_api)
        custom = client.CustomObjectsApi(kube_api)
        body = moedeployment("dsv3", {"onUpdate": "http", "endpoint": f"{elsewhere.url}/collect"})
        custom.create_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, api.MOEDEPLOYMENT_PLURAL, body
        )
        token = tmp_path / "token"
        token.write_text("pod-secret-token\n")

        def publish(generation: int) -> None:
            data = placement_data(generation=generation, shift=generation)
            cm = {"metadata": {"name": "dsv3-placement"}, "data": data}
            try:
                core.replace_namespaced_config_map("dsv3-placement", namespace, cm)
            except client.ApiException:
                core.create_namespaced_config_map(namespace, cm)

        def watch(url: str) -> str:
            args = ["watch", "--source", "api", "--configmap", "dsv3-placement", "--namespace", namespace,
                    "--moedeployment", "dsv3", "--policy", "http", "--url", url, "--token-file", str(token),
                    "--state-dir", str(tmp_path / "state"), "--once", "--ep-size", "4",
                    "--redundant-experts", "4", "--num-experts", "8", "--num-layers", "4",
                    "--first-moe-layer", "1"]  # fmt: skip
            result = CliRunner().invoke(app, args)
            assert result.exit_code == 0, result.output
            return result.output.strip().splitlines()[-1]

        state.save(tmp_path / "state", state.Applied(1, "previous"))
        publish(2)
        assert watch(f"{engine.url}/engine") == "apply"
        assert elsewhere.seen == []
        assert engine.seen == [("POST", "/engine", "Bearer pod-secret-token")]
        reasons = {e.reason for e in core.list_namespaced_event(namespace).items}
        assert "PlacementEndpointRefused" in reasons

        # A path in the spec picks the path on --url's origin.
        patch = {"spec": {"serving": {"endpoint": "/v2/location"}}}
        custom.patch_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, api.MOEDEPLOYMENT_PLURAL, "dsv3", patch
        )
        publish(3)
        assert watch(f"{engine.url}/engine") == "apply"
        assert engine.seen[-1] == ("POST", "/v2/location", "Bearer pod-secret-token")

        # The engine's origin answering with a redirect to another host: not followed, not applied.
        publish(4)
        assert watch(f"{redirector.url}/engine") == "ApplyFailed"
        assert [s[:2] for s in redirector.seen] == [("POST", "/v2/location")]
        assert elsewhere.seen == []
        assert state.load(tmp_path / "state").generation == 3
    finally:
        for server in (engine, elsewhere, redirector):
            server.close()
