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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.exceptions import ApiException

from vibe import api, contract
from vibe.operator import metrics, output, refusals
from vibe.operator import status as status_mod
from vibe.operator.clock import iso
from vibe.operator.clock import now as clock_now
from vibe.operator.compute import Computer
from vibe.operator.gpus import PodSnapshot, ProfileSnapshot, pod_snapshot, resolve, with_leases
from vibe.operator.kube import Conflict, Kube
from vibe.operator.output import InService
from vibe.operator.planning import WRITE, Inputs, Plan
from vibe.operator.problems import Problem
from vibe.operator.settings import OperatorSettings
from vibe.operator.spec import DeploymentSpec, parse_spec
from vibe.operator.watches import Need, Watches, config_map_need, pods_need, selector_string
from vibe.operator.workload import Loads, from_config_map, uniform

logger = logging.getLogger("vibe.operator")

MAX_CONFLICT_RETRIES = 5


@dataclass
class World:
    """Read-only view of the watch cache a reconcile resolves GPUs from: the GPUProfiles. Nodes and
    pods are listed per reconcile, filtered by the API server (by the node selector, the pod selector):
    a cache of every node or pod costs a watch event per status update of each, used or not."""

    profiles: Mapping[str, ProfileSnapshot]


@dataclass
class Shared:
    """Operator-wide state shared by every handler (lives in Kopf's memo)."""

    settings: OperatorSettings
    kube: Kube
    computer: Computer
    failures: dict[tuple[str, str], int] = field(default_factory=dict)
    post_event: Any = None  # (body, type, reason, message) -> None; Kopf's poster in the operator
    watches: Watches | None = None  # the narrow watches that wake a deployment (None: not watched)
    #: Deterministic failures of the placement work, by deployment: (input fingerprint, the Problem).
    #: The same inputs fail the same way, so they are not computed again until they change.
    hopeless: dict[tuple[str, str], tuple[str, Problem]] = field(default_factory=dict)
    #: The last refusal logged per deployment (each is said once, not per retry).
    said: dict[tuple[str, str], str] = field(default_factory=dict)

    def failed(self, key: tuple[str, str], error: str) -> float:
        """Count a failed reconcile of ``key`` (the errors metric, by ``error``); seconds to back off:
        the first delay, doubling with each failure in a row, capped."""
        n = self.failures[key] = self.failures.get(key, 0) + 1
        metrics.ERRORS.labels(error).inc()
        return min(self.settings.backoff_max_s, self.settings.backoff_initial_s * 2 ** (n - 1))


class Gone(Exception):
    """The MoEDeployment a worker serves no longer exists (deleted, or replaced by a new one)."""


async def reconcile(
    shared: Shared, world: World, namespace: str, name: str, uid: str | None = None
) -> float | None:
    """Reconcile one MoEDeployment; returns seconds until it should be looked at again (None: resync).

    With ``uid``: raises ``Gone`` when the object is gone or is another object of the same name (its
    worker then ends: no finalizer holds the object for the worker, see ``handlers``)."""
    started = time.perf_counter()
    outcome = "error"
    try:
        for _ in range(MAX_CONFLICT_RETRIES):
            try:
                delay, outcome = await _reconcile_once(shared, world, namespace, name, uid)
                if outcome == "gone" and uid is not None:
                    raise Gone(f"{namespace}/{name}")
                return delay
            except Conflict as e:
                logger.info("%s/%s: %s; re-reading", namespace, name, e)
                outcome = "conflict"
        return shared.settings.backoff_initial_s
    except ApiException as e:
        if not refusals.refused(e):
            raise
        outcome = "refused"
        return await _report_refusal(shared, namespace, name, refusals.problem(e, "a read or status write"))
    finally:
        metrics.RECONCILE.labels(outcome).observe(time.perf_counter() - started)


