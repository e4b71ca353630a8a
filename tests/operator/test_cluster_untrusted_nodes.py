"""A compromised or confused node against the operator on the local control plane (issue 20, round 2:
defects 2, 3, 5 and 8). The agents' writes are made here with the operator's test client: what the
operator does with a profile does not depend on who wrote it (the chart's node restriction already
limits an agent to its own node's objects; ``tests/chart/test_chart_node_restriction.py`` tests that
with real pod-bound tokens).

The module's operator runs with a profile TTL of 8 s, a GPU settle time of 10 s (30 s by default) and a
resync of 10 minutes, so what happens within seconds here was caused by a watch or a scheduled look, not
by the periodic resync.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
import uuid
from typing import Any

import pytest
from cluster_plugin import TEST_NODES_LABEL
from operator_builders import deployment_body, now_iso, profile_body
from operator_harness import Objects, put_fleet

from vibe import contract
from vibe.agent.profile import build_lease

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

TTL = 8
SETTLE = int(os.environ.get("VIBE_TEST_GPU_SETTLE", "10"))  # 30 (the default) to measure it as shipped


@pytest.fixture(scope="module")
def operator_args() -> tuple[str, ...]:
    return (
        "--compute-processes",
        "1",
        "--resync",
        "600",
        "--profile-ttl",
        str(TTL),
        "--gpu-settle",
        str(SETTLE),
    )


@pytest.fixture
def fleet(gpu_nodes: Any, objs: Objects) -> Any:
    """``fleet(nodes, gpus, **profile kwargs) -> (nodeSelector, node names)`` with GPUProfiles written."""
    return functools.partial(put_fleet, gpu_nodes, objs, "u")


def put_lease(kube: Any, namespace: str, node: str, renew: float) -> None:
    """The node's agent Lease with ``renewTime`` = ``renew`` (epoch seconds, the agent's clock)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    coord = client.CoordinationV1Api(kube)
    body = build_lease(node, namespace, renew, 2, None)
    try:
        coord.create_namespaced_lease(namespace, body)
    except ApiException as e:
        if e.status != 409:
            raise
        coord.patch_namespaced_lease(node, namespace, {"spec": body["spec"]})


def renew_leases(kube: Any, namespace: str, nodes: list[str], stop: threading.Event) -> None:
    """The nodes' agents alive: each Lease renewed every second until ``stop``."""
    while not stop.is_set():
        for n in nodes:
            put_lease(kube, namespace, n, time.time())
        stop.wait(1.0)


# --------------------------------------------------------------------------------------------------
# Defect 5: liveness by when the operator saw the heartbeat change, not by the agent's clock


def test_a_heartbeat_from_the_future_goes_stale_when_it_stops(objs: Objects, fleet: Any):
    """A profile heartbeat written an hour ahead (or in 2096) keeps nobody fresh once it stops changing;
    one written an hour behind is fresh while it keeps changing. The placement stays while stale."""
    selector, nodes = fleet(2, 8)
    objs.create(deployment_body("m", selector=selector, count=8))  # node 0's GPUs only
    objs.wait_condition("m", "Ready", "True")
    rv = objs.config_map("m-placement")["metadata"]["resourceVersion"]
    t0 = time.monotonic()
    objs.put_profile(profile_body(nodes[0], gpus=8, heartbeat="2096-01-01T00:00:00Z"))
    c = objs.wait_condition("m", "Degraded", "True", "StaleGPUProfile", timeout=TTL + 30)
    assert time.monotonic() - t0 >= TTL - 1  # stale one TTL after its last change, not at once
    assert nodes[0] in c["message"] and "keeping placement generation 1" in c["message"]
    assert objs.config_map("m-placement")["metadata"]["resourceVersion"] == rv
    # The agent is back with a clock an hour behind: each write is a change, so it is alive.
    for _ in range(3):
        objs.put_profile(profile_body(nodes[0], gpus=8, heartbeat=now_iso(-3600)))
        time.sleep(0.5)
    objs.wait_condition("m", "Degraded", "False", timeout=30)


