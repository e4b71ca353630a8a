"""Faults and hostile inputs against the operator on the local control plane (issue 15), one per test:
a placement worker killed, the operator killed under its workers, MoEDeployments and namespaces
deleted while the operator is down, the placement ConfigMap deleted or edited by hand, the API server
refusing a write (a ResourceQuota: a real 403), and the narrow watches that replaced watching every
Pod and ConfigMap.

The module's operator runs with one placement worker per lane and a resync of 10 minutes, so whatever
happens within seconds here was caused by a watch, not by the periodic resync.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from typing import Any

import pytest
from cluster_plugin import TEST_NODES_LABEL
from operator_builders import deployment_body, profile_body
from operator_harness import Objects, OperatorProcess

from vibe.cluster.waiting import wait_for
from vibe.placement.synthetic import skewed_loads

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

FAST = 20  # seconds: well inside the 600 s resync


def loads_json(seed: int, mean: float = 512.0) -> str:
    return json.dumps({"loads": skewed_loads(4, 16, mean_tokens=mean, seed=seed).tolist()})


@pytest.fixture(scope="module")
def operator_args() -> tuple[str, ...]:
    return ("--compute-processes", "1", "--resync", "600")


@pytest.fixture
def selector(gpu_nodes: Any, objs: Objects) -> dict[str, str]:
    prefix = f"f-{uuid.uuid4().hex[:6]}"
    for node in gpu_nodes(2, prefix=prefix, gpus_per_node=4):
        objs.put_profile(profile_body(node, gpus=4, slow={1: 1.3}))
    return {TEST_NODES_LABEL: prefix}


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (the placement workers and multiprocessing's tracker)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as fh:
                    fields = fh.read().rsplit(") ", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(d))
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def workers(op: OperatorProcess) -> list[int]:
    assert op.proc is not None
    out = []
    for pid in children(op.proc.pid):
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            if b"spawn_main" in fh.read():
                out.append(pid)
    return out


# --------------------------------------------------------------------------------------------------
# 1. a dead placement worker


def test_a_killed_placement_worker_is_replaced_and_placement_goes_on(
    objs: Objects, selector: dict, operator: OperatorProcess
):
    objs.put_loads("loads", loads_json(1))
    drift = {"minGain": 0.0, "cooldownSeconds": 0}
    objs.create(
        deployment_body("m", selector=selector, workload={"configMapRef": {"name": "loads"}}, drift=drift)
    )
    objs.wait_generation("m", 1)
    before = operator.count("vibe_placement_worker_restarts_total")
    pids = workers(operator)
    assert len(pids) == 2, pids  # one per lane
    for pid in pids:
        os.kill(pid, signal.SIGKILL)  # what a cgroup OOM kill does
    objs.put_loads("loads", loads_json(2, mean=2048.0))
    objs.wait_generation("m", 2, timeout=FAST)
    assert operator.count("vibe_placement_worker_restarts_total") >= before + 1
    event = objs.wait_event("m", "PlacementWorkerLost")
    assert event["type"] == "Warning" and "rebuilt" in event["message"]
    assert operator.live() and all(p not in workers(operator) for p in pids)
    assert "BrokenProcessPool" not in operator.tail(400)


def test_the_workers_die_with_the_operator(cluster: Any, profile_ns: str):
    op = OperatorProcess(cluster.kubeconfig, profile_ns, "--compute-processes", "2").start()
    try:
        wait_for(lambda: len(workers(op)) == 3, timeout=30, what="3 placement workers")
        kids = children(op.proc.pid)  # type: ignore[union-attr]
    finally:
        op.kill()  # SIGKILL: no cleanup handler runs
    wait_for(lambda: not any(alive(p) for p in kids), timeout=10, interval=0.2, what=f"orphans {kids}")


# --------------------------------------------------------------------------------------------------
# 8. no finalizer: deletion works with the operator down


def test_delete_works_while_the_operator_is_down(cluster: Any, kube: Any, profile_ns: str, gpu_nodes: Any):
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(kube)
    ns = f"t-down-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": ns, "labels": {"vibe.dev/test": "true"}}})
    op = OperatorProcess(cluster.kubeconfig, profile_ns, "--compute-processes", "0").start()
    objs = Objects(kube, ns, profile_ns, log=op.tail)
    try:
        prefix = f"d-{uuid.uuid4().hex[:6]}"
        for node in gpu_nodes(2, prefix=prefix, gpus_per_node=4):
            objs.put_profile(profile_body(node, gpus=4))
        for name in ("a", "b"):
            objs.create(deployment_body(name, selector={TEST_NODES_LABEL: prefix}))
        for name in ("a", "b"):
            objs.wait_condition(name, "Ready", "True")
            assert not objs.get(name)["metadata"].get("finalizers"), objs.get(name)["metadata"]
    finally:
        op.kill()
    objs.delete("a")  # kubectl delete moed a, with nobody to remove a finalizer

    def gone(read: Any) -> bool:
        try:
            read()
        except ApiException as e:
            if e.status == 404:
                return True
            raise
        return False

    wait_for(lambda: gone(lambda: objs.get("a")), timeout=15, what="MoEDeployment a deleted")
    core.delete_namespace(ns)  # and its namespace, with b still in it
    wait_for(lambda: gone(lambda: core.read_namespace(ns)), timeout=90, interval=1, what=f"namespace {ns}")


# --------------------------------------------------------------------------------------------------
# 10. the placement ConfigMap, deleted or edited by hand


def test_a_deleted_or_edited_placement_is_restored_within_seconds(objs: Objects, selector: dict):
    objs.create(deployment_body("m", selector=selector))
    cm = objs.wait_generation("m", 1)
    data = cm["data"]
    core = objs.core

    core.delete_namespaced_config_map("m-placement", objs.ns)
    back = wait_for(lambda: objs.config_map("m-placement"), timeout=FAST, what="ConfigMap restored")
    assert back["data"] == data  # identical data keeps its generation
    assert back["metadata"]["annotations"]["vibe.dev/placement-generation"] == "1"
    assert json.loads(back["data"]["placement-meta.json"])["placementGeneration"] == 1
    assert "deleted" in objs.wait_event("m", "PlacementRestored")["message"]

    # an annotation is no source of truth: 999 is repaired, the generation stays 1
    core.patch_namespaced_config_map(
        "m-placement", objs.ns, {"metadata": {"annotations": {"vibe.dev/placement-generation": "999"}}}
    )
    wait_for(
        lambda: (
            (objs.config_map("m-placement") or {})["metadata"]["annotations"]["vibe.dev/placement-generation"]
            == "1"
        ),
        timeout=FAST,
        what="annotation repaired",
    )

    # edited data is rewritten with what the operator placed
    core.patch_namespaced_config_map(
        "m-placement", objs.ns, {"data": {"sglang-expert-location.json": '{"physical_to_logical_map": []}'}}
    )
    wait_for(lambda: (objs.config_map("m-placement") or {}).get("data") == data, timeout=FAST, what="data")
    status = objs.get("m")["status"]
    assert status["placementGeneration"] == 1
    assert objs.condition("m", "Ready")["status"] == "True"


# --------------------------------------------------------------------------------------------------
# 6. a 4xx from the API server becomes a condition, said once


def test_a_refused_write_is_a_condition_with_the_api_servers_reason(
    objs: Objects, selector: dict, operator: OperatorProcess
):
    objs.put_loads("loads", loads_json(1))
    wait_for(lambda: objs.config_map("kube-root-ca.crt"), timeout=30, what="kube-root-ca.crt")
    quota = {"metadata": {"name": "two-configmaps"}, "spec": {"hard": {"count/configmaps": "2"}}}
    objs.core.create_namespaced_resource_quota(objs.ns, quota)
    wait_for(
        lambda: (
            (objs.core.read_namespaced_resource_quota("two-configmaps", objs.ns).status.used or {}).get(
                "count/configmaps"
            )
            == "2"
        ),
        timeout=30,
        what="quota usage counted",
    )
    objs.create(deployment_body("m", selector=selector, workload={"configMapRef": {"name": "loads"}}))
    ready = objs.wait_condition("m", "Ready", "False", "Forbidden", timeout=FAST)
    assert "exceeded quota" in ready["message"] and "403" in ready["message"]
    assert objs.condition("m", "Degraded")["reason"] == "Forbidden"
    objs.wait_event("m", "Forbidden")
    objs.core.delete_namespaced_resource_quota("two-configmaps", objs.ns)
    objs.wait_condition("m", "Ready", "True", timeout=60)  # the backoff retry places it
    assert "Traceback" not in operator.tail(400)


# --------------------------------------------------------------------------------------------------
# 5, 11. narrow watches: what a deployment depends on wakes it; nothing else is watched or kept


def test_pods_and_load_config_maps_wake_their_deployment_through_narrow_watches(
    objs: Objects, gpu_nodes: Any, operator: OperatorProcess
):
    prefix = f"p-{uuid.uuid4().hex[:6]}"
    nodes = gpu_nodes(2, prefix=prefix, gpus_per_node=4)
    for node in nodes:
        objs.put_profile(profile_body(node, gpus=4))
    objs.put_loads("loads", loads_json(1))
    body = deployment_body("m", count=8, workload={"configMapRef": {"name": "loads"}},
                           drift={"minGain": 0.0, "cooldownSeconds": 0})  # fmt: skip
    body["spec"]["gpus"] = {"podSelector": {"matchLabels": {"app": "moe"}}, "gpusPerPod": 4, "count": 8,
                            "slotsPerGPU": 3}  # fmt: skip
    objs.create(body)
    objs.wait_condition("m", "Ready", "False", "InsufficientGPUs")
    for i, node in enumerate(nodes):  # the serving pods appear: the pod watch wakes the deployment
        labels = {"app": "moe", "apps.kubernetes.io/pod-index": str(i)}
        pod = {"metadata": {"name": f"moe-{i}", "labels": labels},
               "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}],
                        "tolerations": [{"operator": "Exists"}]}}  # fmt: skip
        objs.core.create_namespaced_pod(objs.ns, pod)
    objs.wait_condition("m", "Ready", "True", timeout=FAST)
    assert objs.get("m")["status"]["nodes"] == sorted(nodes)
    objs.put_loads("loads", loads_json(2, mean=2048.0))  # the load ConfigMap's watch wakes it
    objs.wait_generation("m", 2, timeout=FAST)


def test_watch_memory_holds_live_objects_only(kube: Any, namespace: str):
    """40 pods come and go under a watched selector: the watch remembers none of them after (the old
    watcher state kept an entry per deleted pod: 1,000 entries after 1,000 pods)."""
    import asyncio

    from vibe.operator.watches import Watches, pods_need

    woken: list[tuple[str, str]] = []

    async def main() -> Any:
        watches = Watches(kube, woken.append)
        need = pods_need(namespace, {"matchLabels": {"app": "churn"}})
        watches.want((namespace, "m"), [need])
        watch = watches.threads[need]
        await asyncio.to_thread(wait_for, lambda: watch.marks is not None, timeout=10, what="listed")
        from kubernetes import client

        core = client.CoreV1Api(kube)
        names = [f"churn-{i}" for i in range(40)]
        for n in names:
            pod = {"metadata": {"name": n, "labels": {"app": "churn"}},
                   "spec": {"containers": [{"name": "c", "image": "x"}]}}  # fmt: skip
            await asyncio.to_thread(core.create_namespaced_pod, namespace, pod)
        await asyncio.to_thread(wait_for, lambda: len(watch.marks) == 40, timeout=30, what="40 seen")
        for n in names:
            await asyncio.to_thread(core.delete_namespaced_pod, n, namespace, grace_period_seconds=0)
        await asyncio.to_thread(wait_for, lambda: not watch.marks, timeout=60, what="all forgotten")
        await asyncio.sleep(0.2)
        watches.drop((namespace, "m"))
        assert not watches.threads
        return watch

    watch = asyncio.run(main())
    assert watch.marks == {} and woken and all(k == (namespace, "m") for k in woken)


# --------------------------------------------------------------------------------------------------
# 6. RBAC missing: one line and an exit, not a minute of retries and a traceback per kind


def test_a_missing_permission_is_one_line_and_an_exit(cluster: Any, kube: Any, namespace: str, tmp_path: Any):
    import subprocess
    import sys

    from kubernetes import client

    from vibe.cluster.identity import service_account_kubeconfig
    from vibe.operator.permissions import NEEDS

    core, rbac = client.CoreV1Api(kube), client.RbacAuthorizationV1Api(kube)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "op"}})
    role = f"{namespace}-almost"
    rules = [  # everything the operator needs but listing pods
        {"apiGroups": [n.group], "verbs": [n.verb],
         "resources": [f"{n.resource}/{n.subresource}" if n.subresource else n.resource]}
        for n in NEEDS
        if (n.verb, n.resource) != ("list", "pods")
    ]  # fmt: skip
    rbac.create_cluster_role({"metadata": {"name": role}, "rules": rules})
    binding = {"metadata": {"name": role}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io",
               "kind": "ClusterRole", "name": role},
               "subjects": [{"kind": "ServiceAccount", "name": "op", "namespace": namespace}]}  # fmt: skip
    rbac.create_cluster_role_binding(binding)
    try:
        kc = service_account_kubeconfig(kube, cluster.kubeconfig, namespace, "op", tmp_path / "op.kubeconfig")
        env = {**os.environ, "KUBECONFIG": str(kc)}
        proc = subprocess.run(
            [sys.executable, "-m", "vibe.operator", "--standalone", "--metrics-port", "0"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        rbac.delete_cluster_role_binding(role)
        rbac.delete_cluster_role(role)
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode != 0 and "Traceback" not in out, out
    assert out.splitlines()[-1].startswith(
        "vibe operator: Forbidden: this identity may not list pods cluster-wide"
    ), out
    assert "configmaps" not in out and len(out.splitlines()) <= 2, out
