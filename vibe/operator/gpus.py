"""Which GPUs a MoEDeployment runs on, in rank order, and the curve each one is priced with.

Role: between the watch caches (Kopf indices of Nodes, Pods and GPUProfiles, holding the snapshots
defined here) and the placement engine's ``Fleet``. Pure: the reconciler hands in the snapshots.

Rank order (the order SGLang and EPLB number expert-parallel ranks in):

* ``nodeSelector``: matching nodes sorted by name, each node's GPUs by index, the first ``count``.
* ``podSelector``: matching running pods sorted by (LeaderWorkerSet group index, worker index) or, for a
  StatefulSet, the pod ordinal; each pod's GPUs are those the kubelet assigned it, as the agent read them
  from the pod-resources API (GPUProfile ``spec.pods``), in index order. A pod the agent did not report
  (pod-resources off, or not read yet) takes the next ``gpusPerPod`` GPUs of its node not held by
  another pod, and the Ready message says so: that rule guesses the device plugin's assignment.

What a node's profile is believed (a node may be compromised; docs/operations.md): no more GPUs than its
Node's capacity (``within_capacity``; the reconciler reads the capacity of the nodes a resolution uses),
no GPU UUID another node listed first (``trusted``), and a GPU list change only once it has held for
the settle time (``next_snapshot``, ``settle``). Liveness is the operator's observation (``liveness``).

Curves: the GPU's curve for the model's expert shape (hidden, intermediate, dtype) when measured, else
its closest measured shape scaled with ``vibe.placement``'s reference scaling (``curve_source="scaled"``,
which the Ready message mentions).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from vibe.api import (
    GROVE_LABEL_PCLQ,
    GROVE_LABEL_PCLQ_POD_INDEX,
    GROVE_LABEL_PCSG_REPLICA,
    GROVE_LEADER_SUFFIX,
    GROVE_WORKER_SUFFIX,
    LWS_LABEL_GROUP_INDEX,
    LWS_LABEL_WORKER_INDEX,
    STS_LABEL_POD_INDEX,
)
from vibe.operator.clock import parse_time
from vibe.operator.problems import Problem
from vibe.placement import DTYPE_BYTES, Fleet, GPUCurve, PlacementError, scale_curve
from vibe.spec import DeploymentSpec, fingerprint


@dataclass(frozen=True, eq=False)
class Curve:
    """One measured curve of a GPU: seconds for ONE expert of a shape over n tokens."""

    hidden_size: int
    intermediate_size: int
    dtype: str
    tokens: np.ndarray
    seconds: np.ndarray

    @property
    def shape(self) -> tuple[int, int, str]:
        return (self.hidden_size, self.intermediate_size, self.dtype)


@dataclass(frozen=True, eq=False)
class ProfileGPU:
    index: int
    uuid: str
    product: str
    memory_bytes: int | None
    curves: tuple[Curve, ...]


@dataclass(frozen=True, eq=False)
class ProfileSnapshot:
    """What the operator keeps of one GPUProfile (one node)."""

    node: str
    gpus: tuple[ProfileGPU, ...]  # by index
    source: str
    heartbeat: dt.datetime | None
    pods: Mapping[tuple[str, str], tuple[str, ...]] | None = None  # (ns, pod) -> GPU UUIDs, when reported
    created: str = ""  # metadata.creationTimestamp (the older profile keeps a UUID both claim)
    #: When the operator saw the GPU list (indices, UUIDs) take its current value (None: from the start),
    #: and the list in effect before it; the current one counts once it has held for the settle time.
    gpus_since: dt.datetime | None = None
    settled: tuple[ProfileGPU, ...] | None = None

    def stale(self, now: dt.datetime, ttl_s: float) -> bool:
        return self.heartbeat is not None and (now - self.heartbeat).total_seconds() > ttl_s


@dataclass(frozen=True)
class PodSnapshot:
    """What the operator keeps of one pod: enough to match selectors and rank it."""

    namespace: str
    name: str
    labels: Mapping[str, str]
    node: str
    rank: tuple[int, int, str]


@dataclass(frozen=True)
class GPURef:
    node: str
    index: int
    uuid: str

    @property
    def id(self) -> str:
        return f"{self.node}/{self.index}"


@dataclass(frozen=True, eq=False)
class Resolution:
    """The GPUs of one MoEDeployment and their fleet curves, in rank order."""

    gpus: tuple[GPURef, ...]
    fleet: Fleet
    curve_source: str  # measured | scaled
    stale_nodes: tuple[str, ...]
    notes: tuple[str, ...]
    stale_at: dt.datetime | None = None  # when the first fresh profile in use turns stale
    settles_at: dt.datetime | None = None  # when a GPU list change of a node it may use starts to count
    #: Every GPU of the trusted, settled profiles, as "node/index/uuid" (what is not here is gone).
    available: frozenset[str] = frozenset()
    #: Nodes whose profile is not believed (more GPUs than the Node's capacity, another node's UUIDs).
    distrusted: tuple[str, ...] = ()

    @property
    def nodes(self) -> list[str]:
        return sorted({g.node for g in self.gpus})

    @property
    def gpus_key(self) -> str:
        """Fingerprint of the GPU identities in rank order (a change means a topology change)."""
        return fingerprint([[g.node, g.index, g.uuid] for g in self.gpus])

    @property
    def curves_key(self) -> str:
        """Fingerprint of the curves the fleet is priced with."""
        return fingerprint([[g.tokens, g.seconds] for g in self.fleet.gpus])


# --------------------------------------------------------------------------------------------------
# Snapshots (built by the index handlers from watch events)


def profile_snapshot(body: Mapping[str, Any]) -> ProfileSnapshot:
    """A GPUProfile object as a snapshot; malformed GPUs/curves are dropped (the CRD refuses most)."""
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    gpus: list[ProfileGPU] = []
    for g in spec.get("gpus") or ():
        curves = []
        for c in g.get("curves") or ():
            try:
                curves.append(
                    Curve(
                        hidden_size=int(c["hiddenSize"]),
                        intermediate_size=int(c["intermediateSize"]),
                        dtype=str(c["dtype"]),
                        tokens=np.asarray(c["tokens"], dtype=np.float64),
                        seconds=np.asarray(c["seconds"], dtype=np.float64),
                    )
                )
            except (KeyError, TypeError, ValueError):
                continue
        gpus.append(
            ProfileGPU(
                index=int(g.get("index", len(gpus))),
                uuid=str(g.get("uuid") or ""),
                product=str(g.get("product") or ""),
                memory_bytes=_memory_bytes(g),
                curves=tuple(curves),
            )
        )
    pods = None
    if isinstance(spec.get("pods"), list):
        pods = {
            (str(p.get("namespace") or ""), str(p.get("name") or "")): tuple(
                str(u) for u in p.get("gpus") or ()
            )
            for p in spec["pods"]
            if isinstance(p, Mapping)
        }
    return ProfileSnapshot(
        pods=pods,
        node=str(spec.get("nodeName") or body.get("metadata", {}).get("name", "")),
        gpus=tuple(sorted(gpus, key=lambda x: x.index)),
        source=str(spec.get("source") or "measured"),
        heartbeat=parse_time(status.get("heartbeatTime")),
        created=str((body.get("metadata") or {}).get("creationTimestamp") or ""),
    )


def gpu_identity(gpus: Iterable[ProfileGPU]) -> tuple[tuple[int, str], ...]:
    """What makes a GPU list another one: the GPUs' (index, UUID), not their curves."""
    return tuple((g.index, g.uuid) for g in gpus)