def test_a_lease_renewed_with_a_lagging_clock_is_fresh_and_one_ahead_goes_stale(
    objs: Objects, fleet: Any, kube: Any
):
    """Leases (what the agents renew): node 0's clock lags 10 minutes but it renews every second for
    2 TTLs: fresh throughout. Node 1 writes a renewTime in 2096 once and stops: stale after the TTL."""
    selector, nodes = fleet(2, 4, heartbeat=None)
    for n in nodes:
        put_lease(kube, objs.profile_ns, n, time.time())
    objs.create(deployment_body("m", selector=selector))
    objs.wait_condition("m", "Ready", "True")
    put_lease(kube, objs.profile_ns, nodes[1], 3_976_214_400.5)  # 2096-01-01
    t0 = time.monotonic()
    stale_seen = None
    while time.monotonic() - t0 < 2 * TTL + 10:
        put_lease(kube, objs.profile_ns, nodes[0], time.time() - 600)
        c = objs.condition("m", "Degraded")
        if c and c["status"] == "True" and c["reason"] == "StaleGPUProfile":
            stale_seen = stale_seen or (time.monotonic() - t0, c["message"])
            assert nodes[0] not in c["message"], c["message"]
        time.sleep(1.0)
    assert stale_seen is not None, "node 1 never turned stale"
    assert stale_seen[0] >= TTL - 1 and nodes[1] in stale_seen[1]


def generation(objs: Objects, name: str) -> int:
    cm = objs.config_map(f"{name}-placement")
    return int(cm["metadata"]["annotations"][contract.ANNOTATION_PLACEMENT_GENERATION]) if cm else 0


# --------------------------------------------------------------------------------------------------
# Defect 2: a node's GPUs are at most its Node's capacity


def test_a_profile_with_more_gpus_than_its_node_is_not_believed(objs: Objects, gpu_nodes: Any):
    """Node 0 (capacity 4) publishes 64 GPUs; before, the operator placed 8 ranks on it (4 of them on
    GPUs that do not exist). Now its profile is not used: the deployment runs on nodes 1 and 2, says so,
    and a Warning Event names node 0."""
    prefix = f"u-{uuid.uuid4().hex[:6]}"
    nodes = gpu_nodes(3, prefix=prefix, gpus_per_node=4)
    selector = {TEST_NODES_LABEL: prefix}
    for i, node in enumerate(nodes):
        objs.put_profile(profile_body(node, gpus=64 if i == 0 else 4))
    objs.create(deployment_body("m", selector=selector, count=8))
    ready = objs.wait_condition("m", "Ready", "True")
    assert objs.get("m")["status"]["nodes"] == sorted(nodes[1:])
    assert f"{nodes[0]} (64 GPUs, capacity 4)" in ready["message"]
    ev = objs.wait_event("m", "GPUProfileDistrusted")
    assert ev["type"] == "Warning" and nodes[0] in ev["message"]
    assert generation(objs, "m") == 1


# --------------------------------------------------------------------------------------------------
# Defect 3: a flapping GPU moves nothing; a GPU gone is handled after the settle time


