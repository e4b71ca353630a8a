"""Serving under NVIDIA Dynamo and LeaderWorkerSet, against the local control plane.

* ``restart`` targets the ``DynamoGraphDeployment`` itself: Dynamo owns the LeaderWorkerSets / Grove
  PodCliques it generates and reverts edits to them. The patch sets ``vibe.dev/placement-generation`` on
  the engine components' ``podTemplate`` (part of Dynamo's worker spec hash, which rolls the workers:
  ``deploy/operator/api/v1beta1/worker_hash.go``), never on the frontend, never backwards.
* Rank order under Grove: leader PodClique ``-ldr`` = node rank 0, worker PodClique ``-wkr`` pod ``i``
  = ``GROVE_PCLQ_POD_INDEX + 1`` (Dynamo's ``GroveMultinodeDeployer.GetNodeRank``).
* ``restart`` of a LeaderWorkerSet, with LeaderWorkerSet's own CRD (``tests/upstream_crds.py``).

Dynamo's ``DynamoGraphDeployment`` CRD cannot be had here (``tests/upstream_crds.py`` says why), so the
DGD tests install ``upstream_crds.STAND_IN_DGD_CRD`` (fixture ``dgd_crd``): the same group, version,
kind and plural, with a schema that keeps every field. What is tested is vibe's side: the patch a real
API server accepts, the resourceVersion guard, which components change; Dynamo's controller, which
rolls the pods, is not run.
"""

from __future__ import annotations

import pytest

from vibe import api
from vibe.contract import ANNOTATION_PLACEMENT_GENERATION
from vibe.serving import kube, rankmap
from vibe.serving.errors import ServingError


def dgd(name: str) -> dict:
    """A DGD shaped like Dynamo's own v1beta1 templates: a frontend and a 2-node decode worker."""

    def component(cname: str, type_: str, **extra: object) -> dict:
        template = {"spec": {"containers": [{"name": "main", "image": "runtime:1.6.1"}]}}
        return {"name": cname, "type": type_, "replicas": 1, "podTemplate": template, **extra}

    return {
        "apiVersion": f"{api.DGD_API_GROUP}/{api.DGD_API_VERSION}",
        "kind": api.DGD_KIND,
        "metadata": {"name": name},
        "spec": {
            "backendFramework": "sglang",
            "components": [
                component("Frontend", "frontend"),
                component("decode", "decode", multinode={"nodeCount": 2}),
                component("prefill", "prefill"),
            ],
        },
    }


def annotations(obj: dict) -> dict[str, str | None]:
    return {
        c["name"]: ((c.get("podTemplate") or {}).get("metadata") or {})
        .get("annotations", {})
        .get(ANNOTATION_PLACEMENT_GENERATION)
        for c in obj["spec"]["components"]
    }


def read_dgd(kube_api, namespace: str, name: str) -> dict:
    from kubernetes import client

    return client.CustomObjectsApi(kube_api).get_namespaced_custom_object(
        api.DGD_API_GROUP, api.DGD_API_VERSION, namespace, api.DGD_PLURAL, name
    )


def create_dgd(kube_api, namespace: str, body: dict) -> None:
    from kubernetes import client

    client.CustomObjectsApi(kube_api).create_namespaced_custom_object(
        api.DGD_API_GROUP, api.DGD_API_VERSION, namespace, api.DGD_PLURAL, body
    )


# ---- pure: the Grove rank rule


@pytest.mark.parametrize(
    ("clique", "index", "rank"),
    [("dsv3-0-decode-ldr", "0", 0), ("dsv3-0-decode-wkr", "0", 1), ("dsv3-0-decode-wkr", 6, 7)],
)
def test_grove_node_rank_is_dynamos(clique: str, index: str | int, rank: int) -> None:
    assert rankmap.grove_node_rank(clique, index) == rank


@pytest.mark.parametrize(
    ("clique", "index", "says"),
    [
        ("dsv3-0-decode-ldr", "1", "has a pod 1"),
        ("dsv3-0-decode-wkr", "x", "no valid pod index"),
        ("dsv3-0-decode-wkr", None, "no valid pod index"),
        ("dsv3-0-frontend", "0", "neither a leader"),
    ],
)
def test_grove_node_rank_refuses_what_it_cannot_order(clique: str, index: object, says: str) -> None:
    with pytest.raises(ServingError) as e:
        rankmap.grove_node_rank(clique, index)  # type: ignore[arg-type]
    assert says in str(e.value)


# ---- against the API server