def next_snapshot(
    old: ProfileSnapshot | None, new: ProfileSnapshot, now: dt.datetime, settle_s: float
) -> ProfileSnapshot:
    """``new`` (a node's profile as just read) with its GPU list's history carried from ``old``.

    A GPU list that differs from the previous one starts its settle time now; the list that was in
    effect before (the previous one if it had held for ``settle_s``, else the one before that) stays in
    use until then (``settle``). A first profile of a node counts at once.
    """
    if old is None:
        return new
    if gpu_identity(old.gpus) == gpu_identity(new.gpus):
        return replace(new, gpus_since=old.gpus_since, settled=old.settled)
    held = old.gpus_since is None or (now - old.gpus_since).total_seconds() >= settle_s
    before = old.gpus if held or old.settled is None else old.settled
    return replace(new, gpus_since=now, settled=before)


def settle(
    profiles: Mapping[str, ProfileSnapshot], now: dt.datetime, settle_s: float
) -> tuple[dict[str, ProfileSnapshot], dict[str, dt.datetime]]:
    """The profiles with each GPU list that changed less than ``settle_s`` ago replaced by the list in
    effect before it (a GPU flapping in and out of a profile moves nothing until it holds still), and,
    for those nodes, when their current list starts to count.

    A GPU of the earlier list that is still there keeps its current curves (performance drift is not
    held back); one that is gone keeps its last curves until the change counts.
    """
    out = dict(profiles)
    pending: dict[str, dt.datetime] = {}
    for node, snap in profiles.items():
        if snap.gpus_since is None or snap.settled is None:
            continue
        if gpu_identity(snap.settled) == gpu_identity(snap.gpus):
            continue
        at = snap.gpus_since + dt.timedelta(seconds=settle_s)
        if now >= at:
            continue
        pending[node] = at
        current = {(g.index, g.uuid): g for g in snap.gpus}
        gpus = tuple(current.get((g.index, g.uuid), g) for g in snap.settled)
        out[node] = replace(snap, gpus=gpus)
    return out, pending