def test_a_flapping_gpu_moves_nothing_and_a_gpu_gone_is_handled_after_the_settle_time(
    objs: Objects, fleet: Any, kube: Any, request: Any
):
    """GPU 1 of node 0 leaves and comes back every 2 s for 3 settle times, with cooldownSeconds 300:
    before, a new placement generation per change (1 -> 31 in 60 s). Now none. Then it stays gone: a new
    generation (a GPU in service is gone) one settle time later, measured."""
    selector, nodes = fleet(2, 4, heartbeat=None)
    stop = threading.Event()
    beats = threading.Thread(target=renew_leases, args=(kube, objs.profile_ns, nodes, stop), daemon=True)
    beats.start()  # the agents stay alive throughout (the TTL is shorter than the settle time here)
    request.addfinalizer(stop.set)
    objs.create(deployment_body("m", selector=selector, count=6, drift={"cooldownSeconds": 300}))
    objs.wait_condition("m", "Ready", "True")
    full = profile_body(nodes[0], gpus=4)
    short = json.loads(json.dumps(full))
    del short["spec"]["gpus"][1]
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < 3 * SETTLE:
        objs.put_profile(short if i % 2 == 0 else full)
        i += 1
        time.sleep(2.0)
    objs.put_profile(full)
    time.sleep(3)
    assert objs.condition("m", "Degraded")["status"] == "False"
    assert generation(objs, "m") == 1, objs.log()
    objs.put_profile(short)
    gone = time.monotonic()
    cm = objs.wait_generation("m", 2, timeout=SETTLE + 30)
    took = time.monotonic() - gone
    print(f"GPU gone -> placement generation 2 in {took:.1f} s (settle time {SETTLE} s)")
    assert SETTLE - 1 <= took <= SETTLE + 10
    doc = json.loads(cm["data"]["placement.json"])
    assert f"{nodes[0]}/1" not in [g["id"] for g in doc["gpus"]]


# --------------------------------------------------------------------------------------------------
# Defect 8: a UUID conflict does not punish the honest node


def test_a_node_listing_anothers_gpu_uuids_loses_its_own_not_the_others(objs: Objects, fleet: Any):
    """Node 2's agent lists node 0's GPU UUIDs; before, node 0's GPUs were dropped (claimed twice) and
    the 8-GPU deployment on nodes 0 and 1 went InsufficientGPUs. Now node 2 is not believed."""
    selector, nodes = fleet(3, 4)
    objs.create(deployment_body("m", selector=selector, count=8))
    objs.wait_condition("m", "Ready", "True")
    assert objs.get("m")["status"]["nodes"] == sorted(nodes[:2])
    liar = profile_body(nodes[2], gpus=4)
    for i, g in enumerate(liar["spec"]["gpus"]):
        g["uuid"] = f"GPU-{nodes[0]}-{i}"
    objs.put_profile(liar)
    ev = objs.wait_event("m", "GPUProfileDistrusted")
    assert nodes[2] in ev["message"] and f"of {nodes[0]}" in ev["message"]
    ready = objs.condition("m", "Ready")
    assert ready["status"] == "True" and f"GPUProfile(s) of {nodes[2]}" in ready["message"]
    assert generation(objs, "m") == 1


# --------------------------------------------------------------------------------------------------
# Defect 4: unreadable loads are the loads' condition


@pytest.mark.parametrize(
    "text",
    ["[" * 100_000 + "]" * 100_000, '{"loads": [[' + "9" * 5000 + "]]}"],
    ids=["200kB-deep", "5000-digit-int"],
)
def test_unreadable_loads_are_a_condition_for_new_and_placed_deployments(
    objs: Objects, fleet: Any, text: str
):
    """Before: a new MoEDeployment got no status for 30+ minutes, a placed one kept "loads readable",
    and the log a 33-line traceback a minute."""
    selector, _ = fleet(2, 4)
    objs.put_loads("bad", text)
    objs.create(deployment_body("new", selector=selector, workload={"configMapRef": {"name": "bad"}}))
    c = objs.wait_condition("new", "Ready", "False", "InvalidLoads")
    assert "ConfigMap" in c["message"] and "bad" in c["message"]
    objs.put_loads("good", json.dumps({"loads": [[1.0] * 16] * 4}))
    objs.create(deployment_body("placed", selector=selector, workload={"configMapRef": {"name": "good"}}))
    objs.wait_condition("placed", "Ready", "True")
    objs.put_loads("good", text)
    c = objs.wait_condition("placed", "Degraded", "True", "InvalidLoads")
    assert "keeping placement generation 1" in c["message"]
    assert "Traceback" not in objs.log()
