"""One reconcile against a fake API server: 409 conflicts re-read and retry, problems back off.

The fake keeps objects as plain dicts, as ``kube.Kube`` returns them, and answers a write with a stale
or missing ``resourceVersion`` by raising ``Conflict`` like the real API server's 409.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Mapping
from typing import Any

from operator_builders import deployment_body, profile_body

from vibe.operator.compute import Computer
from vibe.operator.gpus import profile_snapshot
from vibe.operator.kube import Conflict
from vibe.operator.reconciling import Shared, World, reconcile
from vibe.operator.settings import OperatorSettings
from vibe.placement.synthetic import skewed_loads

NS = "ns"


class FakeKube:
    """The calls ``reconcile`` makes, over dicts; ``race`` runs before the next ConfigMap write."""

    def __init__(self, deployment: Mapping[str, Any], nodes: Mapping[str, Mapping[str, str]]) -> None:
        body = copy.deepcopy(dict(deployment))
        body["metadata"].update(namespace=NS, uid="uid-1", generation=1)
        self.deployment = body
        self.nodes = {n: dict(labels) for n, labels in nodes.items()}
        self.config_maps: dict[str, dict[str, Any]] = {}
        self.rv = 0
        self.writes = 0
        self.status_patches: list[dict[str, Any]] = []
        self.race: Any = None

    async def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.deployment)

    async def patch_deployment_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        self.status_patches.append(copy.deepcopy(dict(patch)))
        status = self.deployment.setdefault("status", {})
        for k, v in patch.items():
            if v is None:
                status.pop(k, None)
            else:
                status[k] = copy.deepcopy(v)

    async def get_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.config_maps.get(name))

    async def write_config_map(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        if self.race is not None:
            race, self.race = self.race, None
            race(body)
        name = body["metadata"]["name"]
        have = self.config_maps.get(name)
        want_rv = body["metadata"].get("resourceVersion")
        if (have is None) != (want_rv is None) or (have and have["metadata"]["resourceVersion"] != want_rv):
            raise Conflict(f"ConfigMap {namespace}/{name} changed meanwhile")
        return self.store(body)

    def store(self, body: Mapping[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(dict(body))
        self.rv += 1
        self.writes += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.config_maps[obj["metadata"]["name"]] = obj
        return copy.deepcopy(obj)

    async def node_labels(self, selector: Mapping[str, str] | None = None) -> dict[str, dict[str, str]]:
        sel = selector or {}
        return {n: dict(v) for n, v in self.nodes.items() if all(v.get(k) == x for k, x in sel.items())}


def setup(**spec: Any) -> tuple[Shared, World, FakeKube, list[tuple[str, str]]]:
    nodes = {"n0": {"pool": "a"}, "n1": {"pool": "a"}}
    kube = FakeKube(deployment_body("m", count=8, slots=3, **spec), nodes)
    events: list[tuple[str, str]] = []
    settings = OperatorSettings(compute_processes=0, backoff_initial_s=5.0, backoff_max_s=15.0)
    shared = Shared(
        settings=settings,
        kube=kube,  # type: ignore[arg-type]
        computer=Computer(0),
        post_event=lambda body, type_, reason, message: events.append((type_, reason)),
    )
    world = World(profiles={n: profile_snapshot(profile_body(n, gpus=4)) for n in nodes}, pods={})
    return shared, world, kube, events


def generation(kube: FakeKube) -> int:
    return int(kube.config_maps["m-placement"]["metadata"]["annotations"]["vibe.dev/placement-generation"])


def conditions(kube: FakeKube) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in kube.deployment["status"]["conditions"]}


def test_a_conflicting_write_rereads_and_makes_no_duplicate_generation():
    shared, world, kube, events = setup()
    # A peer replica writes the same placement first: this replica's create gets a 409.
    kube.race = kube.store
    delay = asyncio.run(reconcile(shared, world, NS, "m"))
    assert kube.writes == 1 and generation(kube) == 1  # the re-read found it up to date: no second write
    assert events == []  # the peer that wrote it tells; this replica adds no second "Placed"
    assert (
        conditions(kube)["Ready"] == ("True", "Placed")
        and kube.deployment["status"]["placementGeneration"] == 1
    )
    assert delay is not None and delay > 0  # next look: when a profile would turn stale

    # Someone replaces it between this replica's read and its write: the write is refused, re-read, redone.
    kube.deployment["metadata"]["generation"] = 2
    kube.deployment["spec"]["gpus"]["slotsPerGPU"] = 4

    def edit(body: Mapping[str, Any]) -> None:
        cm = copy.deepcopy(kube.config_maps["m-placement"])
        cm["metadata"]["annotations"]["owner-note"] = "touched"
        kube.store(cm)

    kube.race = edit
    asyncio.run(reconcile(shared, world, NS, "m"))
    assert generation(kube) == 2 and kube.writes == 3
    cm = kube.config_maps["m-placement"]
    assert cm["metadata"]["annotations"]["owner-note"] == "touched"  # the other writer's change survives
    assert len(json.loads(cm["data"]["sglang-expert-location.json"])["physical_to_logical_map"][0]) == 32
    assert kube.deployment["status"]["placementGeneration"] == 2


def test_a_problem_backs_off_doubling_posts_one_event_and_recovers():
    shared, world, kube, events = setup(workload={"configMapRef": {"name": "loads"}})
    delays = [asyncio.run(reconcile(shared, world, NS, "m")) for _ in range(4)]
    assert delays == [5.0, 10.0, 15.0, 15.0]  # backoff_initial_s doubling, capped at backoff_max_s
    assert conditions(kube) == {
        "Ready": ("False", "ConfigMapNotFound"),
        "Degraded": ("True", "ConfigMapNotFound"),
    }
    assert events == [("Warning", "ConfigMapNotFound")]  # once, not per retry
    assert len(kube.status_patches) == 1 and "m-placement" not in kube.config_maps  # retries write nothing

    loads = json.dumps({"loads": skewed_loads(4, 16, mean_tokens=512, seed=1).tolist()})
    kube.config_maps["loads"] = {
        "metadata": {"name": "loads", "resourceVersion": "0"},
        "data": {"loads.json": loads},
    }
    delay = asyncio.run(reconcile(shared, world, NS, "m"))
    assert delay != 5.0 and (NS, "m") not in shared.failures
    assert conditions(kube)["Ready"] == ("True", "Placed") and conditions(kube)["Degraded"][0] == "False"
    assert events[-1] == ("Normal", "Placed")

    # The loads turn unreadable: Degraded, the placement stays, and the backoff starts over.
    kube.config_maps["loads"]["data"]["loads.json"] = "{not json"
    rv = kube.config_maps["m-placement"]["metadata"]["resourceVersion"]
    assert asyncio.run(reconcile(shared, world, NS, "m")) == 5.0
    assert conditions(kube)["Ready"] == ("True", "Placed") and conditions(kube)["Degraded"] == (
        "True",
        "InvalidLoads",
    )
    assert kube.config_maps["m-placement"]["metadata"]["resourceVersion"] == rv
    assert events[-1] == ("Warning", "InvalidLoads")
