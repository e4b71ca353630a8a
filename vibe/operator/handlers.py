"""Kopf registrations: watch caches (indices), one worker per MoEDeployment, and who wakes which worker.

Role: the operator's wiring; no decisions here. Run with ``vibe operator`` or ``kopf run -m
vibe.operator.handlers``.

* What Kopf watches: MoEDeployments, GPUProfiles (kept only in the profile namespace) and the
  placement ConfigMaps (label ``app.kubernetes.io/managed-by=vibe``, filtered by the API server).
  Nothing else: every Pod or ConfigMap of the cluster would cost a watch event per change, used or not
  (15-38 % of a core under churn of unrelated pods), and would have the operator read every
  ConfigMap's data. The load ConfigMap and the serving pods a deployment depends on get their own
  narrow watches (``watches``: one ConfigMap by name, the pods of one selector), declared by each
  reconcile; nodes are not watched at all: each reconcile lists the nodes its selector matches (the
  API server filters, metadata only); node label changes are seen at the next resync or profile change.
* Indices (Kopf keeps them current from watches, and starts handlers only once they are filled):
  ``vibe_profiles`` (node -> GPUProfile snapshot) and two over MoEDeployments: by node they use (from
  ``status.nodes``) and all of them (for node selector matches).
* ``worker`` (a Kopf daemon per MoEDeployment): waits to be woken (or for its next due time) and runs
  ``reconciling.reconcile``. One worker per object serialises its reconciles and coalesces bursts of
  changes into one pass; Kopf stops the workers when peering pauses this replica, so a standby replica
  writes nothing, and a stopping worker drops the object's metric series, so only the active replica
  exports them (the alerts need no aggregation across replicas). The daemon carries **no finalizer**
  (unlike Kopf's default for daemons): nothing needs cleaning up when a MoEDeployment goes (its
  ConfigMap is owner-referenced), and a finalizer would make ``kubectl delete`` of the object, or of its
  namespace, hang while the operator is down. A worker ends by itself when its object is gone (its
  DELETED event wakes it; ``reconciling.Gone``); a finalizer left by an older version is removed by
  Kopf on the next event.
* Watchers (``on.event``; they never write to what they watch): each works out which deployments a
  change affects and wakes only those. A GPUProfile ``spec`` change (not its heartbeat) wakes the
  deployments using that node; a placement ConfigMap deleted or written by someone else wakes its
  deployment, which restores it within seconds. A MoEDeployment's own event wakes it when its
  generation or its ``vibe.dev/reconcile-trigger`` annotation changed (status patches by the worker
  itself do not). The memory of what a watcher last saw holds live objects only.

Kopf logs in through ``login`` (``@kopf.on.login``): the credentials of ``vibe operator --kubeconfig
--context``, the same as the reconciler's client.

Kopf persistence goes under ``vibe.dev/`` annotations (no ``status.kopf``); handler log lines are not
posted as Events (only the Events the reconciler chooses).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, cast

import kopf
from kubernetes.client.exceptions import ApiException

from vibe import api
from vibe.kubeclient import api_client
from vibe.operator import metrics, output
from vibe.operator import settings as settings_mod
from vibe.operator.clock import now as clock_now
from vibe.operator.clock import parse_time
from vibe.operator.compute import Computer
from vibe.operator.conditions import is_true
from vibe.operator.gpus import (
    ProfileSnapshot,
    matches_labels,
    profile_snapshot,
)
from vibe.operator.kopf_private import daemon_without_finalizer
from vibe.operator.kube import Kube, new_api_client
from vibe.operator.login import connection_info
from vibe.operator.reconciling import Gone, Shared, World, reconcile
from vibe.operator.settings import OperatorSettings
from vibe.operator.watches import Watches

MOED = (api.GROUP, api.VERSION, api.MOEDEPLOYMENT_PLURAL)
GPUP = (api.GROUP, api.VERSION, api.GPUPROFILE_PLURAL)

logger = logging.getLogger("vibe.operator")


@dataclass
class State(Shared):
    """``Shared`` plus the watchers' memory of what they last saw, and each worker's wake-up event."""

    wakers: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)
    seen: dict[Any, Any] = field(default_factory=dict)
    profile_cache: dict[str, tuple[Any, ProfileSnapshot]] = field(default_factory=dict)

    def wake(self, key: tuple[str, str]) -> None:
        self.wakers.setdefault(key, asyncio.Event()).set()

    def changed(self, key: Any, value: Any) -> bool:
        """Record ``value`` for ``key``; True when it differs from the last one recorded. ``None`` means
        the object was deleted: its entry is dropped (the memory holds live objects only)."""
        old = self.seen.pop(key, _MISSING) if value is None else self.seen.get(key, _MISSING)
        if value is not None:
            self.seen[key] = value
        return old is not _MISSING and old != value


_MISSING = object()


@dataclass(frozen=True)
class DeploymentRef:
    """What the watchers need to know of a MoEDeployment to tell whether a change concerns it."""

    namespace: str
    name: str
    node_selector: Mapping[str, str] | None
    ready: bool

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


# --------------------------------------------------------------------------------------------------
# Startup


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    cfg = settings_mod.CURRENT or OperatorSettings.from_env()
    settings.persistence.finalizer = api.FINALIZER  # none is added; this name lets Kopf remove old ones
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.KOPF_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=api.KOPF_PREFIX, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # Events come from the reconciler, not from log lines
    settings.posting.reporting_component = "vibe-operator"
    settings.posting.event_name_prefix = "vibe-"
    settings.watching.server_timeout = 300  # re-establish watches regularly (kopf's advice)
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    memo.vibe = State(
        settings=cfg,
        kube=Kube(new_api_client(cfg.kubeconfig, cfg.context)),
        computer=Computer(cfg.compute_processes),
        post_event=_post_event,
    )
    # Watch only the placement ConfigMaps (labelled by this operator) through Kopf; the load ConfigMaps
    # and serving pods a deployment depends on get their own narrow watches (``watches``).
    settings.watching.label_selectors["configmaps"] = ",".join(
        f"{k}={v}" for k, v in output.MANAGED_BY.items()
    )
    # Its own client: each watch holds a connection for its whole request (up to a minute).
    memo.vibe.watches = Watches(
        api_client(cfg.kubeconfig, context=cfg.context, pool_maxsize=1024), memo.vibe.wake
    )
    metrics.serve(cfg.metrics_port, cfg.metrics_addr)
    await memo.vibe.computer.warm()


@kopf.on.login()
def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    """Kopf's credentials: ``vibe operator --kubeconfig --context``, the reconciler's too (``login``)."""
    cfg = settings_mod.CURRENT or OperatorSettings.from_env()
    return connection_info(cfg, trust_env=settings.networking.trust_env)


@kopf.on.cleanup()
async def shut_down(memo: kopf.Memo, **_: Any) -> None:
    if getattr(memo, "vibe", None) is not None:
        memo.vibe.computer.close()
        if memo.vibe.watches is not None:
            memo.vibe.watches.close()


@kopf.on.probe(id="placementWorkers")
def placement_workers(memo: kopf.Memo, **_: Any) -> dict[str, Any]:
    """Liveness: fails (HTTP 500) when a placement worker pool is broken and cannot be rebuilt."""
    computer = memo.vibe.computer
    lanes = {n: {"healthy": lane.healthy, "restarts": lane.restarts} for n, lane in computer.lanes.items()}
    if not computer.healthy:
        raise kopf.PermanentError(f"placement worker pool cannot be rebuilt: {lanes}")
    return lanes


def _post_event(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    with contextlib.suppress(LookupError, RuntimeError):  # outside Kopf's context (unit tests)
        kopf.event(cast(kopf.Body, dict(body)), type=type_, reason=reason, message=message[:1024])


# --------------------------------------------------------------------------------------------------
# Indices


# Kopf's callback types: its protocols type ``namespace`` as ``str | None`` (cluster-scoped resources
# have none); every resource watched here is namespaced, so the handlers take ``str`` and the
# registrations carry a ``type: ignore[arg-type]`` for that one difference.


def _in_profile_namespace(namespace: str, memo: kopf.Memo, **_: Any) -> bool:
    return bool(namespace == memo.vibe.settings.profile_namespace)


@kopf.index(*GPUP, when=_in_profile_namespace)  # type: ignore[arg-type]  # see "Kopf's callback types" above
def vibe_profiles(
    body: kopf.Body, meta: kopf.Meta, memo: kopf.Memo, **_: Any
) -> dict[str, ProfileSnapshot] | None:
    # Parse the spec only when it changed (metadata.generation); heartbeats only update the timestamp.
    state: State = memo.vibe
    node = (body.get("spec") or {}).get("nodeName")
    if node and node != meta["name"]:
        # One profile per node, named after it: a profile speaking for another node is ignored (an
        # agent's token may write only its own node's profile; see the chart's node restriction).
        key = ("gpup-misnamed", meta["name"])
        if state.seen.get(key) != node:
            logger.warning("GPUProfile %s says nodeName %s: ignored (they must agree)", meta["name"], node)
        state.seen[key] = node
        return None
    tag = (meta.get("uid"), meta.get("generation"))
    cached = state.profile_cache.get(meta["name"])
    if cached is not None and cached[0] == tag:
        snap = replace(cached[1], heartbeat=parse_time((body.get("status") or {}).get("heartbeatTime")))
    else:
        snap = profile_snapshot(body)
    state.profile_cache[meta["name"]] = (tag, snap)
    return {snap.node: snap}


@kopf.index(*MOED)  # type: ignore[arg-type]  # see "Kopf's callback types" above
def vibe_deployments_by_node(
    namespace: str, name: str, status: kopf.Status, **_: Any
) -> dict[str, tuple[str, str]]:
    return {n: (namespace, name) for n in status.get("nodes") or ()}


@kopf.index(*MOED)  # type: ignore[arg-type]  # see "Kopf's callback types" above
def vibe_deployments(
    namespace: str, name: str, spec: kopf.Spec, status: kopf.Status, **_: Any
) -> dict[str, DeploymentRef]:
    ns = (spec.get("gpus") or {}).get("nodeSelector")
    ready = is_true(status.get("conditions"), "Ready")
    return {"all": DeploymentRef(namespace, name, dict(ns) if ns is not None else None, ready)}


def _world(kwargs: Mapping[str, Any]) -> World:
    return World(profiles=_Single(kwargs["vibe_profiles"]))


class _Single(Mapping[Any, Any]):
    """A Kopf index whose keys each hold one value (a node's labels, its profile) as a plain mapping."""

    def __init__(self, index: kopf.Index[Any, Any]) -> None:
        self._index = index

    def __getitem__(self, key: Any) -> Any:
        for value in self._index[key]:
            return value
        raise KeyError(key)

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self._index.keys()))

    def __len__(self) -> int:
        return len(self._index)


