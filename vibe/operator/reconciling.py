"""One reconcile of one MoEDeployment: read the world, plan, write the ConfigMap, patch status, tell.

Role: the only place that does I/O for a deployment. It is level-based (it reads the current state of
everything it depends on each time, so it does not matter which change woke it or how many changes were
coalesced) and idempotent (the same inputs make no write: ``planning`` compares input fingerprints stored
on the ConfigMap). Each deployment's reconciles are serialised by its worker (``handlers.worker``).

Order of effects, chosen so a crash anywhere is harmless:

1. the ConfigMap is written whole, in one create or one replace with the resourceVersion read (a 409
   means someone else wrote: re-read and start over, never a blind overwrite, so two replicas or a
   restarted operator cannot make two generations from one change);
2. then status is patched from what the ConfigMap now says (a crash between 1 and 2 is repaired by the
   next reconcile, which finds the inputs unchanged and rebuilds status from the ConfigMap);
3. then Events and metrics.

The returned number is when to look again (seconds): a retry backoff after a problem, the end of a drift
cooldown, the moment a GPU profile will turn stale; ``None`` for the regular resync.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vibe import api
from vibe.operator import metrics, output
from vibe.operator import status as status_mod
from vibe.operator.clock import iso
from vibe.operator.clock import now as clock_now
from vibe.operator.compute import Computer
from vibe.operator.gpus import PodSnapshot, ProfileSnapshot, resolve, with_leases
from vibe.operator.kube import Conflict, Kube
from vibe.operator.output import InService
from vibe.operator.planning import WRITE, Inputs, Plan
from vibe.operator.problems import Problem
from vibe.operator.settings import OperatorSettings
from vibe.operator.spec import DeploymentSpec, parse_spec
from vibe.operator.workload import Loads, from_config_map, uniform

logger = logging.getLogger("vibe.operator")

MAX_CONFLICT_RETRIES = 5


@dataclass
class World:
    """Read-only views of the watch caches a reconcile resolves GPUs from (nodes are listed per reconcile:
    the API server filters them by the node selector, and a node cache would cost a watch event per
    node status update)."""

    profiles: Mapping[str, ProfileSnapshot]
    pods: Mapping[str, Iterable[PodSnapshot]]  # namespace -> pods


@dataclass
class Shared:
    """Operator-wide state shared by every handler (lives in Kopf's memo)."""

    settings: OperatorSettings
    kube: Kube
    computer: Computer
    failures: dict[tuple[str, str], int] = field(default_factory=dict)
    post_event: Any = None  # (body, type, reason, message) -> None; Kopf's poster in the operator


async def reconcile(shared: Shared, world: World, namespace: str, name: str) -> float | None:
    """Reconcile one MoEDeployment; returns seconds until it should be looked at again (None: resync)."""
    started = time.perf_counter()
    outcome = "error"
    try:
        for _ in range(MAX_CONFLICT_RETRIES):
            try:
                delay, outcome = await _reconcile_once(shared, world, namespace, name)
                return delay
            except Conflict as e:
                logger.info("%s/%s: %s; re-reading", namespace, name, e)
                outcome = "conflict"
        return shared.settings.backoff_initial_s
    finally:
        metrics.RECONCILE.labels(outcome).observe(time.perf_counter() - started)


async def _reconcile_once(
    shared: Shared, world: World, namespace: str, name: str
) -> tuple[float | None, str]:
    kube, cfg = shared.kube, shared.settings
    key = (namespace, name)
    t0 = time.perf_counter()
    body = await kube.get_deployment(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None, "gone"
    meta = body["metadata"]
    old_status = body.get("status") or {}
    now = clock_now()
    spec = parse_spec(body["spec"])
    cm_name = output.config_map_name(name)
    m = spec.model
    # The placement ConfigMap and the load ConfigMap are read together; parsing runs off the event loop.
    cm_obj, loads_obj = await asyncio.gather(
        kube.get_config_map(namespace, cm_name),
        kube.get_config_map(namespace, spec.workload.config_map) if spec.workload.config_map else _none(),
    )
    current = await asyncio.to_thread(
        output.read_back, cm_obj, layers=m.layers, experts=m.experts, slots_per_gpu=spec.gpus.slots_per_gpu
    )
    obs = status_mod.Observation(
        generation=int(meta.get("generation") or 0),
        placement_key=spec.placement_key,
        config_map=cm_name,
        in_service=current,
        profile_ttl_s=cfg.profile_ttl_s,
    )
    wrote = False
    try:
        if current is not None and not current.owned_by(meta["uid"]) and not _ours(cm_obj, name):
            raise Problem(
                "PlacementConflict",
                f"ConfigMap {cm_name} exists and is not managed by this MoEDeployment; delete or rename it",
            )
        nodes = await kube.node_labels(spec.gpus.node_selector) if spec.gpus.node_selector is not None else {}
        leases = await kube.agent_leases(cfg.profile_namespace)
        obs.resolution = resolve(
            spec,
            namespace=namespace,
            nodes=nodes,
            profiles=with_leases(world.profiles, leases),
            pods=world.pods.get(namespace, ()),
            now=now,
            profile_ttl_s=cfg.profile_ttl_s,
        )
        obs.loads = await asyncio.to_thread(_loads, spec, namespace, loads_obj)
        inputs = Inputs(spec, obs.resolution, obs.loads)
        t_read = time.perf_counter()
        plan, core = await shared.computer.run(
            inputs, current, old_status.get("drift"), now, cfg.solve_budget_s
        )
        obs.plan = plan
        t_plan = time.perf_counter()
        if plan.action == WRITE:
            assert core is not None  # compute renders the data whenever the plan writes
            obs.in_service, wrote = await _write(kube, body, inputs, plan, core, current, old_status, now)
            logger.info(
                "%s/%s: placement generation %d (%s): read %.2f s, plan %.2f s, write %.2f s",
                namespace, name, obs.in_service.generation, plan.reason, t_read - t0, t_plan - t_read,
                time.perf_counter() - t_plan,
            )  # fmt: skip
    except Problem as p:
        obs.problem = p
    new_status, events = status_mod.observe(old_status, obs, now=iso(now))
    if not wrote:  # a write Event only for a data change
        events = [
            e for e in events if not (obs.plan and e.reason == obs.plan.reason and obs.plan.action == WRITE)
        ]
    patch = status_mod.merge_patch(old_status, new_status)
    if patch:
        await kube.patch_deployment_status(namespace, name, patch)
    for e in events:
        if shared.post_event is not None:
            shared.post_event(body, e.type, e.reason, e.message)
    _record(namespace, name, new_status, obs, wrote)

    if obs.problem is not None:
        n = shared.failures[key] = shared.failures.get(key, 0) + 1
        metrics.ERRORS.labels(obs.problem.reason).inc()
        return min(cfg.backoff_max_s, cfg.backoff_initial_s * 2 ** (n - 1)), "problem"
    shared.failures.pop(key, None)
    return _next_look(obs, now), "written" if wrote else "unchanged"


def _loads(spec: DeploymentSpec, namespace: str, obj: Mapping[str, Any] | None) -> Loads:
    if spec.workload.config_map is None:
        return uniform(spec)
    if obj is None:
        return from_config_map(spec, namespace, None)
    return from_config_map(spec, namespace, obj.get("data") or {}, obj.get("binaryData"))


async def _none() -> None:
    return None


async def _write(
    kube: Kube,
    owner: Mapping[str, Any],
    inputs: Inputs,
    plan: Plan,
    core: dict[str, str],
    current: InService | None,
    old_status: Mapping[str, Any],
    now: dt.datetime,
) -> tuple[InService, bool]:
    """Write the ConfigMap (whole); returns (what it now holds, whether the data changed)."""
    meta = owner["metadata"]
    same = current is not None and output.core_data(current.data) == core
    if current is not None and same:
        generation = current.generation
        placed_at = current.annotations.get(output.A_PLACED_AT) or iso(now)
    else:
        before = max(current.generation if current else 0, int(old_status.get("placementGeneration") or 0))
        generation = before + 1
        placed_at = iso(now)
    data, annotations = output.finish(
        core, generation=generation, keys=inputs.keys, placed_at=placed_at, summary=plan.summary
    )
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": output.config_map_name(meta["name"]),
            "namespace": meta["namespace"],
            "labels": {**output.MANAGED_BY, output.L_DEPLOYMENT: meta["name"]},
            "annotations": annotations,
            "ownerReferences": [
                {
                    "apiVersion": owner["apiVersion"],
                    "kind": owner["kind"],
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                }
            ],
        },
        "data": data,
    }
    if current is not None:
        body["metadata"]["resourceVersion"] = current.resource_version
        others = {k: v for k, v in current.annotations.items() if not k.startswith(output.PREFIX)}
        body["metadata"]["annotations"] = {**others, **annotations}
    obj = await kube.write_config_map(meta["namespace"], body)
    m = inputs.spec.model
    found = await asyncio.to_thread(
        output.read_back,
        obj,
        layers=m.layers,
        experts=m.experts,
        slots_per_gpu=inputs.spec.gpus.slots_per_gpu,
    )
    assert found is not None
    return found, not same


