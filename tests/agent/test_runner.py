"""The runner: publish on change only, heartbeats spread over the period, Events after the profile, shapes."""

from __future__ import annotations

import itertools
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from vibe import api
from vibe.agent.node import AgentConfig, NodeAgent
from vibe.agent.publish import DirPublisher, RateLimiter
from vibe.agent.runner import Runner, RunnerConfig
from vibe.agent.simulate import SimProfiler, SimTelemetry, parse_fleet
from vibe.cluster.waiting import wait_for


class RecordingPublisher:
    """Records every call; ``fail`` makes apply raise (an API server restart)."""

    def __init__(
        self, existing: dict[str, dict] | None = None, deployments: list[dict] | None = None
    ) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, str, float]] = []
        self.objects: dict[str, dict] = dict(existing or {})
        self.deployments = deployments or []
        self.fail = False
        self.statuses: dict[str, list] = {}
        self.nodes: dict[str, Any] = {}

    def _log(self, kind: str, node: str) -> None:
        with self.lock:
            self.calls.append((kind, node, time.monotonic()))

    def read(self, namespace: str, node: str) -> dict | None:
        self._log("read", node)
        return self.objects.get(node)

    def apply(self, body: dict) -> dict:
        if self.fail:
            raise ConnectionError("API server restarting")
        self._log("apply", body["metadata"]["name"])
        self.objects[body["metadata"]["name"]] = json.loads(json.dumps(body))
        return body

    def heartbeat(self, namespace: str, node: str, when: float, every_s: int) -> None:
        self._log("heartbeat", node)

    def exists(self, namespace: str, node: str) -> bool:
        self._log("exists", node)
        return node in self.objects

    def status(self, namespace: str, node: str, conditions: list) -> None:
        if self.fail:
            raise ConnectionError("API server restarting")
        self._log("status", node)
        self.statuses[node] = conditions

    def node(self, node: str) -> Any:
        return self.nodes.get(node)

    def event(self, namespace: str, node: str, ev: Any) -> None:
        self._log(f"event:{ev.reason}", node)

    def moedeployments(self) -> list[dict]:
        return self.deployments

    def count(self, kind: str, node: str | None = None) -> int:
        return sum(1 for k, n, _ in self.calls if k == kind and (node is None or n == node))


def fleet_agents(
    nodes: int = 3, gpus: int = 2, drift: list | None = None
) -> tuple[list[NodeAgent], list[float]]:
    now = [0.0]
    fleet = parse_fleet(
        {"nodes": [{"name": f"n{k}", "gpus": gpus} for k in range(nodes)], "drift": drift or [], "seed": 1}
    )
    clock = lambda: now[0]  # noqa: E731
    cfg = AgentConfig(namespace="ns")
    agents = [
        NodeAgent(name, SimTelemetry(g, clock), SimProfiler(g, clock), cfg, clock=clock)
        for name, g in fleet.nodes.items()
    ]
    return agents, now


def test_publishes_once_then_only_on_change() -> None:
    agents, now = fleet_agents(drift=[{"at": 10, "node": "n1", "gpu": 0, "timeScale": 1.5}])
    pub = RecordingPublisher()
    r = Runner(agents, pub, RunnerConfig(heartbeat_seconds=0, shapes_seconds=0))
    r.start()
    assert pub.count("read") == 3 and pub.count("apply") == 3
    assert pub.count("heartbeat") == 3  # the first heartbeat goes with the first apply
    assert pub.count("event:Benchmarked") == 3 * 2
    for t in range(1, 29):
        now[0] = t
        r.tick()
    r.flush()
    assert pub.count("apply", "n0") == 1 and pub.count("apply", "n2") == 1
    assert pub.count("apply", "n1") == 2  # the drift, once
    for t in range(29, 60):  # the 30th busy sample calibrates every GPU's serving clock: one apply each
        now[0] = t
        r.tick()
    r.flush()
    assert pub.count("apply", "n0") == 2 and pub.count("apply", "n2") == 2 and pub.count("apply", "n1") == 3
    assert '"calibrated":true' in pub.objects["n0"]["metadata"]["annotations"][api.ANNOTATION_BASELINE]
    assert pub.count("event:GPUDrifted", "n1") == 1
    assert pub.objects["n1"]["spec"]["gpus"][0]["drift"]["state"] == "Drifted"
    r.close()


def test_restart_reads_back_and_does_not_churn() -> None:
    agents, _ = fleet_agents()
    pub = RecordingPublisher()
    r = Runner(agents, pub, RunnerConfig(heartbeat_seconds=0, shapes_seconds=0))
    r.start()
    r.close()
    before = json.dumps(pub.objects, sort_keys=True)
    agents2, _ = fleet_agents()
    pub2 = RecordingPublisher(existing=pub.objects)
    r2 = Runner(agents2, pub2, RunnerConfig(heartbeat_seconds=0, shapes_seconds=0))
    r2.start()
    r2.close()
    assert pub2.count("event:Benchmarked") == 0  # resumed, nothing measured again
    assert json.dumps(pub2.objects, sort_keys=True) == before  # the same spec re-applied (a server no-op)


