"""Simulated agents against the real API server: GPUProfiles stored, heartbeats, scheduled drift, Events.

Uses the session's local control plane (tests/cluster_plugin.py) and the repository's CRDs (crds/), so the API
server's own schema validation and pruning judge every object the agent writes.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fakes import runner_threads, sim_agents

from vibe import api
from vibe.agent.node import AgentConfig, NodeAgent
from vibe.agent.profile import drifted
from vibe.agent.publish import KubePublisher
from vibe.agent.runner import Runner, RunnerConfig
from vibe.agent.simulate import parse_fleet
from vibe.cluster.waiting import wait_for
from vibe.crds.apply import apply_crds

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
G, V, PLURAL = api.GROUP, api.VERSION, api.GPUPROFILE_PLURAL


@pytest.fixture(scope="module")
def crds(kube: Any) -> None:
    """The GPUProfile and MoEDeployment CRDs from crds/ (created or updated), served."""
    apply_crds(kube)


def get(kube: Any, ns: str, name: str) -> dict[str, Any]:
    from kubernetes import client

    return client.CustomObjectsApi(kube).get_namespaced_custom_object(G, V, ns, PLURAL, name)


def events(kube: Any, ns: str) -> list[Any]:
    from kubernetes import client

    return client.CoreV1Api(kube).list_namespaced_event(ns).items


def sim_runner(
    kube: Any, ns: str, fleet: dict[str, Any], heartbeat: int = 2
) -> tuple[Runner, list[NodeAgent]]:
    agents = sim_agents(parse_fleet(fleet), AgentConfig(namespace=ns, heartbeat_seconds=heartbeat))
    pub = KubePublisher(kube, qps=50, burst=100)
    runner = Runner(
        agents, pub, RunnerConfig(poll_seconds=0.5, heartbeat_seconds=heartbeat, shapes_seconds=0)
    )
    return runner, agents


@pytest.fixture
def running(kube: Any, crds: None, namespace: str) -> Iterator[Any]:
    """Start a runner in a thread; yields start(fleet) -> (runner, agents); stops it at the end."""
    with runner_threads() as go:

        def start(fleet: dict[str, Any], heartbeat: int = 2) -> tuple[Runner, list[NodeAgent]]:
            runner, agents = sim_runner(kube, namespace, fleet, heartbeat)
            return go(runner), agents

        yield start


FLEET = {
    "seed": 5,
    # whole curves slowed (the "uniform" model), so a GPU's relativeSpeed (the median over its curves'
    # token counts, many of them floor-bound) reads its speed: 0.62 for GPU 3
    "floorShare": 1,
    "nodes": [{"name": f"sim-{k}", "gpus": [1.0, 0.95, 0.9, 0.62]} for k in range(3)],
    "drift": [{"at": "4s", "node": "sim-1", "gpu": 2, "timeScale": 1.3, "reason": "HwSlowdown"}],
}


def test_profiles_are_stored_as_published(kube: Any, namespace: str, running: Any) -> None:
    _, agents = running(FLEET)
    for a in agents:
        obj = get(kube, namespace, a.node)
        if a.node != "sim-1":  # (sim-1 drifts after 4 s; its spec may be moving under us)
            # The API server kept every field the agent wrote: nothing was pruned or defaulted away.
            assert obj["spec"] == a.body()["spec"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "vibe-agent"
        managers = {(m["manager"], m["operation"]) for m in obj["metadata"]["managedFields"]}
        assert ("vibe-agent", "Apply") in managers
        assert obj["spec"]["source"] == "simulated" and obj["spec"]["agentVersion"] == "test"
        gpus = obj["spec"]["gpus"]
        assert [g["index"] for g in gpus] == [0, 1, 2, 3]
        assert gpus[3]["relativeSpeed"] == pytest.approx(0.62, abs=0.03)
        assert gpus[0]["memoryBytes"] == 80 * 2**30
        assert len(gpus[0]["curves"]) == 6 and gpus[0]["curves"][0]["tokens"][-1] == 8192
        assert lease(kube, namespace, a.node)["spec"]["leaseDurationSeconds"] == 2


def lease(kube: Any, ns: str, name: str) -> dict[str, Any]:
    from kubernetes import client

    rsp = client.CoordinationV1Api(kube).read_namespaced_lease(name, ns, _preload_content=False)
    return json.loads(rsp.data)


def test_the_lease_moves_and_the_profile_is_not_rewritten(kube: Any, namespace: str, running: Any) -> None:
    """Liveness is the Lease: the GPUProfile (~35 KB at 8 GPUs) is written only when its content changes,
    so its resourceVersion stays put over several heartbeat periods (each rewrite is a watch event for
    the operator)."""
    running({"nodes": [{"name": "hb", "gpus": 2}]})
    first = get(kube, namespace, "hb")
    renew0 = lease(kube, namespace, "hb")["spec"]["renewTime"]
    seen = []

    def renewed_three_times() -> bool:
        t = lease(kube, namespace, "hb")["spec"]["renewTime"]
        if not seen or t != seen[-1]:
            seen.append(t)
        return len(seen) >= 4

    wait_for(renewed_three_times, timeout=15, what="three Lease renewals")
    assert seen[-1] > renew0
    later = get(kube, namespace, "hb")
    assert later["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    assert "heartbeatTime" not in (later.get("status") or {})


def test_scheduled_drift_updates_the_profile_and_posts_events(
    kube: Any, namespace: str, running: Any
) -> None:
    running(FLEET)
    before = get(kube, namespace, "sim-1")
    assert before["spec"]["gpus"][2]["drift"]["state"] == "Stable"

    def drift_seen() -> dict | None:
        o = get(kube, namespace, "sim-1")
        return o if o["spec"]["gpus"][2]["drift"]["state"] == "Drifted" else None

    after = wait_for(drift_seen, timeout=20, what="GPU 2 of sim-1 Drifted")
    g_before, g_after = before["spec"]["gpus"][2], after["spec"]["gpus"][2]
    scale = g_after["drift"]["timeScale"]
    assert scale == pytest.approx(1.3, rel=0.07)  # the median of 3 noisy clock readings (2.3 % sd each)
    assert "HwSlowdown" in g_after["drift"]["reason"] and "SM clock" in g_after["drift"]["reason"]
    # a clock held down: the compute region x scale, the floor by the clock share (profile.drifted)
    want = drifted(g_before["curves"][0]["seconds"], scale)
    assert g_after["curves"][0]["seconds"] == pytest.approx(want, rel=2e-3)
    assert g_after["relativeSpeed"] == pytest.approx(g_before["relativeSpeed"] / scale, rel=1e-3)
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    for other in ("sim-0", "sim-2"):  # nodes without drift: untouched
        assert get(kube, namespace, other)["metadata"]["generation"] == 1

    def drift_event() -> Any:
        return next((e for e in events(kube, namespace) if e.reason == "GPUDrifted"), None)

    ev = wait_for(drift_event, timeout=10, what="GPUDrifted Event")
    assert ev.type == "Warning" and ev.involved_object.kind == api.GPUPROFILE_KIND
    assert ev.involved_object.name == "sim-1" and ev.involved_object.uid == after["metadata"]["uid"]
    assert ev.reporting_component == "vibe-agent" and ev.source.component == "vibe-agent"
    bench = [e for e in events(kube, namespace) if e.reason == "Benchmarked"]
    assert len(bench) == 3 * 4


def test_restart_resumes_without_rewriting(kube: Any, namespace: str, crds: None) -> None:
    fleet = {"nodes": [{"name": "rs", "gpus": [1.0, 0.9]}], "drift": [{"at": 1, "gpu": 1, "timeScale": 1.5}]}
    runner, _ = sim_runner(kube, namespace, fleet)
    runner.start()
    th = threading.Thread(target=runner.run, daemon=True)
    th.start()
    try:
        wait_for(
            lambda: get(kube, namespace, "rs")["spec"]["gpus"][1]["drift"]["state"] == "Drifted",
            timeout=20,
            what="GPU 1 of rs Drifted",
        )
    finally:
        runner.stop.set()
        th.join(timeout=10)
        runner.close()
    first = get(kube, namespace, "rs")  # as the first process left it
    n_events = len(events(kube, namespace))

    runner2, _ = sim_runner(kube, namespace, fleet)  # a new process: same node, same GPUs
    runner2.start()
    runner2.run(duration=4)
    runner2.close()
    again = get(kube, namespace, "rs")
    assert again["metadata"]["generation"] == first["metadata"]["generation"]  # the spec was not rewritten
    assert again["metadata"]["uid"] == first["metadata"]["uid"]
    assert again["status"]["conditions"] == first["status"]["conditions"]  # not re-stamped by the restart
    new = [e.reason for e in events(kube, namespace)][n_events:]
    assert "Benchmarked" not in new and "GPUDrifted" not in new  # resumed, drift state included


def test_moedeployment_shapes_are_benchmarked(kube: Any, namespace: str, crds: None) -> None:
    from kubernetes import client

    dep = yaml.safe_load((ROOT / "examples" / "qwen3-235b.yaml").read_text())
    dep["metadata"] = {"name": "odd-shape", "namespace": namespace}
    dep["spec"]["model"].update({"hiddenSize": 5120, "expertIntermediateSize": 1536, "dtype": "fp8"})
    dep["spec"]["gpus"]["nodeSelector"] = {api.PREFIX + "none": "none"}
    client.CustomObjectsApi(kube).create_namespaced_custom_object(
        G, V, namespace, api.MOEDEPLOYMENT_PLURAL, dep
    )
    runner, _ = sim_runner(kube, namespace, {"nodes": [{"name": "sh", "gpus": 1}]})
    runner.cfg.shapes_seconds = 300
    runner.start()
    runner.close()
    curves = get(kube, namespace, "sh")["spec"]["gpus"][0]["curves"]
    keys = {(c["hiddenSize"], c["intermediateSize"], c["dtype"]) for c in curves}
    assert (5120, 1536, "fp8") in keys and (5120, 1536, "bf16") in keys


def test_the_cli_process_publishes_and_exports(
    kube: Any, namespace: str, crds: None, cluster: Any, tmp_path: Path
) -> None:
    """`vibe agent run --simulate` as a real process: profiles, a drift, and /metrics while it runs."""
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        yaml.safe_dump(
            {
                "nodes": [{"name": "cli-a", "gpus": [1.0, 0.9]}, {"name": "cli-b", "gpus": [0.95, 1.0]}],
                "drift": [
                    {"at": "3s", "node": "cli-b", "gpu": 0, "timeScale": 1.4, "reason": "HwThermalSlowdown"}
                ],
            }
        )
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "vibe.agent", "run", "--simulate", str(fleet), "-n", namespace]
    cmd += [
        "--kubeconfig",
        str(cluster.kubeconfig),
        "--metrics-port",
        str(port),
        "--metrics-addr",
        "127.0.0.1",
    ]
    cmd += ["--heartbeat-seconds", "2", "--duration", "30", "--no-follow-deployments"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:

        def drifted() -> bool:
            try:
                o = get(kube, namespace, "cli-b")
            except Exception:
                return False
            return o["spec"]["gpus"][0]["drift"]["state"] == "Drifted"

        try:
            wait_for(drifted, timeout=25, what="cli-b GPU 0 Drifted")
        except TimeoutError:
            proc.terminate()
            pytest.fail(f"no drift; the agent said:\n{proc.communicate(timeout=20)[0]}")
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        if proc.poll() is None:
            proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    from prometheus_client.parser import text_string_to_metric_families

    fams = {f.name: f for f in text_string_to_metric_families(text)}
    drift = [s for s in fams["vibe_gpu_drifted"].samples if s.value == 1]
    assert [(s.labels["node"], s.labels["gpu"]) for s in drift] == [("cli-b", "0")]
    assert {s.labels["node"] for s in fams["vibe_gpu_relative_speed"].samples} == {"cli-a", "cli-b"}
    assert "stopped after" in out
    assert json.dumps(get(kube, namespace, "cli-a")["spec"]).count("curves") == 2
