"""One reconcile at a time, in this process, against the real API server: a 409 from a racing writer is
re-read and retried without a duplicate generation, and a problem backs off, doubling, and recovers.

``reconcile`` runs with the operator's own ``Kube`` (real calls). The only thing added is ``race``: a
real write by another client made between this reconcile's read and its write, so the API server
answers that write with a real 409. The watch caches (``World``) are built from the GPUProfiles the agent
would write, as the operator's indices hold them.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from cluster_plugin import TEST_NODES_LABEL
from operator_builders import deployment_body, profile_body
from operator_harness import G, V

from vibe import api, contract
from vibe.crds.apply import apply_crds
from vibe.operator.compute import Computer
from vibe.operator.gpus import profile_snapshot
from vibe.operator.kube import Kube
from vibe.operator.reconciling import Shared, World, reconcile
from vibe.operator.settings import OperatorSettings
from vibe.placement.synthetic import skewed_loads

pytestmark = pytest.mark.cluster


class RacingKube(Kube):
    """The operator's ``Kube``; ``race`` (if set) runs once just before the next ConfigMap write."""

    race: Callable[[Mapping[str, Any]], None] | None = None

    async def write_config_map(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        if self.race is not None:
            race, self.race = self.race, None
            await asyncio.to_thread(race, body)
        return await super().write_config_map(namespace, body)


class Setup:
    def __init__(self, kube: Any, namespace: str, gpu_nodes: Any, **spec: Any) -> None:
        from kubernetes import client

        apply_crds(kube)
        prefix = f"rec-{uuid.uuid4().hex[:6]}"
        nodes = gpu_nodes(2, gpus_per_node=4, prefix=prefix)
        selector = {TEST_NODES_LABEL: prefix}
        self.ns = namespace
        self.core = client.CoreV1Api(kube)
        self.custom = client.CustomObjectsApi(kube)
        self.custom.create_namespaced_custom_object(
            G,
            V,
            namespace,
            api.MOEDEPLOYMENT_PLURAL,
            deployment_body("m", selector=selector, count=8, slots=3, **spec),
        )
        self.kube = RacingKube(kube)
        self.events: list[tuple[str, str]] = []
        self.shared = Shared(
            settings=OperatorSettings(compute_processes=0, backoff_initial_s=5.0, backoff_max_s=15.0),
            kube=self.kube,
            computer=Computer(0),
            post_event=lambda body, type_, reason, message: self.events.append((type_, reason)),
        )
        self.world = World(profiles={n: profile_snapshot(profile_body(n, gpus=4)) for n in nodes})

    def reconcile(self) -> float | None:
        return asyncio.run(reconcile(self.shared, self.world, self.ns, "m"))

    def deployment(self) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(G, V, self.ns, api.MOEDEPLOYMENT_PLURAL, "m")

    def conditions(self) -> dict[str, tuple[str, str]]:
        return {c["type"]: (c["status"], c["reason"]) for c in self.deployment()["status"]["conditions"]}

    def placement(self) -> Any:
        return self.core.read_namespaced_config_map("m-placement", self.ns)

    def generation(self) -> int:
        return int(self.placement().metadata.annotations[contract.ANNOTATION_PLACEMENT_GENERATION])

    def has_placement(self) -> bool:
        return any(
            c.metadata.name == "m-placement" for c in self.core.list_namespaced_config_map(self.ns).items
        )


def test_a_conflicting_write_rereads_and_makes_no_duplicate_generation(kube, namespace, gpu_nodes):
    s = Setup(kube, namespace, gpu_nodes)

    # A peer replica writes the same placement first: this replica's create gets a real 409.
    def peer_writes_it(body: Mapping[str, Any]) -> None:
        s.core.create_namespaced_config_map(s.ns, dict(body))

    s.kube.race = peer_writes_it
    delay = s.reconcile()
    peer_rv = s.placement().metadata.resource_version
    assert s.kube.race is None  # the race ran
    assert s.generation() == 1  # the re-read found it up to date: no second generation...
    assert s.placement().metadata.resource_version == peer_rv  # ...and no second write
    assert s.events == []  # the peer that wrote it tells; this replica adds no second "Placed"
    assert s.conditions()["Ready"] == ("True", "Placed")
    assert s.deployment()["status"]["placementGeneration"] == 1
    assert delay is not None and delay > 0  # next look: when a profile would turn stale

    # Someone edits it between this replica's read and its write: the write is refused, re-read, redone.
    s.custom.patch_namespaced_custom_object(
        G, V, s.ns, api.MOEDEPLOYMENT_PLURAL, "m", {"spec": {"gpus": {"slotsPerGPU": 4}}}
    )

    def someone_edits_it(body: Mapping[str, Any]) -> None:
        s.core.patch_namespaced_config_map(
            "m-placement", s.ns, {"metadata": {"annotations": {"owner-note": "touched"}}}
        )

    s.kube.race = someone_edits_it
    s.reconcile()
    assert s.kube.race is None
    cm = s.placement()
    assert s.generation() == 2
    assert cm.metadata.annotations["owner-note"] == "touched"  # the other writer's change survives
    assert len(json.loads(cm.data["sglang-expert-location.json"])["physical_to_logical_map"][0]) == 32
    assert s.deployment()["status"]["placementGeneration"] == 2
    assert s.events == [("Normal", "Placed")]


def test_a_problem_backs_off_doubling_posts_one_event_and_recovers(kube, namespace, gpu_nodes):
    s = Setup(kube, namespace, gpu_nodes, workload={"configMapRef": {"name": "loads"}})
    first = s.reconcile()
    rv = s.deployment()["metadata"]["resourceVersion"]
    delays = [first] + [s.reconcile() for _ in range(3)]
    assert delays == [5.0, 10.0, 15.0, 15.0]  # backoff_initial_s doubling, capped at backoff_max_s
    assert s.conditions() == {
        "Ready": ("False", "ConfigMapNotFound"),
        "Degraded": ("True", "ConfigMapNotFound"),
    }
    assert s.events == [("Warning", "ConfigMapNotFound")]  # once, not per retry
    assert s.deployment()["metadata"]["resourceVersion"] == rv  # the retries patched no status...
    assert not s.has_placement()  # ...and wrote no ConfigMap

    loads = json.dumps({"loads": skewed_loads(4, 16, mean_tokens=512, seed=1).tolist()})
    s.core.create_namespaced_config_map(s.ns, {"metadata": {"name": "loads"}, "data": {"loads.json": loads}})
    delay = s.reconcile()
    assert delay != 5.0 and (s.ns, "m") not in s.shared.failures
    assert s.conditions()["Ready"] == ("True", "Placed") and s.conditions()["Degraded"][0] == "False"
    assert s.events[-1] == ("Normal", "Placed")

    # The loads turn unreadable: Degraded, the placement stays, and the backoff starts over.
    s.core.patch_namespaced_config_map("loads", s.ns, {"data": {"loads.json": "{not json"}})
    placement_rv = s.placement().metadata.resource_version
    assert s.reconcile() == 5.0
    assert s.conditions()["Ready"] == ("True", "Placed")
    assert s.conditions()["Degraded"] == ("True", "InvalidLoads")
    assert s.placement().metadata.resource_version == placement_rv
    assert s.events[-1] == ("Warning", "InvalidLoads")


def _meta(cm: Any) -> dict[str, Any]:
    return json.loads(cm.data[contract.KEY_META])


def test_a_generation_edited_past_the_bound_is_not_trusted(kube, namespace, gpu_nodes):
    """Issue 20, defect 9: ``placement-meta.json`` edited to generation 2^63 with its hash intact was
    trusted; the operator wrote 2^63 + 1 and every status patch failed (422, int64) for 15+ minutes. Now
    the edited generation is not trusted: the same placement is written back with status's generation."""
    s = Setup(kube, namespace, gpu_nodes)
    s.reconcile()
    cm = s.placement()
    meta = {**_meta(cm), "placementGeneration": 2**63}
    s.core.patch_namespaced_config_map(
        "m-placement",
        s.ns,
        {
            "metadata": {"annotations": {contract.ANNOTATION_PLACEMENT_GENERATION: str(2**63)}},
            "data": {contract.KEY_META: json.dumps(meta, sort_keys=True)},
        },
    )
    s.events.clear()
    s.reconcile()
    assert _meta(s.placement())["placementGeneration"] == 1
    assert s.deployment()["status"]["placementGeneration"] == 1
    assert s.conditions()["Ready"] == ("True", "Placed")
    assert ("Warning", "PlacementRestored") in s.events


def test_generations_count_per_moedeployment_uid(kube, namespace, gpu_nodes):
    """Issue 20, defect 6 (operator side): the placement names the UID its generation counts in, and a
    re-created MoEDeployment starts at generation 1 under its new UID, never continuing the old count."""
    s = Setup(kube, namespace, gpu_nodes)
    s.reconcile()
    first = s.deployment()
    meta = _meta(s.placement())
    assert (meta["placementGeneration"], meta["uid"]) == (1, first["metadata"]["uid"])
    s.custom.patch_namespaced_custom_object(
        G, V, s.ns, api.MOEDEPLOYMENT_PLURAL, "m", {"spec": {"gpus": {"slotsPerGPU": 4}}}
    )
    s.reconcile()
    assert _meta(s.placement())["placementGeneration"] == 2
    # Delete and re-create; the old ConfigMap may outlive its owner for a while (garbage collection).
    s.custom.delete_namespaced_custom_object(G, V, s.ns, api.MOEDEPLOYMENT_PLURAL, "m")
    body = {k: v for k, v in first.items() if k in ("apiVersion", "kind", "spec")}
    body["metadata"] = {"name": "m"}
    s.custom.create_namespaced_custom_object(G, V, s.ns, api.MOEDEPLOYMENT_PLURAL, body)
    second = s.deployment()
    s.reconcile()
    meta = _meta(s.placement())
    assert (meta["placementGeneration"], meta["uid"]) == (1, second["metadata"]["uid"])
    assert s.deployment()["status"]["placementGeneration"] == 1