def test_heartbeats_are_spread_over_the_period() -> None:
    agents, _ = fleet_agents(nodes=4)
    pub = RecordingPublisher()
    r = Runner(agents, pub, RunnerConfig(heartbeat_seconds=1, shapes_seconds=0))
    r.start()
    t0 = time.monotonic()

    def eight_beats() -> list[tuple[str, float]] | None:
        with pub.lock:
            beats = [(n, t - t0) for k, n, t in pub.calls if k == "heartbeat" and t >= t0]
        return beats[:8] if len(beats) >= 8 else None

    try:
        beats = wait_for(eight_beats, timeout=15, interval=0.05, what="8 heartbeats from the thread")
    finally:
        r.close()
    # Round robin: two periods of 4 nodes each beat every node exactly twice ...
    assert sorted(n for n, _ in beats) == ["n0", "n0", "n1", "n1", "n2", "n2", "n3", "n3"]
    # ... one every ~0.25 s, not 4 at once then a 1 s pause (a late thread may bunch two, not the rest).
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(beats)]
    assert max(gaps) < 0.5 and 0.15 < statistics.median(gaps) < 0.35, gaps


def test_events_wait_for_the_profile_and_failures_retry() -> None:
    agents, now = fleet_agents(nodes=1)
    pub = RecordingPublisher()
    pub.fail = True
    r = Runner(agents, pub, RunnerConfig(heartbeat_seconds=0, shapes_seconds=0, retry_max_s=0))
    r.start()
    r.flush()
    assert pub.count("apply") == 0 and r.errors >= 1
    assert pub.count("event:Benchmarked") == 0  # not posted about an object that does not exist
    pub.fail = False
    now[0] = 1
    r.tick()
    r.flush()
    assert pub.count("apply") == 1
    r.close()


def test_follows_moedeployment_shapes() -> None:
    agents, _ = fleet_agents(nodes=2)
    dep = {
        "metadata": {"name": "glm"},
        "spec": {"model": {"hiddenSize": 5120, "expertIntermediateSize": 1536, "dtype": "fp8"}},
    }
    pub = RecordingPublisher(deployments=[dep])
    r = Runner(agents, pub, RunnerConfig(heartbeat_seconds=0, shapes_seconds=300))
    r.start()
    r.close()
    curves = pub.objects["n0"]["spec"]["gpus"][0]["curves"]
    keys = {(c["hiddenSize"], c["intermediateSize"], c["dtype"]) for c in curves}
    assert {(5120, 1536, "fp8"), (5120, 1536, "bf16"), (7168, 2048, "bf16")} <= keys
    assert next(c for c in curves if c["hiddenSize"] == 5120)["name"] == "glm"


def test_dir_publisher_writes_objects_and_events(tmp_path: Path) -> None:
    agents, now = fleet_agents(nodes=2, drift=[{"at": 3, "node": "n0", "gpu": 1, "timeScale": 1.4}])
    r = Runner(agents, DirPublisher(tmp_path), RunnerConfig(heartbeat_seconds=0, shapes_seconds=0))
    r.start()
    for t in range(1, 15):
        now[0] = t
        r.tick()
    r.close()
    obj = json.loads((tmp_path / "ns" / "n0.json").read_text())
    assert obj["kind"] == api.GPUPROFILE_KIND and obj["status"]["conditions"][0]["type"] == "GPUsVisible"
    assert (tmp_path / "leases" / "ns" / "n0.json").exists()
    assert obj["spec"]["gpus"][1]["drift"]["state"] == "Drifted"
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["reason"] for e in events if e["node"] == "n0"].count("GPUDrifted") == 1


def test_runner_with_no_publisher_still_steps() -> None:
    agents, _ = fleet_agents(nodes=1)
    r = Runner(agents, None, RunnerConfig(poll_seconds=0.01))
    r.start()
    r.run(duration=0.1)
    r.close()
    assert r.steps >= 2 and not agents[0].events


def test_rate_limiter() -> None:
    lim = RateLimiter(qps=50, burst=5)
    t0 = time.monotonic()
    for _ in range(15):
        lim.acquire()
    assert time.monotonic() - t0 == pytest.approx(10 / 50, abs=0.08)


def test_an_unchanged_profile_is_not_sent_again() -> None:
    agents, now = fleet_agents(nodes=1)
    pub = RecordingPublisher()
    r = Runner(agents, pub, RunnerConfig(heartbeat_seconds=0, shapes_seconds=0))
    r.start()
    r.flush()
    assert pub.count("apply") == 1
    agents[0].dirty = True  # something asked for a publish, but the content is the same
    for t in range(1, 5):
        now[0] = t
        r.tick()
    r.flush()
    assert pub.count("apply") == 1
    r.close()


