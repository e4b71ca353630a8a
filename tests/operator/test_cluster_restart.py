"""Crash safety and replicas: an operator killed mid-way converges on restart without a duplicate
generation, and two peered replicas produce exactly one placement per change.

Each test runs its own operator processes (this module's tests must not overlap with the module-wide
operator of ``test_cluster_operator``, and pytest finishes one module before the next).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from cluster_plugin import TEST_NODES_LABEL
from operator_builders import deployment_body, profile_body
from operator_harness import Objects, OperatorProcess

from vibe import api, contract
from vibe.cluster.waiting import wait_for
from vibe.placement.synthetic import skewed_loads

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _setup(kube: Any, namespace: str, profile_ns: str, gpu_nodes: Any, n_deployments: int) -> Objects:
    objs = Objects(kube, namespace, profile_ns)
    prefix = f"rs-{uuid.uuid4().hex[:6]}"
    for node in gpu_nodes(4, prefix=prefix, gpus_per_node=8):
        objs.put_profile(profile_body(node, gpus=8, slow={3: 1.3}))
    loads = json.dumps({"loads": skewed_loads(8, 64, mean_tokens=1024, seed=1).tolist()})
    objs.put_loads("loads", loads)
    model = {"layers": 8, "experts": 64, "topK": 8, "hiddenSize": 7168, "expertIntermediateSize": 2048,
             "dtype": "fp8"}  # fmt: skip
    for i in range(n_deployments):
        body = deployment_body(
            f"m{i}", selector={TEST_NODES_LABEL: prefix}, count=16 + 8 * (i % 3), slots=5,
            workload={"configMapRef": {"name": "loads"}}, output={"formats": ["vibe", "sglang", "eplb"]},
        )  # fmt: skip
        body["spec"]["model"] = dict(model)
        objs.create(body)
    return objs


def _generations(objs: Objects, n: int) -> dict[str, tuple[int | None, int | None]]:
    out = {}
    for i in range(n):
        cm = objs.config_map(f"m{i}-placement")
        st = objs.get(f"m{i}").get("status") or {}
        gen = int(cm["metadata"]["annotations"][contract.ANNOTATION_PLACEMENT_GENERATION]) if cm else None
        out[f"m{i}"] = (gen, st.get("placementGeneration"))
    return out


def test_killed_mid_way_converges_without_duplicate_generation(
    cluster, kube, namespace, profile_ns, gpu_nodes
):
    from kubernetes import client

    n = 12
    # One placement worker, so the 12 placements land one after another and the kill below falls
    # between them (with one process per core they can all land before a poll sees the first).
    op = OperatorProcess(cluster.kubeconfig, profile_ns, "--compute-processes", "1").start()
    core = client.CoreV1Api(kube)

    def placed() -> bool:
        return any(
            c.metadata.name.endswith("-placement") for c in core.list_namespaced_config_map(namespace).items
        )

    try:
        objs = _setup(kube, namespace, profile_ns, gpu_nodes, n)
        # Kill it as soon as the first placement lands: some written, some not, some without status.
        wait_for(placed, timeout=60, interval=0.02, what="a first placement")
        op.kill()
        before = _generations(objs, n)
        assert any(g[0] is None for g in before.values()) or any(g[1] is None for g in before.values()), (
            before
        )
    finally:
        op.kill()
    restarted = OperatorProcess(cluster.kubeconfig, profile_ns).start()
    try:
        objs.log = restarted.tail
        for i in range(n):
            objs.wait_condition(f"m{i}", "Ready", "True", "Placed", timeout=120)
        wait_for(lambda: all(g == (1, 1) for g in _generations(objs, n).values()), timeout=30,
                 what=f"every deployment at generation 1: {_generations(objs, n)}")  # fmt: skip
        # And it stays there: reconciled once more each, nothing is rewritten.
        rvs = {i: objs.config_map(f"m{i}-placement")["metadata"]["resourceVersion"] for i in range(n)}
        unchanged = 'vibe_reconcile_duration_seconds_count{outcome="unchanged"}'
        before = restarted.count(unchanged)
        for i in range(n):
            objs.patch(f"m{i}", {"metadata": {"annotations": {api.ANNOTATION_RECONCILE_TRIGGER: "again"}}})
        wait_for(lambda: restarted.count(unchanged) >= before + n, timeout=60,
                 what=f"{n} unchanged reconciles\n{restarted.tail()}")  # fmt: skip
        assert rvs == {i: objs.config_map(f"m{i}-placement")["metadata"]["resourceVersion"] for i in range(n)}
        assert all(g == (1, 1) for g in _generations(objs, n).values())
    finally:
        restarted.stop()


def test_two_peered_replicas_write_each_placement_once(cluster, kube, namespace, profile_ns, gpu_nodes):
    peering = f"vibe-{uuid.uuid4().hex[:6]}"
    a = OperatorProcess(cluster.kubeconfig, profile_ns, "--peering", peering, "--priority", "100").start()
    b = OperatorProcess(cluster.kubeconfig, profile_ns, "--peering", peering, "--priority", "50").start()
    try:
        objs = _setup(kube, namespace, profile_ns, gpu_nodes, 3)
        objs.log = lambda: a.tail(30) + "\n---- b ----\n" + b.tail(30)
        for i in range(3):
            objs.wait_condition(f"m{i}", "Ready", "True", timeout=120)
        assert all(g == (1, 1) for g in _generations(objs, 3).values())
        # The active replica dies; the standby takes over once its keep-alive lapses and keeps working.
        a.kill()
        objs.patch("m0", {"spec": {"gpus": {"slotsPerGPU": 6}}})
        objs.wait_generation("m0", 2, timeout=150)
        assert _generations(objs, 3)["m1"][0] == 1
    finally:
        a.kill()
        b.stop()


def test_a_restarted_replica_does_not_wait_for_its_own_dead_keep_alive(
    cluster, kube, namespace, profile_ns, gpu_nodes
):
    """Issue 20 weak spot: a container killed and restarted in the same pod waited 57 s behind its own
    dead entry in the peering object (a new identity each start, a random priority). With the pod's name
    as its identity (the chart's POD_NAME), it replaces its entry and works at once."""
    peering = f"vibe-{uuid.uuid4().hex[:6]}"
    env = {"KUBECONFIG": str(cluster.kubeconfig), "POD_NAME": f"vibe-operator-{uuid.uuid4().hex[:5]}"}
    a = OperatorProcess(cluster.kubeconfig, profile_ns, "--peering", peering, "--priority", "100", env=env)
    a.start()
    b = None
    try:
        objs = _setup(kube, namespace, profile_ns, gpu_nodes, 1)
        objs.log = a.tail
        objs.wait_condition("m0", "Ready", "True", timeout=120)
        a.kill()
        b = OperatorProcess(cluster.kubeconfig, profile_ns, "--peering", peering, "--priority", "50", env=env)
        b.start()
        started = time.monotonic()
        objs.log = b.tail
        objs.patch("m0", {"spec": {"gpus": {"slotsPerGPU": 6}}})
        objs.wait_generation("m0", 2, timeout=90)
        took = time.monotonic() - started
        print(f"restarted replica placed within {took:.1f} s of its start")
        assert took < 20, f"waited {took:.0f} s (a dead keep-alive lapses after 20-60 s)"
    finally:
        a.kill()
        if b is not None:
            b.stop()


def test_only_the_active_replica_exports_a_deployments_series(
    cluster, kube, namespace, profile_ns, gpu_nodes
):
    """A replica paused by a higher-priority peer drops its per-deployment series (issue 11: a stale
    standby's Ready=1 hid VibePlacementNotReady, so the rules took the most favourable value)."""
    peering = f"vibe-{uuid.uuid4().hex[:6]}"
    labels = {f'namespace="{namespace}"', 'name="m0"'}

    def series(op: OperatorProcess, name: str) -> list[str]:
        return [
            line
            for line in op.metrics().splitlines()
            if line.startswith(name + "{") and labels <= set(line.split("}")[0].split("{")[1].split(","))
        ]

    low = OperatorProcess(cluster.kubeconfig, profile_ns, "--peering", peering, "--priority", "50").start()
    high = OperatorProcess(cluster.kubeconfig, profile_ns, "--peering", peering, "--priority", "100")
    try:
        objs = _setup(kube, namespace, profile_ns, gpu_nodes, 1)
        objs.log = low.tail
        objs.wait_condition("m0", "Ready", "True", timeout=120)
        wait_for(lambda: series(low, "vibe_deployment_ready"), timeout=30, what=f"m0's series\n{low.tail()}")
        assert series(low, "vibe_deployment_ready")[0].endswith(" 1.0")
        # A higher-priority replica starts: the first pauses and its series go; the new one exports them.
        high.start()
        objs.log = lambda: low.tail(30) + "\n---- high ----\n" + high.tail(30)
        wait_for(
            lambda: series(high, "vibe_deployment_ready"),
            timeout=60,
            what=f"m0 on the active replica\n{high.tail()}",
        )
        wait_for(lambda: not series(low, "vibe_deployment_ready"), timeout=30,
                 what=f"the paused replica to drop m0's series\n{low.tail()}")  # fmt: skip
        assert not series(low, "vibe_placement_imbalance_ratio")
        assert series(high, "vibe_deployment_ready")[0].endswith(" 1.0")
    finally:
        high.stop()
        low.stop()