def _lookup(index: kopf.Index[Any, tuple[str, str]], key: Any) -> set[tuple[str, str]]:
    return set(index.get(key, ()))


def _all_deployments(kwargs: Mapping[str, Any]) -> list[DeploymentRef]:
    return list(kwargs["vibe_deployments"].get("all", ()))


# --------------------------------------------------------------------------------------------------
# The worker


@kopf.daemon(*MOED, cancellation_timeout=10.0)  # type: ignore[arg-type]  # see "Kopf's callback types" above
async def worker(
    namespace: str, name: str, uid: str, memo: kopf.Memo, stopped: kopf.DaemonStopped, **kwargs: Any
) -> None:
    state: State = memo.vibe
    key = (namespace, name)
    waker = state.wakers.setdefault(key, asyncio.Event())
    waker.set()  # reconcile once on start (creation, operator restart, takeover from a peer)
    delay: float | None = None
    world = _world(kwargs)
    try:
        while not stopped:
            timeout = state.settings.resync_s if delay is None else min(delay, state.settings.resync_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waker.wait(), timeout=timeout)
            if stopped:
                break
            waker.clear()
            try:
                delay = await reconcile(state, world, namespace, name, uid)
            except asyncio.CancelledError:
                raise
            except Gone:
                if state.watches is not None:
                    state.watches.drop(key)
                return
            except Exception as e:  # an API error or a bug: log, count, back off; never kill the worker
                delay = state.failed(key, type(e).__name__)
                if isinstance(e, ApiException):  # the API server failing: one line, said once
                    said = f"{e.status} {e.reason}"
                    log = logger.debug if state.said.get(key) == said else logger.error
                    state.said[key] = said
                    log("%s/%s: the API server answered %s (retry in %.0f s)", namespace, name, said, delay)
                else:  # a bug: the traceback helps
                    logger.exception("%s/%s: reconcile failed (retry in %.0f s)", namespace, name, delay)
    finally:
        # Only the replica that owns the object exports its series. A worker stops when peering pauses
        # this replica (a higher-priority peer took over), when the object goes away and at shutdown:
        # the series go with it, so a standby never shows a stale Ready=1 beside the active replica.
        metrics.forget(namespace, name)