def test_failing_profile_writes_back_off_and_never_stop_the_lease() -> None:
    """A profile the API server keeps refusing (422): writes back off (1, 2, 4 s ...), the Lease goes on."""
    agents, _ = fleet_agents(nodes=1)
    pub = RecordingPublisher()
    pub.fail = True
    r = Runner(agents, pub, RunnerConfig(heartbeat_seconds=1, shapes_seconds=0, poll_seconds=0.05))
    r.start()
    th = threading.Thread(target=r.run, kwargs={"duration": 3.5}, daemon=True)
    th.start()
    th.join(10)
    beats = pub.count("heartbeat")
    r.close()
    assert beats >= 3  # one a second, with no profile at all
    assert r.errors <= 3  # tries at ~0, 1, 3 s: not one per 50 ms tick (70)


def test_a_deleted_profile_is_recreated() -> None:
    """A 404 (the CRD was re-created, or someone deleted the object) is noticed and the profile applied."""
    agents, _ = fleet_agents(nodes=1)
    pub = RecordingPublisher()
    # Few ticks (no serving-clock calibration): only the 404 can cause a second apply.
    r = Runner(
        agents, pub, RunnerConfig(heartbeat_seconds=1, shapes_seconds=0, poll_seconds=0.5, exists_every=1)
    )
    r.start()
    assert pub.count("apply") == 1
    del pub.objects["n0"]
    th = threading.Thread(target=r.run, kwargs={"duration": 3.0}, daemon=True)
    th.start()
    th.join(10)
    r.close()
    assert pub.count("exists") >= 1 and pub.count("apply") == 2
    assert "n0" in pub.objects


def dep(name: str, h: int, i: int, selector: dict | None = None, nodes: list | None = None) -> dict:
    return {
        "metadata": {"name": name, "namespace": "ml"},
        "spec": {
            "model": {"hiddenSize": h, "expertIntermediateSize": i, "dtype": "bf16"},
            "gpus": {"nodeSelector": selector or {"pool": "a"}},
        },
        "status": {"nodes": nodes or []},
    }


def test_shapes_only_of_deployments_selecting_the_node_capped_then_pruned() -> None:
    from vibe.agent.profile import NodeFacts
    from vibe.agent.runner import MAX_CURVES

    agents, now = fleet_agents(nodes=2, gpus=1)
    flood = [dep(f"d{k}", 1024 + 64 * k, 512, {"pool": "a"}) for k in range(16)]  # 16 x 2 dtypes = 32 new
    other = [dep("elsewhere", 3000, 1000, {"pool": "c"}), dep("placed", 3072, 1024, {"pool": "b"}, ["n1"])]
    pub = RecordingPublisher(deployments=flood + other)
    pub.nodes = {
        "n0": NodeFacts("n0", "uid-0", {"pool": "a"}, None),
        "n1": NodeFacts("n1", "uid-1", {"pool": "b"}, None),
    }
    r = Runner(agents, pub, RunnerConfig(heartbeat_seconds=0, shapes_seconds=1))
    r.start()
    r.flush()
    n0 = agents[0]
    assert len(n0.shapes) == MAX_CURVES and len(pub.objects["n0"]["spec"]["gpus"][0]["curves"]) == MAX_CURVES
    capped = {c["type"]: c for c in pub.statuses["n0"]}["ShapesCapped"]
    assert (
        capped["status"] == "True"
        and capped["reason"] == "TooManyShapes"
        and "6 expert shape(s)" in capped["message"]
    )
    assert pub.count("event:ShapesCapped", "n0") == 1
    # n1 benchmarks the defaults and the one deployment placed on it, not the pool-a flood nor "elsewhere".
    keys1 = {(c["hiddenSize"], c["intermediateSize"]) for c in pub.objects["n1"]["spec"]["gpus"][0]["curves"]}
    assert (3072, 1024) in keys1 and (3000, 1000) not in keys1 and (1024, 512) not in keys1
    assert {c["type"]: c for c in pub.statuses["n1"]}["ShapesCapped"]["status"] == "False"
    assert pub.objects["n0"]["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Node", "name": "n0", "uid": "uid-0"}
    ]
    # The flood goes away: the next refresh prunes the curves and clears the condition, no restart.
    pub.deployments = other
    time.sleep(1.05)
    now[0] = 1
    r.refresh_shapes()
    r.tick()
    r.flush()
    r.close()
    assert len(pub.objects["n0"]["spec"]["gpus"][0]["curves"]) == 6  # the default shapes
    assert {c["type"]: c for c in pub.statuses["n0"]}["ShapesCapped"]["status"] == "False"