def test_restart_patches_the_dgd_engine_components_never_backwards(kube_api, namespace: str, dgd_crd) -> None:
    create_dgd(kube_api, namespace, dgd("dsv3"))
    assert kube.restart_workload(kube_api, namespace, api.DGD_KIND, "dsv3", 4) is True
    obj = read_dgd(kube_api, namespace, "dsv3")
    # decode and prefill run engines; the frontend does not and must not roll.
    assert annotations(obj) == {"Frontend": None, "decode": "4", "prefill": "4"}
    # Everything else of the list is what was there: a merge patch replaces the list whole.
    assert [c["podTemplate"]["spec"] for c in obj["spec"]["components"]] == [
        c["podTemplate"]["spec"] for c in dgd("dsv3")["spec"]["components"]
    ]
    assert obj["spec"]["components"][1]["multinode"] == {"nodeCount": 2}
    assert kube.restart_workload(kube_api, namespace, api.DGD_KIND, "dsv3", 4) is False  # another pod did
    assert kube.restart_workload(kube_api, namespace, api.DGD_KIND, "dsv3", 3) is False  # older: never
    # One named component: only it moves on.
    assert kube.restart_workload(kube_api, namespace, api.DGD_KIND, "dsv3/decode", 5) is True
    assert annotations(read_dgd(kube_api, namespace, "dsv3")) == {
        "Frontend": None,
        "decode": "5",
        "prefill": "4",
    }
    with pytest.raises(ServingError) as e:
        kube.restart_workload(kube_api, namespace, api.DGD_KIND, "dsv3/nope", 6)
    assert "has no component 'nope'" in str(e.value)
    with pytest.raises(ServingError) as e:
        kube.restart_workload(kube_api, namespace, api.DGD_KIND, "absent", 6)
    assert e.value.reason == "ApplyFailed" and "404" in str(e.value)


def test_restart_of_a_dgd_without_engine_components_says_so(kube_api, namespace: str, dgd_crd) -> None:
    body = dgd("fe")
    body["spec"]["components"] = body["spec"]["components"][:1]
    create_dgd(kube_api, namespace, body)
    with pytest.raises(ServingError) as e:
        kube.restart_workload(kube_api, namespace, api.DGD_KIND, "fe", 1)
    assert "no component of type worker/prefill/decode" in str(e.value)


def grove_pod(name: str, node: str, clique: str, index: int, replica: int = 0) -> dict:
    return {
        "metadata": {
            "name": name,
            "labels": {
                api.DYNAMO_LABEL_DGD_NAME: "dsv3",
                api.DYNAMO_LABEL_COMPONENT: "decode",
                api.GROVE_LABEL_PCSG: "dsv3-0-decode",
                api.GROVE_LABEL_PCSG_REPLICA: str(replica),
                api.GROVE_LABEL_PCLQ: clique,
                api.GROVE_LABEL_PCLQ_POD_INDEX: str(index),
            },
        },
        # nodeName set: the pod is bound where it says, as the scheduler would have done.
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": "runtime:1.6.1"}]},
    }


def test_grove_ranks_follow_the_cliques_and_the_dgd_node_count(
    kube_api, namespace: str, dgd_crd, monkeypatch
) -> None:
    from kubernetes import client

    body = dgd("dsv3")
    body["spec"]["components"][1]["multinode"] = {"nodeCount": 3}
    create_dgd(kube_api, namespace, body)
    core = client.CoreV1Api(kube_api)
    # Created out of order, and a second scaling-group replica on other nodes that must not mix in.
    for pod in (
        grove_pod("dsv3-0-decode-0-wkr-1", "node-c", "dsv3-0-decode-0-decode-wkr", 1),
        grove_pod("dsv3-0-decode-0-ldr-0", "node-b", "dsv3-0-decode-0-decode-ldr", 0),
        grove_pod("dsv3-0-decode-0-wkr-0", "node-a", "dsv3-0-decode-0-decode-wkr", 0),
        grove_pod("dsv3-0-decode-1-ldr-0", "node-x", "dsv3-0-decode-1-decode-ldr", 0, replica=1),
    ):
        core.create_namespaced_pod(namespace, pod)
    gpus = rankmap.engine_gpus(kube_api, namespace, "dsv3-0-decode-0-wkr-1", gpus_per_pod=2, timeout=5)
    # node rank 0 = leader (node-b), 1 = worker pod 0 (node-a), 2 = worker pod 1 (node-c).
    assert gpus == [("node-b", 0), ("node-b", 1), ("node-a", 0), ("node-a", 1), ("node-c", 0), ("node-c", 1)]

    # The pod's own GROVE_PCLQ_POD_INDEX must agree with the label the other pods are ranked by.
    monkeypatch.setenv("POD_NAME", "dsv3-0-decode-0-wkr-1")
    monkeypatch.setenv(api.GROVE_ENV_PCLQ_POD_INDEX, "1")
    assert rankmap.engine_gpus(kube_api, namespace, "dsv3-0-decode-0-wkr-1", 2, timeout=5) == gpus
    monkeypatch.setenv(api.GROVE_ENV_PCLQ_POD_INDEX, "0")
    with pytest.raises(ServingError) as e:
        rankmap.engine_gpus(kube_api, namespace, "dsv3-0-decode-0-wkr-1", 2, timeout=5)
    assert "GROVE_PCLQ_POD_INDEX=0 disagrees" in str(e.value)
    monkeypatch.delenv(api.GROVE_ENV_PCLQ_POD_INDEX)

    # The second replica has only its leader: waiting for its 3 nodes times out, naming the count.
    with pytest.raises(ServingError) as e:
        rankmap.engine_gpus(kube_api, namespace, "dsv3-0-decode-1-ldr-0", 2, timeout=0)
    assert e.value.reason == "PodsNotScheduled" and "only 1 of 3 pods" in str(e.value)

    # The pod names its DGD component, so the sidecars restart the DGD, not what Dynamo generated.
    assert kube.discover_workload(kube_api, namespace, "dsv3-0-decode-0-wkr-1") == (
        api.DGD_KIND,
        "dsv3/decode",
    )