def _ours(cm_obj: Mapping[str, Any] | None, name: str) -> bool:
    """A ConfigMap this operator wrote for a MoEDeployment of this name (e.g. a deleted-and-recreated one)."""
    labels = ((cm_obj or {}).get("metadata") or {}).get("labels") or {}
    return (
        labels.get(api.LABEL_MANAGED_BY) == api.MANAGED_BY_OPERATOR
        and labels.get(output.L_DEPLOYMENT) == name
    )


def _next_look(obs: status_mod.Observation, now: dt.datetime) -> float | None:
    """Seconds until a cooldown ends or a used GPU profile turns stale, whichever is first."""
    times = []
    if obs.plan is not None and obs.plan.retry_at is not None:
        times.append(obs.plan.retry_at)
    if obs.resolution is not None and obs.resolution.stale_at is not None:
        times.append(obs.resolution.stale_at)
    return max(0.5, min((t - now).total_seconds() for t in times) + 0.5) if times else None


def _record(
    namespace: str, name: str, status: Mapping[str, Any], obs: status_mod.Observation, wrote: bool
) -> None:
    metrics.record(namespace, name, status)
    plan = obs.plan
    if plan is None:
        return
    if wrote:
        metrics.WRITES.labels(namespace, name, plan.reason).inc()
        metrics.MOVES.labels(namespace, name).inc(int(plan.summary.get("moves") or 0))
    if plan.evaluated_drift and plan.drift:
        metrics.DRIFT.labels(
            namespace, name, str(plan.drift.get("kind")), str(plan.drift.get("decision"))
        ).inc()