def within_capacity(
    profiles: Mapping[str, ProfileSnapshot], capacity: Mapping[str, int], resource: str
) -> tuple[dict[str, ProfileSnapshot], list[str], list[str]]:
    """The profiles without the GPUs of a node whose profile lists more GPUs than its Node's capacity of
    ``resource`` (``capacity``: node -> GPUs; nodes not in it are not checked), a note, and those nodes.

    A node's GPUs are at most what the Node reports (the device plugin's count, which the node's agent
    cannot write): a profile claiming more is not believed at all, not trimmed to the first ones.
    """
    out = dict(profiles)
    nodes, bad = [], []
    for node, snap in profiles.items():
        cap = capacity.get(node)
        if cap is not None and len(snap.gpus) > cap:
            out[node] = replace(snap, gpus=())
            nodes.append(node)
            bad.append(f"{node} ({len(snap.gpus)} GPUs, capacity {cap})")
    if not bad:
        return out, [], []
    note = f"GPUProfile(s) listing more GPUs than their Node's {resource} capacity are not used: {_few(bad)}"
    return out, [note], nodes


def pod_snapshot(body: Mapping[str, Any]) -> PodSnapshot | None:
    """A scheduled, live pod as a snapshot; None for pods that cannot serve (unscheduled, finished)."""
    meta = body.get("metadata") or {}
    node = (body.get("spec") or {}).get("nodeName")
    phase = (body.get("status") or {}).get("phase")
    if not node or meta.get("deletionTimestamp") or phase in ("Succeeded", "Failed"):
        return None
    labels = dict(meta.get("labels") or {})
    return PodSnapshot(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        labels=labels,
        node=str(node),
        rank=pod_rank(meta),
    )


def pod_rank(meta: Mapping[str, Any]) -> tuple[int, int, str]:
    """(group, worker, name): LeaderWorkerSet indices; under NVIDIA Dynamo's Grove path the scaling-group
    replica and the node rank Dynamo gives (leader PodClique 0, worker pod i ``GROVE_PCLQ_POD_INDEX + 1``,
    as ``vibe.serving.rankmap.grove_node_rank`` on the serving side); else the StatefulSet ordinal; else
    name order."""
    labels = meta.get("labels") or {}
    name = str(meta.get("name") or "")
    if LWS_LABEL_WORKER_INDEX in labels:
        return (_int(labels.get(LWS_LABEL_GROUP_INDEX), 0), _int(labels[LWS_LABEL_WORKER_INDEX], 0), name)
    clique, index = str(labels.get(GROVE_LABEL_PCLQ, "")), _int(labels.get(GROVE_LABEL_PCLQ_POD_INDEX), -1)
    if index >= 0 and clique.endswith((GROVE_LEADER_SUFFIX, GROVE_WORKER_SUFFIX)):
        rank = 0 if clique.endswith(GROVE_LEADER_SUFFIX) else index + 1
        return (_int(labels.get(GROVE_LABEL_PCSG_REPLICA), 0), rank, name)
    if STS_LABEL_POD_INDEX in labels:
        return (0, _int(labels[STS_LABEL_POD_INDEX], 0), name)
    owners = meta.get("ownerReferences") or ()
    m = re.search(r"-(\d+)$", name)
    if m and any(o.get("kind") == "StatefulSet" for o in owners):
        return (0, int(m.group(1)), name)
    return (0, 1 << 30, name)