def test_restart_rolls_a_leaderworkerset_of_the_upstream_crd(kube_api, namespace: str, lws_crd) -> None:
    import yaml
    from kubernetes import client

    lws = yaml.safe_load(
        """
apiVersion: leaderworkerset.x-k8s.io/v1
kind: LeaderWorkerSet
metadata: {name: engine}
spec:
  replicas: 1
  leaderWorkerTemplate:
    size: 2
    leaderTemplate:
      spec: {containers: [{name: engine, image: engine:0}]}
    workerTemplate:
      spec: {containers: [{name: engine, image: engine:0}]}
"""
    )
    custom = client.CustomObjectsApi(kube_api)
    custom.create_namespaced_custom_object(
        api.LWS_API_GROUP, api.LWS_API_VERSION, namespace, api.LWS_PLURAL, lws
    )
    assert kube.restart_workload(kube_api, namespace, "LeaderWorkerSet", "engine", 7) is True
    obj = custom.get_namespaced_custom_object(
        api.LWS_API_GROUP, api.LWS_API_VERSION, namespace, api.LWS_PLURAL, "engine"
    )
    lwt = obj["spec"]["leaderWorkerTemplate"]
    for template in ("leaderTemplate", "workerTemplate"):
        assert lwt[template]["metadata"]["annotations"][ANNOTATION_PLACEMENT_GENERATION] == "7"
        assert lwt[template]["spec"]["containers"][0]["image"] == "engine:0"
    assert kube.restart_workload(kube_api, namespace, "LeaderWorkerSet", "engine", 6) is False


def test_watch_cli_restarts_the_dgd_component(
    kube_api, namespace: str, dgd_crd, tmp_path, monkeypatch
) -> None:
    """`vibe serving watch --policy restart --target DynamoGraphDeployment/dsv3/decode`, end to end: the
    operator-shaped ConfigMap, checked and fitted, rolls the DGD's decode component and nothing else."""
    from kubernetes import client
    from serving_helpers import E, G, L, P, placement_data
    from typer.testing import CliRunner

    from vibe import contract
    from vibe.serving.cli import app

    create_dgd(kube_api, namespace, dgd("dsv3"))
    data = placement_data(generation=6)
    core_data = {k: v for k, v in data.items() if k != contract.KEY_META}
    annotations_ = {
        contract.ANNOTATION_PLACEMENT_GENERATION: "6",
        contract.ANNOTATION_CONTENT_HASH: contract.content_hash(core_data),
    }
    client.CoreV1Api(kube_api).create_namespaced_config_map(
        namespace, {"metadata": {"name": "dsv3-placement", "annotations": annotations_}, "data": data}
    )
    monkeypatch.setattr(kube, "client", lambda *a, **kw: kube_api)
    monkeypatch.delenv("POD_NAME", raising=False)
    from vibe.serving import state

    state.save(tmp_path, state.Applied(5, "previous"))  # what the init container had applied
    args = [
        "watch",
        "--source=api",
        "--configmap=dsv3-placement",
        f"--namespace={namespace}",
        f"--state-dir={tmp_path}",
        "--policy=restart",
        "--target=DynamoGraphDeployment/dsv3/decode",
        f"--ep-size={G}",
        f"--redundant-experts={P - E}",
        f"--num-experts={E}",
        f"--num-layers={L + 1}",
        "--first-moe-layer=1",
        "--once",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "apply" in result.output
    assert annotations(read_dgd(kube_api, namespace, "dsv3")) == {
        "Frontend": None,
        "decode": "6",
        "prefill": None,
    }
    assert state.load(tmp_path).generation == 6
    # Again: the same generation is not applied twice, and the DGD is not patched again.
    version = read_dgd(kube_api, namespace, "dsv3")["metadata"]["resourceVersion"]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert read_dgd(kube_api, namespace, "dsv3")["metadata"]["resourceVersion"] == version