daemon_without_finalizer(worker)  # the one reach into Kopf's internals: see kopf_private


# --------------------------------------------------------------------------------------------------
# Watchers: who to wake


@kopf.on.event(*MOED)  # type: ignore[arg-type]  # see "Kopf's callback types" above
def deployment_changed(
    event: kopf.RawEvent, namespace: str, name: str, meta: kopf.Meta, memo: kopf.Memo, **_: Any
) -> None:
    state: State = memo.vibe
    key = (namespace, name)
    if event["type"] == "DELETED":
        waker = state.wakers.pop(key, None)
        if waker is not None:
            waker.set()  # its worker looks once more, finds it gone, and ends
        state.seen.pop(("moed", key), None)
        state.failures.pop(key, None)
        state.hopeless.pop(key, None)
        state.said.pop(key, None)
        if state.watches is not None:
            state.watches.drop(key)
        metrics.forget(namespace, name)
        return
    mark = (
        meta.get("uid"),
        meta.get("generation"),
        (meta.get("annotations") or {}).get(api.ANNOTATION_RECONCILE_TRIGGER),
    )
    if state.changed(("moed", key), mark):
        state.wake(key)


@kopf.on.event(*GPUP, when=_in_profile_namespace)  # type: ignore[arg-type]  # see "Kopf's callback types" above
async def profile_changed(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    """A profile's spec changed (drift) or it turned stale or fresh again: wake the deployments using its
    node. A profile appeared or went away, or a deployment still waits for GPUs: also wake those whose
    node selector matches the node (their GPUs may shift), reading the node's labels once."""
    state: State = memo.vibe
    spec = body.get("spec") or {}
    node = str(spec.get("nodeName") or body["metadata"]["name"])
    beat = parse_time((body.get("status") or {}).get("heartbeatTime"))
    stale = beat is not None and (clock_now() - beat).total_seconds() > state.settings.profile_ttl_s
    kind = event["type"]
    meta = body["metadata"]
    mark = None if kind == "DELETED" else (meta.get("uid"), meta.get("generation"), stale)
    if kind == "DELETED":
        state.profile_cache.pop(str(meta.get("name")), None)
    if not state.changed(("gpup", node), mark) and kind != "ADDED":
        return
    keys = _lookup(kwargs["vibe_deployments_by_node"], node)
    candidates = [
        d
        for d in _all_deployments(kwargs)
        if d.node_selector is not None and d.key not in keys and (kind in ("ADDED", "DELETED") or not d.ready)
    ]
    if candidates:
        labels = await state.kube.one_node_labels(node) or {}
        keys |= {d.key for d in candidates if matches_labels(d.node_selector or {}, labels)}
    for key in keys:
        state.wake(key)


@kopf.on.event("configmaps", labels=output.MANAGED_BY)  # type: ignore[arg-type]  # see "Kopf's callback types" above
def placement_changed(
    event: kopf.RawEvent, namespace: str, body: kopf.Body, meta: kopf.Meta, memo: kopf.Memo, **_: Any
) -> None:
    """A placement ConfigMap was deleted or edited by hand: wake its deployment, which restores it
    within seconds. The operator's own writes are always intact (``output.as_written``): no wake."""
    owner = (meta.get("labels") or {}).get(api.LABEL_MOEDEPLOYMENT)
    if not owner or event["type"] is None:  # the initial listing: every worker reconciles on start
        return
    if event["type"] == "DELETED" or not output.as_written(body):
        memo.vibe.wake((namespace, str(owner)))