def with_leases(
    profiles: Mapping[str, ProfileSnapshot], renewed: Mapping[str, dt.datetime] | None
) -> Mapping[str, ProfileSnapshot]:
    """The profiles with each node's liveness from its agent's Lease: ``renewed`` maps a node to when the
    operator saw its Lease renewed (``liveness.Liveness``, the operator's clock, never the agent's).

    A node without a Lease keeps the profile's own heartbeat (agents from before Leases, also observed
    by the operator; none: never stale), as does every node when ``renewed`` is None (Leases could not
    be read).
    """
    if not renewed:
        return profiles
    out = dict(profiles)
    for node, snap in profiles.items():
        seen = renewed.get(node)
        if seen is not None:
            out[node] = replace(snap, heartbeat=seen)
    return out


def trusted(
    profiles: Mapping[str, ProfileSnapshot], owners: dict[str, str] | None = None
) -> tuple[dict[str, ProfileSnapshot], list[str], list[str]]:
    """The profiles without those of nodes that list another node's GPU UUID, a note naming them, and
    those nodes.

    A GPU UUID is hardware identity: two nodes claiming one means one of them lies (a compromised agent,
    or a disk image cloned with a profile in it). The UUID stays with the node that claimed it first as
    this operator saw it (``owners``: UUID -> node, kept across calls and updated here), else, when both
    claims were first seen together (an operator start), with the older GPUProfile; the other node is
    not believed at all (none of its GPUs is used), so a lying node cannot take an honest node's GPUs
    out of service. Without ``owners`` (no memory) the older profile wins.
    """
    owners = {} if owners is None else owners
    claims: dict[str, set[str]] = {}
    for node, snap in profiles.items():
        for g in snap.gpus:
            if g.uuid:
                claims.setdefault(g.uuid, set()).add(node)
    for uuid in [u for u in owners if u not in claims]:
        del owners[uuid]  # no one claims it now: forget it
    offenders: dict[str, str] = {}  # node -> an example "UUID (node that owns it)"
    for uuid, nodes in claims.items():
        owner = owners.get(uuid)
        if owner not in nodes:
            owner = min(nodes, key=lambda n: (profiles[n].created or "~", n))
            owners[uuid] = owner
        for n in nodes - {owner}:
            offenders.setdefault(n, f"{uuid} of {owner}")
    if not offenders:
        return dict(profiles), [], []
    out = dict(profiles)
    for node in offenders:
        out[node] = replace(profiles[node], gpus=())
    bad = sorted(offenders)
    first = bad[0]
    note = (
        f"GPUProfile(s) of {_few(bad)} list GPU UUIDs another node claimed first and are not used "
        f"(e.g. {first} lists {offenders[first]})"
    )
    return out, [note], bad


# --------------------------------------------------------------------------------------------------
# Resolution