async def _reconcile_once(
    shared: Shared, world: World, namespace: str, name: str, uid: str | None = None
) -> tuple[float | None, str]:
    kube, cfg = shared.kube, shared.settings
    key = (namespace, name)
    t0 = time.perf_counter()
    body = await kube.get_deployment(namespace, name)
    if (
        body is None
        or body["metadata"].get("deletionTimestamp")
        or (uid is not None and body["metadata"].get("uid") != uid)
    ):
        return None, "gone"
    meta = body["metadata"]
    old_status = body.get("status") or {}
    now = clock_now()
    spec = parse_spec(body["spec"])
    cm_name = contract.config_map_name(name)
    m = spec.model
    if shared.watches is not None:
        shared.watches.want(key, _needs(spec, namespace))
    # The placement ConfigMap and the load ConfigMap are read together; parsing runs off the event loop.
    cm_obj, loads_obj = await asyncio.gather(
        kube.get_config_map(namespace, cm_name),
        _refusal_as_value(kube.get_config_map(namespace, spec.workload.config_map))
        if spec.workload.config_map
        else _none(),
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
        # The three reads the resolution needs are independent: one round trip instead of three.
        nodes, leases, pods = await asyncio.gather(
            kube.node_labels(spec.gpus.node_selector) if spec.gpus.node_selector is not None else _empty(),
            kube.agent_leases(cfg.profile_namespace),
            _pods(kube, spec, namespace),
        )
        obs.resolution = resolve(
            spec,
            namespace=namespace,
            nodes=nodes,
            profiles=with_leases(world.profiles, leases),
            pods=pods,
            now=now,
            profile_ttl_s=cfg.profile_ttl_s,
        )
        if isinstance(loads_obj, ApiException):
            raise refusals.problem(loads_obj, f"reading the load ConfigMap {spec.workload.config_map}")
        obs.loads = await asyncio.to_thread(_loads, spec, namespace, loads_obj)
        inputs = Inputs(spec, obs.resolution, obs.loads)
        t_read = time.perf_counter()
        plan, core = await _compute(shared, key, body, inputs, current, old_status, now)
        obs.plan = plan
        t_plan = time.perf_counter()
        tampered = _tampered(current, old_status, cm_name)
        if plan.action != WRITE and current is not None and current.annotations_edited:
            plan.action, core = WRITE, contract.core_data(current.data)  # same data, annotations repaired
        if plan.action == WRITE:
            assert core is not None  # compute renders the data whenever the plan writes
            obs.in_service, wrote = await _write(kube, body, inputs, plan, core, current, old_status, now)
            if tampered and shared.post_event is not None:
                shared.post_event(
                    body, "Warning", "PlacementRestored",
                    f"{tampered}; wrote placement generation {obs.in_service.generation} back"
                    + (" (the same data)" if not wrote else ""),
                )  # fmt: skip
            logger.info(
                "%s/%s: placement generation %d (%s): read %.2f s, plan %.2f s, write %.2f s",
                namespace, name, obs.in_service.generation, plan.reason, t_read - t0, t_plan - t_read,
                time.perf_counter() - t_plan,
            )  # fmt: skip
    except Problem as p:
        obs.problem = p
    except ApiException as refused:  # a 4xx: the API server or an admission policy refused; say why
        if not refusals.refused(refused):
            raise
        obs.problem = refusals.problem(refused, "a read or write of this deployment's placement")
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
        return shared.failed(key, obs.problem.reason), "problem"
    shared.failures.pop(key, None)
    return _next_look(obs, now), "written" if wrote else "unchanged"


#: Problems of the placement work that the same inputs would meet again.
DETERMINISTIC = ("InstanceTooLarge", "OutputTooLarge")


async def _compute(
    shared: Shared,
    key: tuple[str, str],
    body: Mapping[str, Any],
    inputs: Inputs,
    current: InService | None,
    old_status: Mapping[str, Any],
    now: dt.datetime,
) -> tuple[Plan, dict[str, str] | None]:
    """The placement work, unless the same inputs already failed deterministically (no hot retry)."""
    fingerprint = inputs.keys.all
    failed = shared.hopeless.get(key)
    if failed is not None and failed[0] == fingerprint:
        raise failed[1]
    shared.hopeless.pop(key, None)

    def lost(message: str) -> None:
        if shared.post_event is not None:
            shared.post_event(body, "Warning", "PlacementWorkerLost", message)

    try:
        return await shared.computer.run(
            inputs, current, old_status.get("drift"), now, shared.settings.solve_budget_s, on_lost=lost
        )
    except Problem as p:
        if p.reason in DETERMINISTIC:
            shared.hopeless[key] = (fingerprint, p)
        raise


def _needs(spec: DeploymentSpec, namespace: str) -> list[Need]:
    needs = []
    if spec.workload.config_map:
        needs.append(config_map_need(namespace, spec.workload.config_map))
    if spec.gpus.pod_selector is not None:
        needs.append(pods_need(namespace, spec.gpus.pod_selector))
    return needs


async def _pods(kube: Kube, spec: DeploymentSpec, namespace: str) -> list[PodSnapshot]:
    if spec.gpus.pod_selector is None:
        return []
    selector = selector_string(spec.gpus.pod_selector)
    try:
        items = await kube.pods(namespace, selector)
    except ApiException as e:  # e.g. a value that is no label value, stored before the CRD checked it
        if not refusals.refused(e):
            raise
        raise refusals.problem(e, f"listing the pods of spec.gpus.podSelector ({selector[:200]!r})") from None
    return [p for p in (pod_snapshot(i) for i in items) if p is not None]


def _loads(spec: DeploymentSpec, namespace: str, obj: Mapping[str, Any] | None) -> Loads:
    if spec.workload.config_map is None:
        return uniform(spec)
    if obj is None:
        return from_config_map(spec, namespace, None)
    return from_config_map(spec, namespace, obj.get("data") or {}, obj.get("binaryData"))


async def _none() -> None:
    return None


async def _empty() -> dict[str, dict[str, str]]:
    return {}


async def _refusal_as_value(coro: Any) -> Any:
    """The result, or the API server's 4xx refusal as a value (raised later, where it is a Problem)."""
    try:
        return await coro
    except ApiException as e:
        if not refusals.refused(e):
            raise
        return e


async def _report_refusal(shared: Shared, namespace: str, name: str, problem: Problem) -> float:
    """A refusal outside the reconcile's own error handling (reading the deployment or its placement,
    writing status): set the condition if status can be written, log it once, back off."""
    key = (namespace, name)
    cfg = shared.settings
    delay = shared.failed(key, problem.reason)
    if shared.said.get(key) != problem.message:
        shared.said[key] = problem.message
        logger.error("%s/%s: %s (retrying every %.0f-%.0f s; said once)", namespace, name, problem.message,
                     delay, cfg.backoff_max_s)  # fmt: skip
    try:
        body = await shared.kube.get_deployment(namespace, name)
        if body is None:
            return delay
        old = body.get("status") or {}
        obs = status_mod.Observation(
            generation=int(body["metadata"].get("generation") or 0),
            placement_key="",
            config_map=contract.config_map_name(name),
            in_service=None,
            problem=problem,
        )
        new, _ = status_mod.observe(old, obs, now=iso(clock_now()))
        keep = {k: v for k, v in new.items() if k in ("conditions", "observedGeneration")}
        patch = status_mod.merge_patch({k: old.get(k) for k in keep}, keep)
        if patch:
            await shared.kube.patch_deployment_status(namespace, name, patch)
    except ApiException as e:
        if not refusals.refused(e):
            raise
    return delay


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
    # The generation: the intact ConfigMap's (read from its data, never from an editable annotation),
    # or status's (only the operator writes status). The same data as in service, or as status says
    # was last placed (a ConfigMap deleted or edited by hand and now restored), keeps its generation.
    # A ConfigMap written for another incarnation of this MoEDeployment (deleted and re-created while
    # its ConfigMap lived on) lends no generation: generations count per UID (placement-meta.json).
    same_object = current is not None and current.uid in (None, meta["uid"])
    known = max(
        current.generation if current is not None and current.intact and same_object else 0,
        int(old_status.get("placementGeneration") or 0),
    )
    same = (
        current is not None and current.intact and same_object and contract.core_data(current.data) == core
    ) or (known > 0 and contract.content_hash(core) == old_status.get("contentHash"))
    if same:
        generation = known
        placed_at = (
            (current.annotations.get(api.ANNOTATION_PLACED_AT) if current is not None else None)
            or (old_status.get("lastReplacement") or {}).get("time")
            or iso(now)
        )
    else:
        generation = known + 1
        placed_at = iso(now)
    if generation > api.MAX_PLACEMENT_GENERATION:  # only a status edited by hand gets here
        raise Problem(
            "GenerationExhausted",
            f"placement generation {known} is the largest allowed ({api.MAX_PLACEMENT_GENERATION});"
            " re-create the MoEDeployment to start counting again",
        )
    data, annotations = output.finish(
        core,
        generation=generation,
        keys=inputs.keys,
        placed_at=placed_at,
        summary=plan.summary,
        uid=meta["uid"],
    )
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": contract.config_map_name(meta["name"]),
            "namespace": meta["namespace"],
            "labels": {**output.MANAGED_BY, api.LABEL_MOEDEPLOYMENT: meta["name"]},
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
        others = {k: v for k, v in current.annotations.items() if not k.startswith(api.PREFIX)}
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


def _tampered(current: InService | None, old_status: Mapping[str, Any], cm_name: str) -> str:
    """Why the placement ConfigMap is not as the operator left it ("" when it is)."""
    if current is None:
        return f"ConfigMap {cm_name} was deleted" if old_status.get("placementGeneration") else ""
    if not current.intact:
        return f"ConfigMap {cm_name} was edited by hand ({current.unreadable})"
    if current.annotations_edited:
        return f"the annotations of ConfigMap {cm_name} were edited by hand"
    return ""


def _ours(cm_obj: Mapping[str, Any] | None, name: str) -> bool:
    """A ConfigMap this operator wrote for a MoEDeployment of this name (e.g. a deleted-and-recreated one)."""
    labels = ((cm_obj or {}).get("metadata") or {}).get("labels") or {}
    return (
        labels.get(api.LABEL_MANAGED_BY) == api.MANAGED_BY_OPERATOR
        and labels.get(api.LABEL_MOEDEPLOYMENT) == name
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