def resolve(
    spec: DeploymentSpec,
    *,
    namespace: str,
    nodes: Mapping[str, Mapping[str, str]],
    profiles: Mapping[str, ProfileSnapshot],
    pods: Iterable[PodSnapshot] = (),
    now: dt.datetime,
    profile_ttl_s: float,
    capacity: Mapping[str, int] | None = None,
    gpu_resource: str = "nvidia.com/gpu",
    owners: dict[str, str] | None = None,
    settle_s: float = 0.0,
) -> Resolution:
    """The MoEDeployment's GPUs and fleet, or a ``Problem`` (InsufficientGPUs, InfeasibleSlots, ...).

    Args:
        nodes: node name -> labels, for every node.
        profiles: node name -> its GPUProfile snapshot.
        pods: running pods in ``namespace`` (podSelector mode).
        capacity: node -> its Node's capacity of ``gpu_resource`` (nodes not in it are not checked yet:
            the caller checks the nodes the resolution uses and resolves again; ``Resolution.nodes``).
        owners: GPU UUID -> the node that claimed it first (``trusted``; updated).
        settle_s: a node's GPU list counts once it has held this long (``settle``).
    """
    want = spec.gpus.count
    pods = list(pods)
    profiles, pending = settle(profiles, now, settle_s)
    profiles, notes, distrusted = within_capacity(profiles, capacity or {}, gpu_resource)
    profiles, more, lying = trusted(profiles, owners)
    notes += more
    distrusted += lying
    if spec.gpus.pod_selector is not None:
        refs, why = _pod_gpus(spec, namespace, pods, profiles, notes)
    else:
        refs, why = _node_gpus(spec, nodes, profiles)
    if len(refs) < want:
        raise Problem("InsufficientGPUs", f"{why}; gpus.count is {want}" + "".join(f"; {n}" for n in notes))
    refs = refs[:want]
    by_node = {r.node: profiles[r.node] for r in refs}
    _check_memory(spec, refs, by_node)
    curves: list[GPUCurve] = []
    scaled: set[tuple[int, int, str]] = set()
    for r in refs:
        gpu = next(g for g in by_node[r.node].gpus if g.index == r.index)
        tokens, seconds, from_shape = curve_for(gpu, spec.model.shape)
        if from_shape != spec.model.shape:
            scaled.add(from_shape)
        try:
            curves.append(GPUCurve(id=r.id, node=r.node, tokens=tokens, seconds=seconds, uuid=r.uuid))
        except PlacementError as e:
            raise Problem(e.reason, f"GPUProfile {r.node}: {e}") from None
    if scaled:
        shapes = ", ".join(f"{h}x{i} {d}" for h, i, d in sorted(scaled))
        h, i, d = spec.model.shape
        notes.append(f"curves scaled from {shapes} (no GPU measured {h}x{i} {d})")
    stale = sorted(n for n, p in by_node.items() if p.stale(now, profile_ttl_s))
    ttl = dt.timedelta(seconds=profile_ttl_s)
    deadlines = [p.heartbeat + ttl for n, p in by_node.items() if p.heartbeat is not None and n not in stale]
    relevant = set(nodes) | {p.node for p in pods} | set(by_node)
    settling = [t for n, t in pending.items() if n in relevant]
    return Resolution(
        gpus=tuple(refs),
        fleet=Fleet(tuple(curves)),
        curve_source="scaled" if scaled else "measured",
        stale_nodes=tuple(stale),
        notes=tuple(notes),
        stale_at=min(deadlines) if deadlines else None,
        settles_at=min(settling) if settling else None,
        available=frozenset(f"{n}/{g.index}/{g.uuid}" for n, p in profiles.items() for g in p.gpus),
        distrusted=tuple(sorted(set(distrusted))),
    )


def curve_for(
    gpu: ProfileGPU, shape: tuple[int, int, str]
) -> tuple[np.ndarray, np.ndarray, tuple[int, int, str]]:
    """(tokens, seconds, measured shape): the exact shape, else the closest by weight bytes, scaled."""
    if not gpu.curves:
        raise Problem("InvalidGPUProfile", f"GPU {gpu.index} ({gpu.uuid or 'no uuid'}) has no curves")
    for c in gpu.curves:
        if c.shape == shape:
            return c.tokens, c.seconds, c.shape
    want = _weight_bytes(shape)
    best = min(gpu.curves, key=lambda c: (abs(np.log(_weight_bytes(c.shape) / want)), c.shape))
    return best.tokens, scale_curve(best.seconds, from_shape=best.shape, to_shape=shape), best.shape


def matches_labels(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def matches_selector(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A metav1.LabelSelector (matchLabels and matchExpressions) against labels."""
    if not matches_labels(selector.get("matchLabels") or {}, labels):
        return False
    for expr in selector.get("matchExpressions") or ():
        key, op, values = expr.get("key"), expr.get("operator"), set(expr.get("values") or ())
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def expert_bytes(spec: DeploymentSpec) -> float:
    """Weight bytes of one routed expert (SwiGLU: gate, up and down projections)."""
    return 3.0 * spec.model.hidden_size * spec.model.intermediate_size * DTYPE_BYTES[spec.model.dtype]


# --------------------------------------------------------------------------------------------------


def _node_gpus(
    spec: DeploymentSpec, nodes: Mapping[str, Mapping[str, str]], profiles: Mapping[str, ProfileSnapshot]
) -> tuple[list[GPURef], str]:
    selector = spec.gpus.node_selector or {}
    matched = sorted(n for n, labels in nodes.items() if matches_labels(selector, labels))
    refs: list[GPURef] = []
    missing = []
    for n in matched:
        prof = profiles.get(n)
        if prof is None:
            missing.append(n)
            continue
        refs.extend(GPURef(n, g.index, g.uuid) for g in prof.gpus)
        if len(refs) >= spec.gpus.count:
            break
    sel = ",".join(f"{k}={v}" for k, v in sorted(selector.items())) or "(all nodes)"
    why = f"gpus.nodeSelector {sel} matches {len(matched)} nodes with {len(refs)} profiled GPUs"
    if missing:
        why += f" ({len(missing)} without a GPUProfile: {_few(missing)})"
    return refs, why


def _pod_gpus(
    spec: DeploymentSpec,
    namespace: str,
    pods: Iterable[PodSnapshot],
    profiles: Mapping[str, ProfileSnapshot],
    notes: list[str],
) -> tuple[list[GPURef], str]:
    """The pods' GPUs in rank order (appends to ``notes`` when some were guessed)."""
    selector = spec.gpus.pod_selector or {}
    matched = sorted(
        (p for p in pods if p.namespace == namespace and matches_selector(selector, p.labels)),
        key=lambda p: p.rank,
    )
    per_pod = spec.gpus.gpus_per_pod
    # GPUs the kubelet assigned (reported by the agent) are taken first, whatever the rank order.
    taken: dict[str, set[int]] = {}
    for p in matched:
        prof = profiles.get(p.node)
        if prof is not None and prof.pods is not None and (p.namespace, p.name) in prof.pods:
            own = set(prof.pods[(p.namespace, p.name)])
            taken.setdefault(p.node, set()).update(g.index for g in prof.gpus if g.uuid in own)
    refs: list[GPURef] = []
    short = []
    guessed = []
    for p in matched:
        prof = profiles.get(p.node)
        if prof is not None and prof.pods is not None and (p.namespace, p.name) in prof.pods:
            own = set(prof.pods[(p.namespace, p.name)])
            gpus = [g for g in prof.gpus if g.uuid in own]
            if not gpus:
                short.append(f"{p.name} on {p.node}")
                break
        else:
            held = taken.setdefault(p.node, set())
            gpus = [g for g in (prof.gpus if prof else ()) if g.index not in held][:per_pod]
            if len(gpus) < per_pod:
                short.append(f"{p.name} on {p.node}")
                break  # ranks must stay contiguous: later pods cannot fill this pod's place
            held.update(g.index for g in gpus)
            guessed.append(p.name)
        refs.extend(GPURef(p.node, g.index, g.uuid) for g in gpus)
    why = f"gpus.podSelector matches {len(matched)} running pods x {per_pod} GPUs = {len(refs)} profiled GPUs"
    if short:
        why += f" (no GPUProfile with enough GPUs for pod {short[0]})"
    if guessed:
        notes.append(
            f"GPUs of {len(guessed)} pod(s) assumed by the gpusPerPod rule ({_few(guessed)}): their "
            "agents did not report the kubelet's assignment (agent.podResources.enabled)"
        )
    return refs, why


def _check_memory(spec: DeploymentSpec, refs: list[GPURef], profiles: Mapping[str, ProfileSnapshot]) -> None:
    """InfeasibleSlots when a GPU's memory (when known) cannot hold its slots' expert weights."""
    need = expert_bytes(spec) * spec.model.layers * spec.gpus.slots_per_gpu
    for r in refs:
        gpu = next((g for g in profiles[r.node].gpus if g.index == r.index), None)
        if gpu is not None and gpu.memory_bytes and need > gpu.memory_bytes:
            gib = 1 << 30
            raise Problem(
                "InfeasibleSlots",
                f"gpus.slotsPerGPU {spec.gpus.slots_per_gpu} needs "
                f"{need / gib:.1f} GiB of expert weights per GPU ({spec.model.layers} layers x "
                f"{spec.gpus.slots_per_gpu} slots x {expert_bytes(spec) / (1 << 20):.0f} MiB) but GPU "
                f"{r.id} ({gpu.product or 'unknown product'}) has {gpu.memory_bytes / gib:.0f} GiB",
            )


def _memory_bytes(gpu: Mapping[str, Any]) -> int | None:
    """The GPU's memory: ``memoryBytes`` when the agent reports it, else the product name's "80GB"."""
    if gpu.get("memoryBytes"):
        return int(gpu["memoryBytes"])
    m = re.search(r"(\d+)\s*GB\b", str(gpu.get("product") or ""), re.IGNORECASE)
    return int(m.group(1)) * 10**9 if m else None


def _weight_bytes(shape: tuple[int, int, str]) -> float:
    h, i, d = shape
    return h * i * DTYPE_BYTES.get(d, 2.0)


def _int(value: Any, default: int) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return default


def _few(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")
